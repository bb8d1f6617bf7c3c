"""Mail in, end to end: real `signal-sidecar run` processes, Dovecot, Redis, a receiver, Jaeger."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psutil
import pytest

from tests.fixtures.blackhole import BlackHole
from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline import hostile
from tests.support.sidecar import SidecarProcess

SECRET = "e2e-webhook-secret"
MAILBOX = "default"
SWISS_URL = "https://www.swisstransfer.com/d/8a7b6c5d-1234"
SMASH_URL = "https://fromsmash.com/AbCdEf-ct"
_FAST = """\
[imap]
timeout = "3s"
lease_ttl = "3s"
max_attempts = 2
[webhook]
backoff_initial = "50ms"
retry_budget = "2s"
[health]
interval = "500ms"
"""

Start = Callable[..., SidecarProcess]


def _env(dovecot: Dovecot, receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": "0.5",
        "WEBHOOK_URL": receiver.url + "/hook",
        "WEBHOOK_SECRET": SECRET,
        "OTEL_SDK_DISABLED": "true",
        **extra,
    }


async def _start(
    start: Start, env: dict[str, str], config: str = _FAST, **kw: Any
) -> SidecarProcess:
    # Blocking start runs in a thread so the receiver in this loop can answer meanwhile.
    return await asyncio.to_thread(start, env=env, config=config, **kw)


async def _health(proc: SidecarProcess) -> dict[str, Any]:
    _, body = await asyncio.to_thread(proc.get_json, "/health")
    return dict(body)


def _box(health: dict[str, Any]) -> dict[str, Any]:
    # Until the pipeline has started, imap_poller says "starting" and lists no mailbox yet.
    poller = health["services"]["background_tasks"]["imap_poller"]
    return dict(poller.get("mailboxes", {}).get(MAILBOX, {"leader": False, "watermark": None}))


async def _until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
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


def _valid_signature(body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


def _mixed(count: int) -> tuple[list[bytes], dict[str, set[tuple[str, str]]]]:
    """count mails cycling through providers, no link, and HTML-only; expected links by id."""
    kinds: list[tuple[list[tuple[str, str]], bool]] = [
        ([("dropbox", hostile.DROPBOX_URL)], False),
        ([("wetransfer", hostile.WETRANSFER_URL)], True),
        ([("swisstransfer", SWISS_URL)], False),
        ([("fromsmash", SMASH_URL), ("dropbox", hostile.DROPBOX_URL)], True),
        ([], False),
        ([("wetransfer", hostile.WETRANSFER_URL)], "html-only"),  # type: ignore[list-item]
        ([], "html-only"),  # type: ignore[list-item]
    ]
    mails, expected = [], {}
    for index in range(count):
        links, html = kinds[index % len(kinds)]
        message_id = f"<mixed-{index}@e2e.example>"
        page = "<html><body><p>Hello</p></body></html>"
        mails.append(hostile.make_message(
            subject=f"mixed {index}", message_id=message_id, links=[url for _, url in links],
            text=None if html == "html-only" else "Hello,\r\nfiles:",
            html=page if html else None,
        ))  # fmt: skip
        expected[message_id] = set(links)
    return mails, expected


async def test_two_hundred_mixed_mails_are_delivered_exactly_once_signed_with_their_links(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    mails, expected = _mixed(200)
    dovecot.append_many("alice", mails)
    proc = await _start(sidecar_process, _env(dovecot, receiver))
    await receiver.wait_for(200, timeout=90)
    # Steady state: further cycles find nothing new.
    await _until("watermark at the last UID", lambda: _last_uid(proc, 200), timeout=10)
    await asyncio.sleep(1.5)
    assert len(receiver.requests) == 200
    seen: dict[str, set[tuple[str, str]]] = {}
    for request in receiver.requests:
        assert _valid_signature(request.body, request.headers["X-Signature-256"])
        body = request.json
        assert request.headers["Idempotency-Key"] == body["email_id"]
        seen[body["message_id"]] = {(d["provider"], d["url"]) for d in body["delivery_links"]}
    assert seen == expected
    assert len({r.headers["Idempotency-Key"] for r in receiver.requests}) == 200


async def _last_uid(proc: SidecarProcess, uid: int) -> bool:
    return bool(_box(await _health(proc))["watermark"] == uid)


async def test_sigkill_mid_batch_then_restart_loses_nothing_and_duplicates_share_their_key(
    dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer, sidecar_process: Start
) -> None:
    mails, expected = _mixed(60)
    dovecot.append_many("alice", mails)
    receiver.hang = 0.05
    env = _env(dovecot, receiver, REDIS_URL=redis_server.url)
    first = await _start(sidecar_process, env)
    await receiver.wait_for(15, timeout=60)
    await asyncio.to_thread(first.kill)
    killed_at = len(receiver.requests)
    assert killed_at < 60, "the kill should land in the middle of the mailbox"
    second = await _start(sidecar_process, env)
    by_id: dict[str, set[str]] = defaultdict(set)

    def all_seen() -> bool:
        for request in receiver.requests:
            by_id[request.json["message_id"]].add(request.headers["Idempotency-Key"])
        return set(by_id) == set(expected)

    await _until("every message delivered after the restart", all_seen, timeout=90)
    await _until("watermark at the last UID", lambda: _last_uid(second, 60), timeout=15)
    assert all(len(keys) == 1 for keys in by_id.values()), by_id
    # The kill caught deliveries in flight: some messages really were delivered twice.
    assert len(receiver.requests) > len(expected)


async def test_two_replicas_on_one_redis_have_one_leader_and_the_other_takes_over_on_sigkill(
    dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer, sidecar_process: Start
) -> None:
    env = _env(dovecot, receiver, REDIS_URL=redis_server.url)
    a = await _start(sidecar_process, env, name="a")
    b = await _start(sidecar_process, env, name="b")
    leaders: list[tuple[bool, bool]] = []
    for index in range(15):
        dovecot.append("alice", hostile.make_message(message_id=f"<r-{index}@e2e>"))
        pair = await asyncio.gather(_health(a), _health(b))
        leaders.append((_box(pair[0])["leader"], _box(pair[1])["leader"]))
        await asyncio.sleep(0.2)
    await receiver.wait_for(15, timeout=30)
    assert all(x != y for x, y in leaders), leaders
    leader, standby = (a, b) if leaders[-1][0] else (b, a)

    def deliveries(proc: SidecarProcess) -> int:
        return sum(1 for e in proc.log_events() if e.get("event") == "webhook.delivery")

    # The receiver answers before the sidecar logs the outcome: wait for the last log line.
    await _until("15 deliveries logged", lambda: deliveries(leader) + deliveries(standby) >= 15,
                 timeout=10)  # fmt: skip
    assert (deliveries(leader), deliveries(standby)) == (15, 0)
    await asyncio.to_thread(leader.kill)
    killed = time.monotonic()
    await _until("the standby leads", lambda: _leads(standby), timeout=3 + 0.5 + 5, every=0.05)
    takeover = time.monotonic() - killed
    dovecot.append("alice", hostile.make_message(message_id="<after-takeover@e2e>"))
    await receiver.wait_for(16, timeout=15)
    # Lease TTL 3 s plus one 0.5 s interval, and a little for /health polling on a busy machine.
    assert takeover <= 3 + 0.5 + 1.0, f"took over after {takeover:.2f}s"


async def _leads(proc: SidecarProcess) -> bool:
    return bool(_box(await _health(proc))["leader"])


async def test_dovecot_restart_fails_then_recovers_the_imap_check_and_delivers_the_backlog(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    dovecot.append("alice", hostile.make_message(message_id="<before@e2e>"))
    proc = await _start(sidecar_process, _env(dovecot, receiver))
    await receiver.wait_for(1, timeout=30)
    dovecot.stop()
    await _until("imap check fails", lambda: _imap_status(proc, "error"), timeout=20)
    dovecot.start()
    dovecot.append_many("alice", [hostile.make_message(message_id=f"<backlog-{i}@e2e>")
                                  for i in range(3)])  # fmt: skip
    await _until("imap check recovers", lambda: _imap_status(proc, "ok"), timeout=30)
    await receiver.wait_for(4, timeout=30)
    assert proc.proc is not None
    assert proc.proc.poll() is None
    assert (await asyncio.to_thread(proc.get, "/livez"))[0] == 200


async def _imap_status(proc: SidecarProcess, status: str) -> bool:
    return bool((await _health(proc))["services"]["imap"]["status"] == status)


async def test_a_black_hole_imap_server_times_out_and_the_poller_keeps_cycling_and_stays_live(
    blackhole: BlackHole, receiver: Receiver, sidecar_process: Start
) -> None:
    env = {"IMAP_HOST": "127.0.0.1", "IMAP_PORT": str(blackhole.port), "IMAP_USERNAME": "u",
           "IMAP_PASSWORD": "p", "IMAP_TLS": "none", "IMAP_POLL_INTERVAL": "0.5",
           "IMAP_TIMEOUT": "1", "WEBHOOK_URL": receiver.url,
           "OTEL_SDK_DISABLED": "true"}  # fmt: skip
    proc = await _start(sidecar_process, env)
    await _until("a cycle failed", lambda: _poller_error(proc), timeout=15)
    first = _box(await _health(proc))["last_check"]
    await asyncio.sleep(4)
    health = await _health(proc)
    box = _box(health)
    assert box["last_check"] > first
    assert "timeout" in box["error"]
    assert box["last_success"] is None
    assert health["services"]["imap"]["status"] == "error"
    assert (await asyncio.to_thread(proc.get, "/livez"))[0] == 200
    events = proc.log_events()
    failed = [e for e in events if e.get("event") == "poller.cycle_failed"]
    assert len(failed) >= 2
    assert all(e.get("error_type") == "timeout" for e in failed)
    # The first cycle starts right after the lease is won and gives up at IMAP_TIMEOUT (1 s).
    (won,) = [e for e in events if e.get("event") == "poller.leader"]
    waited = _at(failed[0]) - _at(won)
    assert waited <= 1.0 + 1.0, f"the first cycle failed {waited:.2f}s after it began"


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


async def _poller_error(proc: SidecarProcess) -> bool:
    return bool(_box(await _health(proc)).get("error"))


async def test_500_then_200_is_retried_and_400_is_dead_lettered_and_health_shows_the_ratio(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    receiver.answers = [500, 200, 400]
    dovecot.append_many("alice", [hostile.make_message(message_id=f"<ratio-{i}@e2e>")
                                  for i in range(2)])  # fmt: skip
    # One message at a time, so the receiver's answers pair with messages in UID order.
    config = _FAST.replace("[imap]\n", "[imap]\nconcurrency = 1\n")
    proc = await _start(sidecar_process, _env(dovecot, receiver), config)
    requests = await receiver.wait_for(3, timeout=30)
    await _until("watermark passes the dead-lettered mail", lambda: _last_uid(proc, 2), timeout=10)
    keys = [r.headers["Idempotency-Key"] for r in requests]
    assert keys[0] == keys[1] != keys[2]

    async def ratio() -> float | None:
        value = (await _health(proc))["metrics"]["error_rate_24h"]
        return float(value) if value else None

    assert await _until("error_rate_24h", ratio, timeout=10) == 0.5
    last = (await _health(proc))["metrics"]["last_webhook"]
    assert (last["outcome"], last["status_code"]) == ("dead_lettered", 400)
    dead = [e for e in proc.log_events() if e.get("event") == "email.dead_lettered"]
    assert len(dead) == 1
    assert "HTTP 400" in dead[0]["reason"]
    await asyncio.sleep(1.5)
    assert len(receiver.requests) == 3


async def test_only_with_links_sends_webhooks_for_mail_with_links_and_passes_the_rest(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    dovecot.append_many("alice", [
        hostile.make_message(message_id="<l1@e2e>", links=[hostile.DROPBOX_URL]),
        hostile.make_message(message_id="<n1@e2e>"),
        hostile.make_message(message_id="<l2@e2e>", links=[SWISS_URL]),
        hostile.make_message(message_id="<n2@e2e>", text=None, html="<p>hi</p>"),
    ])  # fmt: skip
    proc = await _start(sidecar_process, _env(dovecot, receiver, WEBHOOK_ONLY_WITH_LINKS="true"))
    await _until("watermark at the last UID", lambda: _last_uid(proc, 4), timeout=30)
    await asyncio.sleep(1.0)
    assert sorted(r.json["message_id"] for r in receiver.requests) == ["<l1@e2e>", "<l2@e2e>"]


async def test_links_in_later_and_forwarded_parts_reach_the_app_in_delivery_links(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    expected = {
        "<forwarded@hostile.example>": [("wetransfer", hostile.WETRANSFER_URL)],
        "<apple-mail@hostile.example>": [("swisstransfer", hostile.SWISSTRANSFER_URL)],
        "<linked-parts@hostile.example>": [("wetransfer", hostile.part_link(i)) for i in range(50)],
    }
    mails = [hostile.forwarded(), hostile.apple_mail(), hostile.many_parts(20_000, linked=True)]
    dovecot.append_many("alice", mails)
    await _start(sidecar_process, _env(dovecot, receiver))
    await receiver.wait_for(3, timeout=60)
    links = {
        r.json["message_id"]: [(d["provider"], d["url"]) for d in r.json["delivery_links"]]
        for r in receiver.requests
    }
    assert links == expected


class _PeakRss:
    """Samples a process's RSS every 10 ms in a thread; peak is the highest value seen."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.01)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("telemetry", ["off", "exported"])
async def test_hostile_mail_keeps_peak_rss_within_50mb_of_idle_and_each_message_has_an_outcome(
    dovecot: Dovecot,
    receiver: Receiver,
    sidecar_process: Start,
    request: pytest.FixtureRequest,
    telemetry: str,
) -> None:
    env = _env(dovecot, receiver)
    if telemetry == "exported":
        # Spans, log records and their export queues count against the same bound.
        stack: TelemetryStack = request.getfixturevalue("telemetry_stack")
        env.update(OTEL_SDK_DISABLED="false", OTEL_SERVICE_NAME="hostile-e2e",
                   OTEL_EXPORTER_OTLP_ENDPOINT=stack.otlp_http_endpoint)  # fmt: skip
    proc = await _start(sidecar_process, env)
    assert proc.proc is not None
    await _until("first empty cycle", lambda: _last_uid_is_known(proc), timeout=15)
    await asyncio.sleep(2)
    idle = psutil.Process(proc.proc.pid).memory_info().rss
    hostiles = [hostile.html_bomb(), hostile.many_parts(), hostile.invalid_utf8_headers(),
                hostile.nesting_bomb(), hostile.many_links()]  # fmt: skip
    with _PeakRss(proc.proc.pid) as rss:
        dovecot.append_many("alice", hostiles)
        await _until("every hostile mail has an outcome", lambda: _last_uid(proc, 5), timeout=60)
    assert proc.proc.poll() is None
    outcomes = [e for e in proc.log_events() if e.get("event") == "webhook.delivery"]
    dead = [e for e in proc.log_events() if e.get("event") == "email.dead_lettered"]
    assert len(outcomes) + len(dead) >= 5
    assert all(e["reason"] for e in dead)
    growth_mb = (rss.peak - idle) / 2**20
    assert growth_mb <= 50, f"peak RSS {rss.peak / 2**20:.1f} MB, idle {idle / 2**20:.1f} MB"


async def _last_uid_is_known(proc: SidecarProcess) -> bool:
    return _box(await _health(proc))["watermark"] is not None


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


@pytest.mark.timeout(120)
async def test_jaeger_holds_a_poll_trace_per_cycle_and_one_linked_email_trace_per_email(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, telemetry_stack: TelemetryStack
) -> None:
    service = "mail-in-e2e"
    env = _env(dovecot, receiver, OTEL_SDK_DISABLED="false", OTEL_SERVICE_NAME=service,
               OTEL_EXPORTER_OTLP_ENDPOINT=telemetry_stack.otlp_http_endpoint,
               OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf", OTEL_BSP_SCHEDULE_DELAY="200",
               IMAP_POLL_INTERVAL="1")  # fmt: skip
    dovecot.append_many("alice", [hostile.make_message(message_id=f"<j-{i}@e2e>",
                                                       links=[hostile.DROPBOX_URL])
                                  for i in range(3)])  # fmt: skip
    proc = await _start(sidecar_process, env)
    await receiver.wait_for(3, timeout=30)
    await asyncio.sleep(2.5)
    await asyncio.to_thread(proc.terminate)

    def traces() -> list[dict[str, Any]]:
        found = telemetry_stack.traces(service, limit=200)
        roots = [s["operationName"] for t in found for s in t["spans"]
                 if not any(r["refType"] == "CHILD_OF"
                            for r in s.get("references", []))]  # fmt: skip
        return found if roots.count("email.process") >= 3 and "imap.poll" in roots else []

    found = await _until("traces in Jaeger", lambda: asyncio.to_thread(traces), timeout=30,
                         every=0.5)  # fmt: skip
    polls: dict[str, dict[str, Any]] = {}
    emails: list[list[dict[str, Any]]] = []
    for trace in found:
        names = [s["operationName"] for s in trace["spans"]]
        if "imap.poll" in names:
            (poll,) = [s for s in trace["spans"] if s["operationName"] == "imap.poll"]
            assert not [s for s in trace["spans"] if s["operationName"] == "email.process"]
            polls[poll["spanID"]] = poll
        if "email.process" in names:
            emails.append(trace["spans"])
    # One trace per cycle: several cycles ran (at least the one that found mail and one after).
    assert len(polls) >= 2
    assert len(emails) == 3
    for spans in emails:
        by_name = {s["operationName"]: s for s in spans}
        assert {"email.process", "email.parse", "webhook.deliver", "POST"} <= set(by_name)
        root = by_name["email.process"]
        parent = {s["spanID"]: s for s in spans}

        def parent_name(span: dict[str, Any], spans_by_id: dict[str, Any] = parent) -> str:
            refs = [r for r in span["references"] if r["refType"] == "CHILD_OF"]
            return str(spans_by_id[refs[0]["spanID"]]["operationName"])

        assert parent_name(by_name["email.parse"]) == "email.process"
        assert parent_name(by_name["webhook.deliver"]) == "email.process"
        assert parent_name(by_name["POST"]) == "webhook.deliver"
        linked = [r for r in root["references"] if r["refType"] == "FOLLOWS_FROM"]
        assert len(linked) == 1
        assert linked[0]["spanID"] in polls
        assert _tags(polls[linked[0]["spanID"]])["imap.messages"] >= 1
