"""Files out end to end: a real sidecar polls Dovecot, the Worker under Miniflare fills R2.

Provider shares are resolved against the loopback stand-ins in tests/fixtures/providers.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.fileserver import FileServer, sha256_of
from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import (
    DROPBOX_FOLDER_LINK,
    THREE_FILES,
    ProviderStandIns,
    swisstransfer_link,
    wetransfer_link,
)
from tests.fixtures.receiver import Receiver
from tests.pipeline import hostile
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

MiB = 1024 * 1024
# The Worker answers once the whole file is in the bucket, so the read timeout covers the copy.
_CONFIG = """\
[links]
timeout_default = "120s"
[r2]
max_attempts = 2
retry_budget = "30s"
[health]
interval = "500ms"
"""

Start = Callable[..., SidecarProcess]


def _env(dovecot: Dovecot, receiver: Receiver, allowed: str = "", **extra: str) -> dict[str, str]:
    return {
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": "0.5",
        "WEBHOOK_URL": receiver.url + "/hook",
        "LINK_ALLOWED_HOSTS": allowed,
        "OTEL_SDK_DISABLED": "true",
        **extra,
    }


def _worker_env(worker: R2Worker, token: str | None = None) -> dict[str, str]:
    return {"R2_FETCH_ENDPOINT": worker.url, "R2_FETCH_TOKEN": token or worker.token}


def _traced(stack: TelemetryStack, service: str) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRICS_EXPORTER": "none",
    }


async def _run(
    start: Start, dovecot: Dovecot, receiver: Receiver, links: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """Mails the links, starts the sidecar, and returns the one webhook body."""
    dovecot.append("alice", hostile.make_message(
        subject="files", links=links, message_id=f"<files-{uuid.uuid4().hex}@e2e>"
    ))  # fmt: skip
    # Blocking start runs in a thread so the receiver in this loop can answer meanwhile.
    await asyncio.to_thread(start, env=env, config=_CONFIG)
    (request,) = await receiver.wait_for(1, timeout=120)
    body: dict[str, Any] = request.json
    body["_traceparent"] = request.headers.get("traceparent", "")
    return body


def _jaeger_trace(
    stack: TelemetryStack,
    service: str,
    trace_id: str,
    more: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """The trace once Jaeger holds its r2.transfer span, the HTTP client span under it and more."""
    deadline = time.monotonic() + 30
    wanted = {"email.process", "r2.transfer", "POST", *more}
    while True:
        for trace in stack.traces(service):
            names = {s["operationName"] for s in trace["spans"]}
            if trace["traceID"] == trace_id and wanted <= names:
                return trace
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} of {service} not complete in Jaeger")
        time.sleep(0.3)


def _named(trace: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [s for s in trace["spans"] if s["operationName"] == name]


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def _parent(span: dict[str, Any]) -> str | None:
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


async def test_three_files_land_in_the_bucket_byte_for_byte_and_the_webhook_lists_them(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    r2_worker: R2Worker,
    file_server: FileServer,
) -> None:
    sizes = [1024, 5 * MiB, 50 * MiB]
    links = [file_server.url(f"/bytes/{n}") for n in sizes]
    env = _env(dovecot, receiver, file_server.origin, **_worker_env(r2_worker))
    body = await _run(sidecar_process, dovecot, receiver, links, env)
    entries = body["delivery_links"]
    assert [(e["url"], e["status"], e["size"], e["error"]) for e in entries] == [
        (url, "transferred", n, None) for url, n in zip(links, sizes, strict=True)
    ]
    for entry, n in zip(entries, sizes, strict=True):
        assert entry["provider"] == "generic"
        assert entry["key"].endswith(f"/{n}")
        assert entry["r2_url"] == f"{r2_worker.url}/object/{entry['key']}"
        digest = await asyncio.to_thread(r2_worker.object_sha256, entry["key"])
        assert digest == sha256_of(n), entry["key"]


async def test_jaeger_shows_email_process_r2_transfer_and_the_client_span_the_worker_saw(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    r2_worker: R2Worker,
    file_server: FileServer,
    telemetry_stack: TelemetryStack,
) -> None:
    service = f"files-out-{uuid.uuid4().hex[:8]}"
    env = _env(
        dovecot,
        receiver,
        file_server.origin,
        **_worker_env(r2_worker),
        **_traced(telemetry_stack, service),
    )
    body = await _run(sidecar_process, dovecot, receiver, [file_server.url("/bytes/2048")], env)
    assert body["delivery_links"][0]["status"] == "transferred"
    trace_id = body["_traceparent"].split("-")[1]
    trace = await asyncio.to_thread(_jaeger_trace, telemetry_stack, service, trace_id)
    (root,) = _named(trace, "email.process")
    (transfer,) = _named(trace, "r2.transfer")
    assert _parent(transfer) == root["spanID"]
    # The webhook's own POST is in the trace too; the requests span is the one under r2.transfer.
    (post,) = [s for s in _named(trace, "POST") if _parent(s) == transfer["spanID"]]
    assert _tags(post)["url.full"] == f"{r2_worker.url}/"
    worker_log = await asyncio.to_thread(r2_worker.wait_for_log, trace_id)
    (seen,) = [
        r
        for r in r2_worker.log_records()
        if r.get("method") == "POST" and trace_id in str(r.get("traceparent"))
    ]
    assert trace_id in worker_log
    # The Worker's parent is the HTTP client span itself: the propagated context is that span's.
    assert seen["traceparent"].split("-")[2] == post["spanID"]
    assert seen["email_id"] == body["email_id"]


async def test_a_wrong_token_fails_the_link_with_a_clear_error_and_is_printed_nowhere(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    r2_worker: R2Worker,
    file_server: FileServer,
    telemetry_stack: TelemetryStack,
) -> None:
    token = f"wrong-{uuid.uuid4().hex}"
    service = f"files-out-{uuid.uuid4().hex[:8]}"
    env = _env(dovecot, receiver, file_server.origin, **_worker_env(r2_worker, token),
               **_traced(telemetry_stack, service))  # fmt: skip
    started: list[SidecarProcess] = []

    def start(**kw: Any) -> SidecarProcess:
        started.append(sidecar_process(**kw))
        return started[-1]

    body = await _run(start, dovecot, receiver, [file_server.url("/bytes/4096")], env)
    (entry,) = body["delivery_links"]
    assert entry["status"] == "failed"
    assert entry["error"] == "the Worker refused the token (check R2_FETCH_TOKEN)"
    trace_id = body["_traceparent"].split("-")[1]
    trace = await asyncio.to_thread(_jaeger_trace, telemetry_stack, service, trace_id)
    events = [e for e in started[0].log_events() if e.get("event") == "r2.transfer"]
    assert [(e["level"], e["outcome"], e["attempts"], e["error"]) for e in events] == [
        ("warning", "unauthorized", 1, entry["error"])
    ]
    posts = [
        r
        for r in r2_worker.log_records()
        if r.get("method") == "POST" and trace_id in str(r.get("traceparent"))
    ]
    assert [p["status"] for p in posts] == [401]
    outputs = {
        "webhook body": json.dumps(body),
        "sidecar log": started[0].log_text(),
        "spans": json.dumps(trace),
        "worker log": r2_worker.log_text(),
    }
    assert [name for name, text in outputs.items() if token in text] == []


async def test_unsafe_links_are_not_links_and_a_redirect_to_a_private_address_is_rejected(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    r2_worker: R2Worker,
    file_server: FileServer,
) -> None:
    redirect = file_server.url("/redirect?to=http://169.254.169.254/latest/meta-data/")
    links = [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        f"http://127.0.0.1:{free_port()}/bytes/10",
        "file:///etc/passwd",
        redirect,
    ]
    env = _env(dovecot, receiver, file_server.origin, **_worker_env(r2_worker))
    body = await _run(sidecar_process, dovecot, receiver, links, env)
    (entry,) = body["delivery_links"]
    assert (entry["url"], entry["status"]) == (redirect, "rejected")
    assert entry["error"].startswith("HTTP 403: redirect target")
    r2_worker.wait_for_log(f'"email_id":"{body["email_id"]}"')
    posts = [r for r in r2_worker.log_records() if r.get("email_id") == body["email_id"]]
    assert [(p["source"], p["status"]) for p in posts] == [
        (file_server.url("/redirect?to=***"), 403)
    ]


async def test_without_r2_fetch_endpoint_links_are_delivered_as_skipped(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, file_server: FileServer
) -> None:
    link = file_server.url("/bytes/777")
    env = _env(dovecot, receiver, file_server.origin)
    body = await _run(sidecar_process, dovecot, receiver, [link], env)
    (entry,) = body["delivery_links"]
    assert (entry["provider"], entry["url"], entry["status"]) == ("generic", link, "skipped")
    assert "/bytes/777" not in file_server.requests


async def test_a_wetransfer_and_a_swisstransfer_share_land_file_by_file_and_the_webhook_lists_them(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    provider_worker: R2Worker,
) -> None:
    links = [wetransfer_link("wt-three"), swisstransfer_link("st-three-0001")]
    env = _env(dovecot, receiver, **_worker_env(provider_worker))
    body = await _run(sidecar_process, dovecot, receiver, links, env)
    entries = body["delivery_links"]
    assert [(e["provider"], e["url"], e["status"]) for e in entries] == [
        ("wetransfer", links[0], "transferred"),
        ("swisstransfer", links[1], "transferred"),
    ]
    for entry in entries:
        assert entry["size"] == sum(f.size for f in THREE_FILES)
        assert [(f["filename"], f["size"]) for f in entry["files"]] == [
            (f.name, f.size) for f in THREE_FILES
        ]
        for listed, file in zip(entry["files"], THREE_FILES, strict=True):
            assert listed["r2_url"] == f"{provider_worker.url}/object/{listed['key']}"
            digest = await asyncio.to_thread(provider_worker.object_sha256, listed["key"])
            assert digest == file.sha256, listed["key"]


async def test_each_link_says_plainly_when_it_led_to_a_page_or_an_expired_transfer(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    provider_worker: R2Worker,
    provider_stand_ins: ProviderStandIns,
) -> None:
    landing = f"{provider_stand_ins.origin}/landing"
    links = [landing, wetransfer_link("wt-expired"), DROPBOX_FOLDER_LINK]
    before = len(provider_stand_ins.calls("POST", "/wt-expired/prepare-download"))
    env = _env(dovecot, receiver, provider_stand_ins.origin, **_worker_env(provider_worker))
    body = await _run(sidecar_process, dovecot, receiver, links, env)
    page, expired, folder = body["delivery_links"]
    assert (page["url"], page["status"], page["files"]) == (landing, "unresolved", [])
    assert "landing page" in page["error"]
    assert (expired["status"], expired["error"]) == (
        "unavailable",
        "HTTP 410: WeTransfer: Couldn't find Transfer (expired or deleted)",
    )
    calls = provider_stand_ins.calls("POST", "/wt-expired/prepare-download")[before:]
    assert len(calls) == 1  # not retried, although r2.max_attempts is 2
    assert (folder["status"], len(folder["files"])) == ("transferred", 1)
    zipped = await asyncio.to_thread(provider_worker.get_object, folder["key"])
    assert zipped == provider_stand_ins.dropbox_zip
    stored = await asyncio.to_thread(provider_worker.list_objects)
    assert [k for k in stored if f"/{body['email_id']}/" in k] == [folder["key"]]


async def test_jaeger_shows_r2_transfer_with_one_child_per_file_and_its_size(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    provider_worker: R2Worker,
    telemetry_stack: TelemetryStack,
) -> None:
    service = f"files-out-{uuid.uuid4().hex[:8]}"
    env = _env(
        dovecot, receiver, **_worker_env(provider_worker), **_traced(telemetry_stack, service)
    )
    body = await _run(sidecar_process, dovecot, receiver, [wetransfer_link("wt-three")], env)
    (entry,) = body["delivery_links"]
    trace_id = body["_traceparent"].split("-")[1]
    trace = await asyncio.to_thread(_jaeger_trace, telemetry_stack, service, trace_id, {"r2.file"})
    (transfer,) = _named(trace, "r2.transfer")
    files = [s for s in _named(trace, "r2.file") if _parent(s) == transfer["spanID"]]
    files.sort(key=lambda s: _tags(s)["r2.file.index"])
    assert [_tags(s)["r2.object.size"] for s in files] == [f.size for f in THREE_FILES]
    assert [_tags(s)["r2.object.key"] for s in files] == [f["key"] for f in entry["files"]]
    assert _tags(transfer)["r2.object.size"] == entry["size"]
