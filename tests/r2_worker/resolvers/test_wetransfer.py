"""The WeTransfer resolver against the WeTransfer stand-in, through the Worker under Miniflare."""

from __future__ import annotations

import zipfile
from io import BytesIO

import pytest

from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import THREE_FILES, ProviderStandIns, wetransfer_link
from tests.r2_worker.shares import assert_failure, assert_files_landed, stored_under


def test_a_share_of_three_files_lands_byte_for_byte_under_one_folder(
    provider_worker: R2Worker,
) -> None:
    response = provider_worker.transfer(
        wetransfer_link("wt-three"), provider="wetransfer", email_id="wt-1"
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert_files_landed(provider_worker, body, THREE_FILES)
    assert (body["key"], body["r2_url"], body["original_filename"]) == (None, None, None)
    assert stored_under(provider_worker, "wt-1") == sorted(f["key"] for f in body["files"])


def test_a_we_tl_short_link_leads_to_the_same_files(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    response = provider_worker.transfer(
        "https://we.tl/t-wt-three", provider="wetransfer", email_id="wt-2"
    )

    assert response.status_code == 200, response.text
    assert_files_landed(provider_worker, response.json(), THREE_FILES)
    assert provider_stand_ins.calls("GET", "/t-wt-three")


def test_each_file_is_asked_for_by_its_id_right_before_its_download(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    before = len(provider_stand_ins.calls("POST", "/wt-three/download"))

    provider_worker.transfer(wetransfer_link("wt-three"), provider="wetransfer", email_id="wt-3")

    asked = provider_stand_ins.calls("POST", "/wt-three/download")[before:]
    assert [r.body for r in asked] == [
        {"intent": "single_file", "security_hash": "abc123", "file_ids": [f.id]}
        for f in THREE_FILES
    ]


@pytest.mark.parametrize(
    ("transfer", "reason"),
    [
        ("wt-expired", "Couldn't find Transfer (expired or deleted)"),
        ("wt-locked", "the transfer is password-protected"),
    ],
)
def test_an_expired_or_locked_transfer_is_unavailable_with_the_reason_and_not_retryable(
    provider_worker: R2Worker, transfer: str, reason: str
) -> None:
    response = provider_worker.transfer(
        wetransfer_link(transfer), provider="wetransfer", email_id=f"wt-{transfer}"
    )

    error = assert_failure(response, 410, "unavailable", retryable=False)
    assert reason in error
    assert stored_under(provider_worker, f"wt-{transfer}") == []


def test_a_provider_5xx_is_retryable_and_the_next_attempt_lands(
    provider_worker: R2Worker,
) -> None:
    first = provider_worker.transfer(
        wetransfer_link("wt-flaky"), provider="wetransfer", email_id="wt-flaky"
    )
    second = provider_worker.transfer(
        wetransfer_link("wt-flaky"), provider="wetransfer", email_id="wt-flaky"
    )

    assert "HTTP 503" in assert_failure(first, 502, "upstream_status", retryable=True)
    assert_files_landed(provider_worker, second.json(), THREE_FILES)


@pytest.mark.parametrize(
    ("transfer", "address"),
    [("wt-metadata", "169.254.169.254"), ("wt-private", "10.0.0.7")],
)
def test_a_direct_link_to_a_non_public_address_is_refused(
    provider_worker: R2Worker, transfer: str, address: str
) -> None:
    response = provider_worker.transfer(
        wetransfer_link(transfer), provider="wetransfer", email_id=f"wt-{transfer}"
    )

    error = assert_failure(response, 403, "refused", retryable=False)
    assert f"host {address} is not public" in error
    assert stored_under(provider_worker, f"wt-{transfer}") == []


def test_a_direct_link_answering_a_landing_page_is_unresolved(provider_worker: R2Worker) -> None:
    response = provider_worker.transfer(
        wetransfer_link("wt-landing"), provider="wetransfer", email_id="wt-landing"
    )

    error = assert_failure(response, 422, "unresolved", retryable=False)
    assert "WeTransfer file answered with an HTML page" in error
    assert "landing page" in error
    assert stored_under(provider_worker, "wt-landing") == []


def test_a_transfer_without_per_file_download_is_one_archive(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    response = provider_worker.transfer(
        wetransfer_link("wt-whole"), provider="wetransfer", email_id="wt-whole"
    )

    assert response.status_code == 200, response.text
    (only,) = response.json()["files"]
    assert only["filename"] == "WeTransfer_wt-whole.zip"
    stored = provider_worker.get_object(only["key"])
    assert stored == provider_stand_ins.dropbox_zip
    assert zipfile.ZipFile(BytesIO(stored)).testzip() is None
