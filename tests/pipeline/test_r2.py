"""TransferClient against the real Worker under Miniflare and a real file server."""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import settings_from_mapping
from agent.pipeline.links import DeliveryLink
from agent.pipeline.r2 import TransferClient
from agent.telemetry.logs import configure_logging
from agent.telemetry.setup import Telemetry
from tests.fixtures.fileserver import FileServer, sha256_of
from tests.fixtures.miniflare import R2Worker, start_r2_worker
from tests.fixtures.providers import THREE_FILES, ProviderStandIns, wetransfer_link
from tests.support.net import free_port
from tests.support.telemetry import telemetry_for_tests

CAP = 1024 * 1024


@dataclass
class Client:
    """A TransferClient with its telemetry in memory and its log lines in a string."""

    client: TransferClient
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    stream: io.StringIO
    telemetry: Telemetry

    async def transfer(self, url: str, email_id: str) -> dict[str, Any]:
        return await self.client.transfer(DeliveryLink("generic", url), email_id=email_id)

    def span(self, email_id: str) -> ReadableSpan:
        (span,) = [
            s
            for s in self.spans.get_finished_spans()
            if s.name == "r2.transfer" and (s.attributes or {}).get("email.id") == email_id
        ]
        return span

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def transfers_counted(self, outcome: str) -> int:
        self.telemetry.force_flush(5.0)
        data = self.metrics.get_metrics_data()
        total = 0
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "r2.transfers":
                        continue
                    for point in metric.data.data_points:
                        if isinstance(point, NumberDataPoint) and (
                            (point.attributes or {}).get("outcome") == outcome
                        ):
                            total += int(point.value)
        return total


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="module")
def capped_worker(file_server: FileServer) -> Iterator[R2Worker]:
    """A Worker whose MAX_BYTES is 1 MiB."""
    with tempfile.TemporaryDirectory(prefix="r2-capped-") as workdir:
        worker = start_r2_worker(Path(workdir), allowed_hosts=file_server.origin, max_bytes=CAP)
        try:
            yield worker
        finally:
            worker.stop()


@pytest.fixture
async def make_client(file_server: FileServer) -> AsyncIterator[MakeClient]:
    """make_client(worker, token=..., **r2/links settings) -> a Client for that Worker."""
    made: list[Client] = []

    async def make(
        worker: R2Worker,
        *,
        token: str | None = None,
        r2: dict[str, Any] | None = None,
        links: dict[str, Any] | None = None,
    ) -> Client:
        settings = settings_from_mapping({
            "r2": {"fetch_endpoint": worker.url, "fetch_token": token or worker.token,
                   **(r2 or {})},
            "links": {"allowed_hosts": [file_server.origin], **(links or {})},
        })  # fmt: skip
        telemetry, spans, metrics, _logs = telemetry_for_tests(settings)
        stream = io.StringIO()
        # Loggers bind the configuration current when they are created: configure first.
        configure_logging(telemetry, stream=stream)
        client = Client(
            TransferClient(settings, telemetry=telemetry), spans, metrics, stream, telemetry
        )
        made.append(client)
        return client

    yield make
    configure_logging(None, stream=io.StringIO())
    for client in made:
        await client.client.close()
        client.telemetry.shutdown(2.0)


def _worker_posts(worker: R2Worker, email_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in worker.log_records()
        if r.get("method") == "POST" and r.get("email_id") == email_id
    ]


async def _settled(client: Client, worker: R2Worker, file_server: FileServer) -> None:
    """A marker transfer whose log line proves the Worker logged every earlier request."""
    marker = f"marker-{time.monotonic_ns()}"
    entry = await client.transfer(file_server.url("/bytes/16"), marker)
    assert entry["status"] == "transferred"
    assert f'"email_id":"{marker}"' in worker.wait_for_log(f'"email_id":"{marker}"')


async def test_a_link_is_copied_and_its_entry_is_transferred_with_key_size_and_r2_url(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    client = await make_client(r2_worker)
    entry = await client.transfer(file_server.url("/bytes/300000"), "copied-1")
    assert entry["status"] == "transferred"
    assert entry["size"] == 300000
    assert re.search(r"/copied-1/generic-[0-9a-f]{10}/300000$", entry["key"]), entry["key"]
    assert entry["r2_url"] == f"{r2_worker.url}/object/{entry['key']}"
    assert entry["error"] is None
    assert entry["files"] == [
        {
            "key": entry["key"],
            "r2_url": entry["r2_url"],
            "size": 300000,
            "filename": "300000",
            "content_type": "application/octet-stream",
        }
    ]
    assert r2_worker.object_sha256(entry["key"]) == sha256_of(300000)
    span = client.span("copied-1")
    assert span.attributes is not None
    assert span.attributes["r2.object.key"] == entry["key"]
    assert span.attributes["r2.object.size"] == 300000


@pytest.mark.parametrize("timeout", [1.0, 2.0])
async def test_a_file_is_given_up_at_the_providers_timeout(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer, timeout: float
) -> None:
    # The Worker waits up to 30 s (UPSTREAM_TIMEOUT_MS default) for a source that sleeps 6 s.
    client = await make_client(
        r2_worker, r2={"max_attempts": 1}, links={"timeout_default": f"{timeout:g}s"}
    )
    started = time.monotonic()
    entry = await client.transfer(file_server.url(f"/slow/6/{int(timeout * 1000) + 1}"), "slow-1")
    took = time.monotonic() - started
    assert timeout <= took < timeout + 1.0, took
    assert entry["status"] == "failed"
    ms = int(timeout * 1000)
    assert entry["error"] == f"HTTP 504: file did not finish within {ms} ms"
    attributes = client.span("slow-1").attributes or {}
    assert (attributes["r2.timeout"], attributes["error.type"]) == (timeout, "timeout")


async def test_a_transfer_the_client_gave_up_on_never_lands_in_the_bucket(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    # The source answers after 2 s; the client waits 1 s. Without the deadline sent to the
    # Worker, the copy would go on and land in the bucket after the client reported a failure.
    client = await make_client(r2_worker, r2={"max_attempts": 1}, links={"timeout_default": "1s"})
    entry = await client.transfer(file_server.url("/slow/2/7001"), "given-up-1")
    assert entry["status"] == "failed"
    time.sleep(3.0)
    assert [key for key in r2_worker.list_objects() if "/given-up-1/" in key] == []


async def test_timeouts_are_retried_up_to_max_attempts_within_the_budget(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    client = await make_client(
        r2_worker, r2={"max_attempts": 3, "retry_budget": "30s"}, links={"timeout_default": "1s"}
    )
    path = "/slow/6/3001"
    started = time.monotonic()
    entry = await client.transfer(file_server.url(path), "retried-1")
    took = time.monotonic() - started
    assert entry["status"] == "failed"
    assert entry["error"] == "HTTP 504: file did not finish within 1000 ms"
    # Three attempts of 1 s with backoff of about 1 s and 2 s between them.
    assert 3 * 1.0 + 0.8 + 1.6 <= took < 3 * 1.0 + 1.2 + 2.4 + 1.5, took
    assert file_server.requests.count(path) == 3
    assert (client.span("retried-1").attributes or {})["r2.attempts"] == 3


async def test_the_retry_budget_stops_retries_before_max_attempts(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    client = await make_client(
        r2_worker, r2={"max_attempts": 5, "retry_budget": "4s"}, links={"timeout_default": "1s"}
    )
    path = "/slow/6/4001"
    started = time.monotonic()
    entry = await client.transfer(file_server.url(path), "budget-1")
    took = time.monotonic() - started
    # A third attempt would start after ~3 s plus a ~2 s backoff: past the 4 s budget.
    assert took < 4.0, took
    assert file_server.requests.count(path) == 2
    assert entry["status"] == "failed"
    assert (client.span("budget-1").attributes or {})["r2.attempts"] == 2


async def test_a_timed_out_transfer_counts_in_r2_transfers_with_outcome_timeout(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    client = await make_client(r2_worker, r2={"max_attempts": 1}, links={"timeout_default": "1s"})
    await client.transfer(file_server.url("/slow/6/5001"), "counted-1")
    assert client.transfers_counted("timeout") == 1
    assert client.transfers_counted("success") == 0


async def test_every_provider_and_outcome_is_counted_from_zero_before_any_transfer(
    make_client: MakeClient, r2_worker: R2Worker
) -> None:
    client = await make_client(r2_worker)
    client.telemetry.force_flush(5.0)
    data = client.metrics.get_metrics_data()
    assert data is not None
    series = {
        (str(p.attributes["r2.provider"]), str(p.attributes["outcome"])): p.value  # type: ignore[index, union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "r2.transfers"
        for p in metric.data.data_points
    }
    providers = ("dropbox", "fromsmash", "swisstransfer", "wetransfer", "generic")
    outcomes = (
        "success", "failure", "timeout", "rejected", "unauthorized", "unresolved", "unavailable"
    )  # fmt: skip
    assert series == {(provider, outcome): 0 for provider in providers for outcome in outcomes}


async def test_a_wrong_token_is_one_401_attempt_with_a_clear_error_in_the_entry_and_the_log(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    client = await make_client(r2_worker, token="wrong-token-3f9a7c", r2={"max_attempts": 3})
    entry = await client.transfer(file_server.url("/bytes/6001"), "unauthorised-1")
    assert entry["status"] == "failed"
    assert entry["error"] == "the Worker refused the token (check R2_FETCH_TOKEN)"
    (event,) = [e for e in client.log_events() if e.get("email_id") == "unauthorised-1"]
    assert event["level"] == "warning"
    assert (event["outcome"], event["attempts"], event["error"]) == (
        "unauthorized", 1, entry["error"]
    )  # fmt: skip
    # A 401 is answered before the job is read, so the Worker's line has no email_id: the
    # traceparent it logs carries the transfer's trace id.
    posts = _worker_posts_in_trace(r2_worker, client.span("unauthorised-1"))
    assert [p["status"] for p in posts] == [401]
    assert "/bytes/6001" not in file_server.requests


def _worker_posts_in_trace(worker: R2Worker, span: ReadableSpan) -> list[dict[str, Any]]:
    assert span.context is not None
    trace_id = f"{span.context.trace_id:032x}"
    worker.wait_for_log(trace_id)
    return [
        r
        for r in worker.log_records()
        if r.get("method") == "POST" and f"-{trace_id}-" in str(r.get("traceparent"))
    ]


UNSAFE = {
    "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "unlisted-port": "http://127.0.0.1:{port}/bytes/10",
    "file": "file:///etc/passwd",
}


def _unsafe(name: str) -> str:
    return UNSAFE[name].format(port=free_port())


@pytest.mark.parametrize("name", list(UNSAFE))
async def test_unsafe_links_are_rejected_by_the_client_without_a_request_to_the_worker(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer, name: str
) -> None:
    client = await make_client(r2_worker)
    email_id = f"unsafe-{name}"
    entry = await client.transfer(_unsafe(name), email_id)
    assert entry["status"] == "rejected"
    assert entry["error"] == "source URL is not an allowed delivery link"
    assert (client.span(email_id).attributes or {})["r2.attempts"] == 0
    await _settled(client, r2_worker, file_server)
    assert _worker_posts(r2_worker, email_id) == []


@pytest.mark.parametrize("name", list(UNSAFE))
def test_the_same_unsafe_sources_sent_straight_to_the_worker_are_refused(
    r2_worker: R2Worker, name: str
) -> None:
    response = r2_worker.transfer(_unsafe(name), email_id=f"straight-{name}")
    assert response.status_code == 403
    assert response.json()["success"] is False


async def test_a_redirect_from_an_allowed_origin_to_a_private_address_is_rejected_by_the_worker(
    make_client: MakeClient, r2_worker: R2Worker, file_server: FileServer
) -> None:
    client = await make_client(r2_worker)
    url = file_server.url("/redirect?to=http://169.254.169.254/latest/meta-data/")
    entry = await client.transfer(url, "redirected-1")
    assert entry["status"] == "rejected"
    assert entry["error"].startswith("HTTP 403: redirect target")
    assert (client.span("redirected-1").attributes or {})["r2.attempts"] == 1
    worker_log = r2_worker.wait_for_log('"email_id":"redirected-1"')
    assert '"outcome":"refused"' in worker_log


@pytest.mark.parametrize("path", ["/bytes/{n}", "/chunked/{n}"])
async def test_a_file_above_max_bytes_fails_with_the_reason_and_leaves_nothing_in_the_bucket(
    make_client: MakeClient, capped_worker: R2Worker, file_server: FileServer, path: str
) -> None:
    client = await make_client(capped_worker)
    entry = await client.transfer(file_server.url(path.format(n=3 * CAP)), "too-large")
    assert entry["status"] == "failed"
    assert f"the {CAP} byte limit" in entry["error"]
    assert entry["error"].startswith("HTTP 413:")
    assert (client.span("too-large").attributes or {})["r2.attempts"] == 1
    assert capped_worker.list_objects() == []


async def _share(client: Client, url: str, email_id: str, provider: str) -> dict[str, Any]:
    return await client.client.transfer(DeliveryLink(provider, url), email_id=email_id)


async def test_a_share_entry_lists_every_file_and_its_size_is_the_total(
    make_client: MakeClient, provider_worker: R2Worker
) -> None:
    client = await make_client(provider_worker)
    entry = await _share(client, wetransfer_link("wt-three"), "share-1", "wetransfer")
    assert entry["status"] == "transferred"
    assert (entry["url"], entry["error"]) == (wetransfer_link("wt-three"), None)
    assert [(f["filename"], f["size"], f["content_type"]) for f in entry["files"]] == [
        (f.name, f.size, f.content_type) for f in THREE_FILES
    ]
    assert entry["size"] == sum(f.size for f in THREE_FILES)
    # Several files: the flat key and URL would name only one of them, so they are empty.
    assert (entry["key"], entry["r2_url"]) == (None, None)
    for listed, file in zip(entry["files"], THREE_FILES, strict=True):
        assert listed["r2_url"] == f"{provider_worker.url}/object/{listed['key']}"
        assert provider_worker.object_sha256(listed["key"]) == file.sha256


async def test_each_stored_file_is_an_r2_file_span_under_r2_transfer_with_its_size(
    make_client: MakeClient, provider_worker: R2Worker
) -> None:
    client = await make_client(provider_worker)
    entry = await _share(client, wetransfer_link("wt-three"), "share-2", "wetransfer")
    parent = client.span("share-2")
    assert parent.context is not None
    files = [s for s in client.spans.get_finished_spans() if s.name == "r2.file"]
    mine = [s for s in files if s.parent is not None and s.parent.span_id == parent.context.span_id]
    assert [(s.attributes or {}).get("r2.object.size") for s in mine] == [
        f.size for f in THREE_FILES
    ]
    assert [(s.attributes or {}).get("r2.object.key") for s in mine] == [
        f["key"] for f in entry["files"]
    ]
    assert all(s.start_time is not None and s.end_time is not None for s in mine)
    assert (parent.attributes or {})["r2.files"] == 3


async def test_a_landing_page_is_unresolved_after_one_attempt_and_keeps_the_link(
    make_client: MakeClient, provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    origin = provider_stand_ins.origin
    client = await make_client(
        provider_worker, r2={"max_attempts": 3}, links={"allowed_hosts": [origin]}
    )
    entry = await client.transfer(f"{origin}/landing", "landing-1")
    assert (entry["status"], entry["url"], entry["files"]) == (
        "unresolved", f"{origin}/landing", []
    )  # fmt: skip
    assert "landing page" in entry["error"]
    assert (client.span("landing-1").attributes or {})["r2.attempts"] == 1
    assert client.transfers_counted("unresolved") == 1


async def test_an_expired_transfer_is_unavailable_with_the_reason_and_not_retried(
    make_client: MakeClient, provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    client = await make_client(provider_worker, r2={"max_attempts": 3})
    before = len(provider_stand_ins.calls("POST", "/wt-expired/prepare-download"))
    entry = await _share(client, wetransfer_link("wt-expired"), "expired-1", "wetransfer")
    assert entry["status"] == "unavailable"
    assert entry["error"] == ("HTTP 410: WeTransfer: Couldn't find Transfer (expired or deleted)")
    calls = provider_stand_ins.calls("POST", "/wt-expired/prepare-download")[before:]
    assert len(calls) == 1
    assert (client.span("expired-1").attributes or {})["r2.attempts"] == 1
    assert client.transfers_counted("unavailable") == 1


async def test_a_provider_5xx_is_retried_and_the_share_then_lands(
    make_client: MakeClient, provider_worker: R2Worker
) -> None:
    client = await make_client(provider_worker, r2={"max_attempts": 3, "retry_budget": "60s"})
    entry = await _share(client, wetransfer_link("wt-flaky-2"), "flaky-1", "wetransfer")
    assert entry["status"] == "transferred"
    assert len(entry["files"]) == 3
    assert (client.span("flaky-1").attributes or {})["r2.attempts"] == 2
