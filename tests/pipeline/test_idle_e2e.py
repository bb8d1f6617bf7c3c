"""IMAP IDLE across real `signal-sidecar run` processes: push delivery seen in Jaeger, and the
lease holder alone idling among replicas on Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import make_message
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(180)

Start = Callable[..., SidecarProcess]


def _env(dovecot: Dovecot, receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        # Five minutes between polls: only IDLE can deliver within seconds.
        "IMAP_POLL_INTERVAL": "300",
        "WEBHOOK_URL": receiver.url + "/hook",
        **extra,
    }


async def _until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)


async def _mailbox(proc: SidecarProcess) -> dict[str, Any]:
    _, body = await asyncio.to_thread(proc.get_json, "/health")
    poller = body["services"]["background_tasks"]["imap_poller"]
    return dict(poller.get("mailboxes", {}).get("default", {}))


async def _idles(proc: SidecarProcess) -> bool:
    box = await _mailbox(proc)
    return bool(box.get("leader")) and box.get("mode") == "idle"


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


async def test_with_a_300s_poll_interval_mail_arrives_within_2s_and_jaeger_shows_the_idle_wakeup(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, telemetry_stack: TelemetryStack
) -> None:
    service = f"sidecar-idle-{uuid.uuid4().hex[:8]}"
    env = _env(dovecot, receiver, OTEL_SERVICE_NAME=service,
               OTEL_EXPORTER_OTLP_ENDPOINT=telemetry_stack.otlp_http_endpoint,
               OTEL_BSP_SCHEDULE_DELAY="200")  # fmt: skip
    proc = await asyncio.to_thread(sidecar_process, env=env)
    await _until("the sidecar idles", lambda: _idles(proc), timeout=20)
    appended = time.monotonic()
    dovecot.append("alice", make_message(message_id="<pushed@e2e>", subject="pushed"))
    (request,) = await receiver.wait_for(1, timeout=10)
    took = time.monotonic() - appended
    assert took < 2.0, f"delivered {took:.2f}s after APPEND"
    assert request.json["message_id"] == "<pushed@e2e>"

    def traced() -> tuple[dict[str, Any], dict[str, Any]] | None:
        traces = telemetry_stack.traces(service, limit=200)
        spans = {s["spanID"]: s for t in traces for s in t["spans"]}
        for span in spans.values():
            if span["operationName"] != "email.process":
                continue
            (link,) = [r for r in span["references"] if r["refType"] == "FOLLOWS_FROM"]
            poll = spans.get(link["spanID"])
            if poll is not None:
                return span, poll
        return None

    found = await _until("the email's trace and its poll in Jaeger",
                         lambda: asyncio.to_thread(traced), timeout=30, every=0.5)  # fmt: skip
    email, poll = found
    assert _tags(email)["outcome"] == "delivered"
    assert _tags(poll)["imap.trigger"] == "idle"
    (poll_trace,) = [t for t in telemetry_stack.traces(service, limit=200)
                     if t["traceID"] == poll["traceID"]]  # fmt: skip
    (wakeup,) = [s for s in poll_trace["spans"] if s["operationName"] == "imap.idle.wakeup"]
    assert {"refType": "CHILD_OF", "spanID": poll["spanID"]}.items() <= wakeup["references"][
        0
    ].items()
    assert "EXISTS" in str(_tags(wakeup)["imap.idle.responses"])


async def test_two_replicas_on_redis_only_the_holder_idles_and_a_killed_one_is_replaced_in_the_ttl(
    dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer, sidecar_process: Start
) -> None:
    ttl = 6.0
    env = _env(dovecot, receiver, REDIS_URL=redis_server.url)
    config = f'[imap]\ntimeout = "3s"\nlease_ttl = "{ttl:g}s"\n[health]\ninterval = "500ms"\n'
    first = await asyncio.to_thread(sidecar_process, env=env, config=config, name="a")
    await _until("the first replica idles", lambda: _idles(first), timeout=20)
    second = await asyncio.to_thread(sidecar_process, env=env, config=config, name="b")
    await _until("the second replica answers", lambda: _mailbox(second), timeout=20)
    for _ in range(8):
        standby = await _mailbox(second)
        assert (standby["leader"], standby["mode"]) == (False, None)
        assert await _idles(first)
        await asyncio.sleep(0.25)
    assert not [e for e in second.log_events() if e.get("event") == "imap.mode"]
    await asyncio.to_thread(first.kill)
    killed = time.monotonic()
    await _until("the second replica idles", lambda: _idles(second), timeout=ttl + 5)
    took = time.monotonic() - killed
    assert took < ttl, f"idling again {took:.1f}s after the kill, lease TTL {ttl:g}s"
    appended = time.monotonic()
    dovecot.append("alice", make_message(message_id="<after-kill@e2e>"))
    (request,) = await receiver.wait_for(1, timeout=10)
    assert time.monotonic() - appended < 2.0
    assert request.json["message_id"] == "<after-kill@e2e>"


@pytest.mark.parametrize("store", ["local", "redis"])
async def test_sigterm_just_after_a_delivery_exits_cleanly_within_seconds(
    store: str,
    dovecot: Dovecot,
    receiver: Receiver,
    redis_server: RedisServer,
    sidecar_process: Start,
) -> None:
    extra = {"REDIS_URL": redis_server.url} if store == "redis" else {}
    proc = await asyncio.to_thread(sidecar_process, env=_env(dovecot, receiver, **extra))
    await _until("the sidecar idles", lambda: _idles(proc), timeout=20)
    dovecot.append("alice", make_message(message_id=f"<term-{store}@e2e>", subject="term"))
    await receiver.wait_for(1, timeout=10)
    await asyncio.sleep(0.3)  # back in IDLE, or on the way there
    took = await asyncio.to_thread(proc.terminate, 15.0)
    assert proc.proc is not None
    assert proc.proc.returncode == 0, proc.log_tail()
    assert took < 5.0, proc.log_tail()
