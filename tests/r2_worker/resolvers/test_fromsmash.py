"""The FromSmash resolver against the FromSmash stand-in, through the Worker."""

from __future__ import annotations

import pytest

from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import TEN_FILES, ProviderStandIns, fromsmash_link
from tests.r2_worker.shares import assert_failure, assert_files_landed, stored_under


def test_a_share_of_ten_files_is_read_page_by_page_and_lands_byte_for_byte(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    before = len(provider_stand_ins.calls("GET", "/transfer/fs-ten/files/preview"))

    response = provider_worker.transfer(
        fromsmash_link("fs-ten"), provider="fromsmash", email_id="fs-1"
    )

    assert response.status_code == 200, response.text
    assert_files_landed(provider_worker, response.json(), TEN_FILES)
    pages = provider_stand_ins.calls("GET", "/transfer/fs-ten/files/preview")[before:]
    assert len(pages) == 2
    assert all(p.headers["authorization"] == "Bearer fs-token-7" for p in pages)


@pytest.mark.parametrize(
    ("transfer", "reason"),
    [
        ("fs-expired", "FromSmash: the transfer is Expired"),
        ("fs-locked", "FromSmash: the transfer is password-protected"),
        ("fs-gone", "FromSmash: transfer not found (expired or deleted)"),
    ],
)
def test_an_expired_locked_or_deleted_transfer_is_unavailable_with_the_reason(
    provider_worker: R2Worker, transfer: str, reason: str
) -> None:
    response = provider_worker.transfer(
        fromsmash_link(transfer), provider="fromsmash", email_id=f"fs-{transfer}"
    )

    assert assert_failure(response, 410, "unavailable", retryable=False) == reason
    assert stored_under(provider_worker, f"fs-{transfer}") == []
