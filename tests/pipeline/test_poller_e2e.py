"""Pollers across real `signal-sidecar run` processes: folder names, leases after a crash, fair
share between replicas, on real Dovecot, Redis, SQLite and a receiver."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import make_message
from tests.support.sidecar import SidecarProcess

Start = Callable[..., SidecarProcess]

_CONFIG = """\
[imap]
timeout = "3s"
lease_ttl = "{ttl}"
[webhook]
backoff_initial = "50ms"
retry_budget = "2s"
[health]
interval = "500ms"
"""


def _env(dovecot: Dovecot, receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": "0.5",
        "WEBHOOK_URL": receiver.url + "/hook",
        "OTEL_SDK_DISABLED": "true",
        **extra,
    }


async def _start(start: Start, env: dict[str, str], config: str, **kw: Any) -> SidecarProcess:
    # Blocking start runs in a thread so the receiver in this loop can answer meanwhile.
    return await asyncio.to_thread(start, env=env, config=config, **kw)


async def _poller(proc: SidecarProcess) -> dict[str, Any]:
    _, body = await asyncio.to_thread(proc.get_json, "/health")
    return dict(body["services"]["background_tasks"]["imap_poller"])


async def _leads(proc: SidecarProcess, mailbox: str = "default") -> bool:
    return bool((await _poller(proc)).get("mailboxes", {}).get(mailbox, {}).get("leader"))


async def _until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)


def _events(proc: SidecarProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in proc.log_events() if e.get("event") == name]


async def test_mail_in_a_folder_named_pieces_is_delivered(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    dovecot.create_folder("alice", "Pi\u00e8ces")
    dovecot.save("alice", make_message(message_id="<pieces@e2e>"), "Pi\u00e8ces")
    env = _env(dovecot, receiver, IMAP_FOLDER="Pi\u00e8ces")
    proc = await _start(sidecar_process, env, _CONFIG.format(ttl="10s"))
    (request,) = await receiver.wait_for(1, timeout=30)
    assert request.json["message_id"] == "<pieces@e2e>"
    assert (await _poller(proc))["mailboxes"]["default"]["status"] == "ok"


async def test_a_restart_after_sigkill_on_the_embedded_store_polls_at_once(
    dovecot: Dovecot, receiver: Receiver, sidecar_process: Start, tmp_path: Path
) -> None:
    # Both processes use one data directory, as a container restarted on its volume does.
    env = _env(dovecot, receiver, SIDECAR_DATA_DIR=str(tmp_path / "data"))
    config = _CONFIG.format(ttl="60s")
    first = await _start(sidecar_process, env, config, name="first")
    await _until("the first process leads", lambda: _leads(first), timeout=15)
    await asyncio.to_thread(first.kill)
    dovecot.append("alice", make_message(message_id="<after-crash@e2e>"))
    second = await _start(sidecar_process, env, config, name="second")
    live = time.monotonic()
    await receiver.wait_for(1, timeout=15)
    waited = time.monotonic() - live
    # The dead process's lease still had about 60 s to run.
    assert waited < 10, f"mail delivered {waited:.1f}s after the restart"
    (taken,) = _events(second, "poller.lease_taken_over")
    assert "embedded store" in taken["reason"]


async def test_a_live_replica_on_the_same_host_keeps_its_lease_and_a_killed_one_is_taken_at_once(
    dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer, sidecar_process: Start
) -> None:
    env = _env(dovecot, receiver, REDIS_URL=redis_server.url)
    config = _CONFIG.format(ttl="30s")
    leader = await _start(sidecar_process, env, config, name="a")
    await _until("the first replica leads", lambda: _leads(leader), timeout=15)
    holder = (await _poller(leader))["replica"]
    standby = await _start(sidecar_process, env, config, name="b")

    async def waits() -> bool:
        return bool((await _poller(standby)).get("mailboxes", {}).get("default", {}).get(
            "waiting_for"))  # fmt: skip

    await _until("the second replica waits", waits, timeout=10)
    # Same hostname, same boot, same pid namespace: only the live pid tells them apart.
    for _ in range(12):
        box = (await _poller(standby))["mailboxes"]["default"]
        assert (box["leader"], box["status"]) == (False, "standby")
        assert box["waiting_for"]["holder"] == holder
        until = datetime.fromisoformat(box["waiting_for"]["until"]).timestamp()
        assert time.time() < until <= time.time() + 31
        assert await _leads(leader)
        await asyncio.sleep(0.25)
    await asyncio.to_thread(leader.kill)
    killed = time.monotonic()
    await _until("the standby leads", lambda: _leads(standby), timeout=20, every=0.05)
    took = time.monotonic() - killed
    assert took < 5, f"took over after {took:.1f}s of a 30 s lease"
    dovecot.append("alice", make_message(message_id="<after-takeover@e2e>"))
    (request,) = await receiver.wait_for(1, timeout=15)
    assert request.json["message_id"] == "<after-takeover@e2e>"
    (taken,) = _events(standby, "poller.lease_taken_over")
    assert taken["previous_holder"] == holder
    assert "has exited" in taken["reason"]


async def test_a_restarted_pod_takes_its_lease_back_at_once_while_another_pod_waits(
    dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer, sidecar_process: Start
) -> None:
    config = _CONFIG.format(ttl="30s")

    def pod(name: str) -> dict[str, str]:
        return _env(dovecot, receiver, REDIS_URL=redis_server.url, K8S_POD_NAME=name,
                    K8S_NAMESPACE_NAME="shop")  # fmt: skip

    first = await _start(sidecar_process, pod("web-a"), config, name="a")
    await _until("web-a leads", lambda: _leads(first), timeout=15)
    other = await _start(sidecar_process, pod("web-b"), config, name="b")

    async def waits_for_web_a() -> bool:
        box = (await _poller(other)).get("mailboxes", {}).get("default", {})
        return str((box.get("waiting_for") or {}).get("holder", "")).startswith("web-a-")

    await _until("web-b waits for web-a", waits_for_web_a, timeout=10)
    await asyncio.to_thread(first.kill)
    restarted = await _start(sidecar_process, pod("web-a"), config, name="a")
    live = time.monotonic()
    await _until("web-a leads again", lambda: _leads(restarted), timeout=20, every=0.05)
    assert time.monotonic() - live < 5
    assert not await _leads(other)
    assert _events(other, "poller.leader") == []
    (taken,) = _events(restarted, "poller.lease_taken_over")
    assert "same pod 'web-a'" in taken["reason"]


_TWO_MAILBOXES = """\
[imap]
timeout = "3s"
lease_ttl = "5s"
[webhook]
backoff_initial = "50ms"
retry_budget = "2s"
[health]
interval = "500ms"
[[mailboxes]]
name = "alice"
host = "127.0.0.1"
port = {port}
username = "alice"
password = "{alice}"
tls = "none"
poll_interval = "500ms"
[[mailboxes]]
name = "bob"
host = "127.0.0.1"
port = {port}
username = "bob"
password = "{bob}"
tls = "none"
poll_interval = "500ms"
"""


async def test_two_replicas_on_two_mailboxes_end_up_leading_one_each_without_loss_or_repeat(
    dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer, sidecar_process: Start
) -> None:
    config = _TWO_MAILBOXES.format(port=dovecot.port, **dovecot.users)
    env = {"REDIS_URL": redis_server.url, "WEBHOOK_URL": receiver.url + "/hook",
           "OTEL_SDK_DISABLED": "true"}  # fmt: skip
    first = await _start(sidecar_process, env, config, name="a")

    async def leaders() -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        a, b = await asyncio.gather(_poller(first), _poller(second))
        return _leading(a), _leading(b)

    await _until("the first replica leads both", lambda: _both(first), timeout=15)
    sent: list[str] = []

    async def mail_keeps_arriving() -> None:
        for index in range(40):
            user = ("alice", "bob")[index % 2]
            message_id = f"<share-{index}@e2e>"
            await asyncio.to_thread(dovecot.append, user, make_message(message_id=message_id))
            sent.append(message_id)
            await asyncio.sleep(0.15)

    arriving = asyncio.create_task(mail_keeps_arriving())
    second = await _start(sidecar_process, env, config, name="b")
    live = time.monotonic()

    async def one_each() -> bool:
        a, b = await leaders()
        return sum(a) == 1 and sum(b) == 1 and a != b

    await _until("each replica leads one mailbox", one_each, timeout=15, every=0.05)
    balanced = time.monotonic() - live
    settled = await leaders()
    # No flapping: for a whole lease TTL nobody gives up or takes a mailbox.
    for _ in range(20):
        await asyncio.sleep(0.25)
        assert await leaders() == settled
    await arriving
    await receiver.wait_for(len(sent), timeout=30)
    await asyncio.sleep(1.5)
    delivered = Counter(r.json["message_id"] for r in receiver.requests)
    assert set(delivered) == set(sent)
    assert [m for m, n in delivered.items() if n > 1] == []
    (handed,) = _events(first, "poller.lease_handed_back")
    assert handed["share"] == 1
    # Within one lease TTL (5 s) of the second replica being live.
    assert balanced <= 5, f"balanced {balanced:.1f}s after the second replica started"


def _leading(poller: dict[str, Any]) -> tuple[bool, ...]:
    # Until its pipeline has started, a replica lists no mailbox yet.
    boxes = poller.get("mailboxes", {})
    return tuple(bool(boxes.get(m, {}).get("leader")) for m in ("alice", "bob"))


async def _both(proc: SidecarProcess) -> bool:
    return all(_leading(await _poller(proc)))
