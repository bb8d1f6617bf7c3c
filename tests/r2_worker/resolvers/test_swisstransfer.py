"""The SwissTransfer resolver against the SwissTransfer stand-in, through the Worker."""

from __future__ import annotations

import pytest

from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import THREE_FILES, ProviderStandIns, swisstransfer_link
from tests.r2_worker.shares import assert_failure, assert_files_landed, stored_under


def test_a_share_of_three_files_lands_byte_for_byte_under_one_folder(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    response = provider_worker.transfer(
        swisstransfer_link("st-three-0001"), provider="swisstransfer", email_id="st-1"
    )

    assert response.status_code == 200, response.text
    assert_files_landed(provider_worker, response.json(), THREE_FILES)
    fetched = provider_stand_ins.calls("GET", "/api/download/st-three-0001/")
    assert {r.path.rsplit("/", 1)[1] for r in fetched} == {f.id for f in THREE_FILES}


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        ("st-expired-0001", "SwissTransfer: the transfer has expired"),
        ("st-locked-0001", "SwissTransfer: the transfer is password-protected"),
        ("st-gone-00001", "SwissTransfer: transfer not found (deleted, or a wrong link)"),
    ],
)
def test_an_expired_locked_or_deleted_transfer_is_unavailable_with_the_reason(
    provider_worker: R2Worker, link: str, reason: str
) -> None:
    response = provider_worker.transfer(
        swisstransfer_link(link), provider="swisstransfer", email_id=f"st-{link}"
    )

    assert assert_failure(response, 410, "unavailable", retryable=False) == reason
    assert stored_under(provider_worker, f"st-{link}") == []


@pytest.mark.parametrize(
    ("link", "address"),
    [("st-metadata-0001", "169.254.169.254"), ("st-private-0001", "10.0.0.7")],
)
def test_a_manifest_pointing_at_a_non_public_address_is_refused_before_any_download(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns, link: str, address: str
) -> None:
    response = provider_worker.transfer(
        swisstransfer_link(link), provider="swisstransfer", email_id=f"st-{link}"
    )

    error = assert_failure(response, 403, "refused", retryable=False)
    assert f"host {address} is not public" in error
    assert provider_stand_ins.calls("GET", f"/api/download/{link}/") == []
    assert stored_under(provider_worker, f"st-{link}") == []


def test_a_link_that_is_not_a_share_is_unresolved(provider_worker: R2Worker) -> None:
    response = provider_worker.transfer(
        "https://www.swisstransfer.com/en-gb/faq", provider="swisstransfer", email_id="st-faq"
    )

    error = assert_failure(response, 422, "unresolved", retryable=False)
    assert error == "SwissTransfer: the link is not /d/<link UUID>"
