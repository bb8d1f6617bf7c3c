"""The Worker's host rule, held to the sidecar's reference over the shared cases."""

from __future__ import annotations

import pytest

from tests.fixtures.miniflare import R2Worker
from tests.support.host_strategies import EDGE_ADDRESSES
from tests.support.hosts import HostCase, host_cases, reference_public


def _outbound_urls(worker: R2Worker) -> list[str]:
    return [r["url"] for r in worker.log_records() if r.get("event") == "outbound"]


@pytest.mark.parametrize("case", host_cases(), ids=lambda case: case.url)
def test_worker_fetches_a_source_only_when_its_host_is_public(
    public_web_worker: R2Worker, case: HostCase
) -> None:
    response = public_web_worker.transfer(case.url, email_id="host-rule", timeout=30)

    expected = 200 if case.public else 403
    assert response.status_code == expected, response.text
    if not case.public:
        assert "is not public" in response.json()["error"]


def test_a_refused_host_is_never_fetched(public_web_worker: R2Worker) -> None:
    before = len(_outbound_urls(public_web_worker))
    for case in host_cases():
        if not case.public:
            public_web_worker.transfer(case.url, email_id="never-fetched", timeout=30)
    marker = "https://we.tl/t-after-the-refused"
    assert public_web_worker.transfer(marker, email_id="marker", timeout=30).status_code == 200

    public_web_worker.wait_for_log(marker)
    assert _outbound_urls(public_web_worker)[before:] == [marker]


def test_worker_gives_the_reference_verdict_at_every_special_range_edge(
    public_web_worker: R2Worker,
) -> None:
    wrong = []
    for address in EDGE_ADDRESSES:
        host = str(address) if address.version == 4 else f"[{address}]"
        status = public_web_worker.transfer(f"https://{host}/", email_id="edge", timeout=30)
        if status.status_code != (200 if reference_public(address) else 403):
            wrong.append((str(address), status.status_code))
    assert wrong == []
