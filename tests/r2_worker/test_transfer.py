"""Shares as one transfer: the size cap over every file, the per-file timeout, nothing partial."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fixtures.miniflare import R2Worker, R2WorkerFactory
from tests.fixtures.providers import (
    THREE_FILES,
    ProviderStandIns,
    wetransfer_link,
)
from tests.r2_worker.shares import assert_failure, stored_under

MiB = 1 << 20
CAP = 1 * MiB  # above the first two files together, below all three


@pytest.fixture
def capped(
    r2_worker_factory: R2WorkerFactory, provider_stand_ins: ProviderStandIns
) -> Callable[[], R2Worker]:
    """A Worker reaching the stand-ins whose MAX_BYTES lets the first two of three files in."""

    def make() -> R2Worker:
        return r2_worker_factory(
            allowed_hosts=provider_stand_ins.origin,
            max_bytes=CAP,
            TEST_ONLY_PROVIDER_ORIGINS=provider_stand_ins.provider_origins,
        )

    return make


def test_a_share_listing_more_than_the_cap_is_refused_before_any_download(
    capped: Callable[[], R2Worker], provider_stand_ins: ProviderStandIns
) -> None:
    worker = capped()
    before = len(provider_stand_ins.calls("GET", "/wt/wt-three/"))

    response = worker.transfer(wetransfer_link("wt-three"), provider="wetransfer", email_id="cap-1")

    total = sum(f.size for f in THREE_FILES)
    error = assert_failure(response, 413, "too_large", retryable=False)
    assert error == f"the share lists {total} bytes, above the {CAP} byte limit"
    assert provider_stand_ins.calls("GET", "/wt/wt-three/")[before:] == []
    assert worker.list_objects() == []


def test_a_share_passing_the_cap_midway_is_aborted_and_leaves_nothing(
    capped: Callable[[], R2Worker], provider_stand_ins: ProviderStandIns
) -> None:
    worker = capped()
    before = len(provider_stand_ins.calls("GET", "/wt/wt-unsized/"))

    response = worker.transfer(
        wetransfer_link("wt-unsized"), provider="wetransfer", email_id="cap-2"
    )

    error = assert_failure(response, 413, "too_large", retryable=False)
    assert f"above the {CAP} byte limit" in error
    # The first two files were copied before the third passed the cap: they are gone again.
    fetched = provider_stand_ins.calls("GET", "/wt/wt-unsized/")[before:]
    assert [r.path.split("?")[0].rsplit("/", 1)[1] for r in fetched] == [f.id for f in THREE_FILES]
    assert worker.list_objects() == []


def test_a_file_past_the_per_file_timeout_fails_the_share_and_leaves_nothing(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    before = len(provider_stand_ins.calls("GET", "/wt/wt-slow/f-brief"))

    response = provider_worker.transfer(
        wetransfer_link("wt-slow"), provider="wetransfer", email_id="slow-1", file_timeout_ms=2000
    )

    error = assert_failure(response, 504, "timeout", retryable=True)
    assert error == "file 2 of 3 did not finish within 2000 ms"
    assert len(provider_stand_ins.calls("GET", "/wt/wt-slow/f-brief")) == before + 1
    assert stored_under(provider_worker, "slow-1") == []


def test_the_deadline_covers_the_whole_share(provider_worker: R2Worker) -> None:
    response = provider_worker.transfer(
        wetransfer_link("wt-slow"), provider="wetransfer", email_id="slow-2", deadline_ms=2500
    )

    error = assert_failure(response, 504, "timeout", retryable=True)
    assert error == "transfer did not finish within the client's deadline of 2500 ms"
    assert stored_under(provider_worker, "slow-2") == []


def test_a_share_with_more_files_than_max_files_is_refused(
    r2_worker_factory: R2WorkerFactory, provider_stand_ins: ProviderStandIns
) -> None:
    worker = r2_worker_factory(
        allowed_hosts=provider_stand_ins.origin,
        MAX_FILES="2",
        TEST_ONLY_PROVIDER_ORIGINS=provider_stand_ins.provider_origins,
    )

    response = worker.transfer(wetransfer_link("wt-three"), provider="wetransfer", email_id="many")

    error = assert_failure(response, 413, "too_large", retryable=False)
    assert error == "the share lists 3 files, above the 2 file limit"
