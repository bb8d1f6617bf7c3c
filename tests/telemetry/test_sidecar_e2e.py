"""A real sidecar processing real mail: what reaches Jaeger and the collector, whole or sampled."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.pipeline import hostile
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(180)

Start = Callable[..., SidecarProcess]
WEBHOOK_SECRET = "whsec-e2e-telemetry-91f3"
R2_FETCH_TOKEN = "r2tok-e2e-telemetry-5d2a"
API_TOKEN = "apitok-e2e-telemetry-77b0"
URL_TOKEN = "urltok-e2e-telemetry-0c4e"
_CONFIG = """\
[imap]
batch_size = 100
concurrency = 8
[health]
interval = "1s"
[alerts]
use_defaults = false
[[alerts.rules]]
alert = "AllMailDelivered"
metric = "imap.messages"
match = { outcome = "delivered" }
function = "value"
op = ">="
threshold = {count}
"""


def _env(
    dovecot: Dovecot, receiver: Receiver, stack: TelemetryStack, **extra: str
) -> dict[str, str]:
    return {
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": "0.5",
        "WEBHOOK_URL": f"{receiver.url}/hook?token={URL_TOKEN}",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "R2_FETCH_TOKEN": R2_FETCH_TOKEN,
        "SIDECAR_API_TOKEN": API_TOKEN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        **extra,
    }


async def _until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.5)


def _roots(trace: dict[str, Any]) -> list[str]:
    return [s["operationName"] for s in trace["spans"]
            if not any(r["refType"] == "CHILD_OF" for r in s.get("references", []))]  # fmt: skip


def _email_traces(stack: TelemetryStack, service: str) -> list[dict[str, Any]]:
    return [t for t in stack.traces(service, limit=2000) if "email.process" in _roots(t)]


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def _series(prometheus: str, metric: str, service: str, **labels: str) -> float | None:
    """The value of one series of the collector's Prometheus output, or None."""
    for line in prometheus.splitlines():
        name, _, rest = line.partition("{")
        wanted = [f'job="{service}"', *(f'{k}="{v}"' for k, v in labels.items())]
        if name == metric and all(label in rest for label in wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


def _log_bodies(debug: str, service: str) -> list[str]:
    """Bodies of the log records the collector's debug exporter printed for one service."""
    bodies: list[str] = []
    for block in debug.split("ResourceLog #")[1:]:
        if f"service.name: Str({service})" in block:
            bodies += re.findall(r"^Body: Str\((.*)\)$", block, flags=re.MULTILINE)
    return bodies


async def _process(
    start: Start, dovecot: Dovecot, receiver: Receiver, stack: TelemetryStack, count: int,
    **env: str,
) -> tuple[SidecarProcess, list[dict[str, Any]]]:  # fmt: skip
    """Delivers `count` mails through a sidecar; returns it with its alerts once all are in."""
    dovecot.append_many("alice", [
        hostile.make_message(message_id=f"<t-{i}@e2e>", subject=f"mail {i}",
                             links=[f"{hostile.DROPBOX_URL}?token={URL_TOKEN}"],
                             html="<p>files</p>" if i % 2 else None)
        for i in range(count)
    ])  # fmt: skip
    proc = await asyncio.to_thread(start, env=_env(dovecot, receiver, stack, **env),
                                   config=_CONFIG.replace("{count}", str(count)))  # fmt: skip
    await receiver.wait_for(count, timeout=90)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}

    def firing() -> list[dict[str, Any]]:
        listed = json.loads(proc.get("/api/alerts", headers=headers)[1])["alerts"]
        return [a for a in listed if a["state"] == "firing"]

    alerts = await _until("the alert on every delivered mail fires", firing, timeout=20)
    assert await asyncio.to_thread(proc.terminate) <= 5.0  # the flush of queued telemetry
    return proc, alerts


async def test_each_email_is_one_trace_with_its_spans_and_attributes_linked_to_its_poll(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, telemetry_stack: TelemetryStack
) -> None:
    service = f"sidecar-e2e-{uuid.uuid4().hex[:8]}"
    await _process(sidecar_process, dovecot, receiver, telemetry_stack, 6,
                   OTEL_SERVICE_NAME=service)  # fmt: skip
    await _until("six email traces in Jaeger",
                 lambda: len(_email_traces(telemetry_stack, service)) == 6, 30)  # fmt: skip
    found = telemetry_stack.traces(service, limit=2000)
    polls = {s["spanID"]: s for t in found for s in t["spans"] if s["operationName"] == "imap.poll"}
    uids = set()
    for trace in _email_traces(telemetry_stack, service):
        spans = {s["operationName"]: s for s in trace["spans"]}
        assert {"email.process", "email.parse", "webhook.deliver", "POST"} <= set(spans)
        root = _tags(spans["email.process"])
        assert root["imap.mailbox"] == "default"
        assert root["outcome"] == "delivered"
        assert root["imap.message.size"] > 0
        assert root["email.id"]
        uids.add(root["imap.uid"])
        assert {"email.parts", "email.html.bytes", "email.html.truncated"} <= set(
            _tags(spans["email.parse"])
        )
        deliver = _tags(spans["webhook.deliver"])
        assert (deliver["outcome"], deliver["http.response.status_code"]) == ("delivered", 200)
        assert deliver["webhook.idempotency_key"] == root["email.id"]
        post = _tags(spans["POST"])
        assert post["http.request.method"] == "POST"
        assert post["url.full"].endswith("/hook?token=***")
        (link,) = [
            r for r in spans["email.process"]["references"] if r["refType"] == "FOLLOWS_FROM"
        ]
        assert _tags(polls[link["spanID"]])["imap.mailbox"] == "default"
    assert uids == set(range(1, 7))


async def test_no_configured_secret_reaches_jaeger_or_the_collector(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, telemetry_stack: TelemetryStack
) -> None:
    service = f"sidecar-e2e-{uuid.uuid4().hex[:8]}"
    await _process(sidecar_process, dovecot, receiver, telemetry_stack, 4,
                   OTEL_SERVICE_NAME=service)  # fmt: skip
    await _until("four email traces in Jaeger",
                 lambda: len(_email_traces(telemetry_stack, service)) == 4, 30)  # fmt: skip
    debug = await _until(
        "the sidecar's log records in the debug output",
        lambda: _log_bodies(telemetry_stack.debug_output(), service),
        30,
    )
    assert "webhook.delivery" in debug
    traces = json.dumps(telemetry_stack.traces(service, limit=2000))
    prometheus = telemetry_stack.prometheus_text()
    assert "token=***" in traces  # the check below reads the exported data, masked
    secrets = [dovecot.users["alice"], WEBHOOK_SECRET, R2_FETCH_TOKEN, API_TOKEN, URL_TOKEN]
    for output in (traces, prometheus, telemetry_stack.debug_output()):
        assert not [secret for secret in secrets if secret in output]


async def test_at_ten_percent_sampling_a_tenth_of_email_traces_arrive_and_nothing_else_is_lost(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, telemetry_stack: TelemetryStack
) -> None:
    count = 400
    service = f"sidecar-e2e-{uuid.uuid4().hex[:8]}"
    _, alerts = await _process(
        sidecar_process, dovecot, receiver, telemetry_stack, count, OTEL_SERVICE_NAME=service,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1",
    )  # fmt: skip
    # Alerts read every mail: the rule on all 400 deliveries fired.
    assert [a["alertname"] for a in alerts] == ["AllMailDelivered"]

    def delivered() -> float | None:
        text = telemetry_stack.prometheus_text()
        return _series(text, "imap_messages_total", service, outcome="delivered")

    assert await _until("every mail counted by the collector", delivered, 30) == count

    def logged() -> int:
        bodies = _log_bodies(telemetry_stack.debug_output(), service)
        return bodies.count("webhook.delivery") if bodies.count("webhook.delivery") >= count else 0

    assert await _until("a log record per delivery at the collector", logged, 30) == count
    await asyncio.sleep(1.0)  # the last span batches
    sampled = _email_traces(telemetry_stack, service)
    # Binomial(400, 0.1): 40 expected, standard deviation 6; the bounds are 4 deviations away.
    assert 16 <= len(sampled) <= 64, len(sampled)
    for trace in sampled:  # a sampled email's children are sampled with it
        assert {"email.process", "email.parse", "webhook.deliver", "POST"} <= {
            s["operationName"] for s in trace["spans"]
        }


async def test_the_sdks_warnings_with_the_collector_down_are_json_lines_of_the_log_stream(
    sidecar_process: Start,
) -> None:
    env = {"ENABLE_BACKGROUND_TASKS": "false", "SIDECAR_API_TOKEN": API_TOKEN,
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "500", "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_BLRP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "500"}  # fmt: skip
    proc = await asyncio.to_thread(sidecar_process, env=env)
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    await asyncio.to_thread(proc.get, "/api/metrics", headers)

    def sdk_events() -> list[dict[str, Any]]:
        return [e for e in proc.log_events() if e.get("event") == "otel.sdk"]

    events = await _until("the SDK's export failures in the log stream", sdk_events, 20)
    assert await asyncio.to_thread(proc.terminate) <= 5.0
    assert all(e["logger"] == "telemetry" and e["level"] in ("warning", "error") for e in events)
    assert any("Failed to export" in e["message"] for e in events)
    lines = [line for line in proc.log_text().splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("{")] == []
    assert len(lines) == len(proc.log_events())
