"""Property: whatever the host and its spelling, the Worker fetches as the reference allows."""

from __future__ import annotations

from hypothesis import given

from tests.fixtures.miniflare import R2Worker
from tests.support.host_strategies import SpelledHost, hosts


@given(host=hosts)
def test_worker_fetches_exactly_the_hosts_the_reference_calls_public(
    public_web_worker: R2Worker, host: SpelledHost
) -> None:
    response = public_web_worker.transfer(f"https://{host.text}/file", email_id="fuzz", timeout=30)

    assert response.status_code == (200 if host.public else 403), response.text
