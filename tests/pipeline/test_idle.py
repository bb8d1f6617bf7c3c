"""IMAP IDLE against real Dovecot: push delivery, keepalive, re-issue, fallback, lost leases."""

# The poller suite's pipeline fixtures are imported, not copied: their names are parameters.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog

from agent.config import Duration, ImapSettings, MailboxSettings
from agent.pipeline.idle import IdleSession
from agent.pipeline.imap import IdleWake, ImapClient
from agent.pipeline.poller import MailboxPoller
from agent.telemetry.setup import Telemetry
from tests.fixtures.blackhole import TcpProxy
from tests.fixtures.dovecot import Dovecot, deliver_to_maildir
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import make_message

# The poller suite's pipeline fixtures, shared rather than copied.
from tests.pipeline.test_poller import Pipeline, make_pipeline, pipeline  # noqa: F401
from tests.support.telemetry import telemetry_for_tests

MakePipeline = Callable[..., Awaitable[Pipeline]]


def _mail(n: int) -> bytes:
    return make_message(subject=f"idle {n}", message_id=f"<idle-{n}@test.example>")


def _keys(receiver: Receiver) -> Counter[str]:
    return Counter(r.headers["Idempotency-Key"] for r in receiver.requests)


def _subjects(receiver: Receiver) -> set[str]:
    return {r.json["subject"] for r in receiver.requests}


async def _until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> float:
    """Waits until check() holds; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@asynccontextmanager
async def _running(poller: MailboxPoller) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


def _slow_poll(mailbox: MailboxSettings, seconds: float = 300.0) -> MailboxSettings:
    return dataclasses.replace(mailbox, poll_interval=Duration(seconds))


def _mode_points(pipeline: Pipeline) -> dict[str, float]:
    pipeline.telemetry.force_flush(2.0)
    data = pipeline.metrics.get_metrics_data()
    assert data is not None
    return {
        str(dict(point.attributes or {})["imap.mode"]): float(point.value)  # type: ignore[union-attr]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "imap.mailbox.mode"
        for point in metric.data.data_points
    }


async def test_with_a_300s_poll_interval_an_appended_mail_reaches_the_webhook_within_2s(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    poller = pipeline.poller(_slow_poll(dovecot.settings("alice")))
    async with _running(poller):
        await _until("the leader idles", lambda: poller.mode == "idle")
        started = time.monotonic()
        dovecot.append("alice", _mail(1))
        await receiver.wait_for(1, timeout=10)
        took = time.monotonic() - started
        status = poller.status()
        points = _mode_points(pipeline)
    assert took < 2.0
    polls = [s for s in pipeline.spans.get_finished_spans() if s.name == "imap.poll"]
    woken = [s for s in polls if (s.attributes or {}).get("imap.trigger") == "idle"]
    assert len(woken) == 1
    (wakeup,) = [s for s in pipeline.spans.get_finished_spans() if s.name == "imap.idle.wakeup"]
    assert wakeup.parent is not None
    assert wakeup.parent.span_id == woken[0].context.span_id
    assert any("EXISTS" in r for r in (wakeup.attributes or {})["imap.idle.responses"])  # type: ignore[union-attr]
    assert (status["mode"], status["mode_reason"]) == ("idle", None)
    assert points == {"idle": 1.0, "poll": 0.0}


async def test_the_delivery_lag_from_internaldate_to_the_webhook_is_recorded(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    poller = pipeline.poller(_slow_poll(dovecot.settings("alice")))
    async with _running(poller):
        await _until("the leader idles", lambda: poller.mode == "idle")
        dovecot.append("alice", _mail(1))
        await receiver.wait_for(1, timeout=10)
    pipeline.telemetry.force_flush(2.0)
    data = pipeline.metrics.get_metrics_data()
    assert data is not None
    (point,) = [point for rm in data.resource_metrics for sm in rm.scope_metrics
                for metric in sm.metrics if metric.name == "email.delivery.lag"
                for point in metric.data.data_points]  # type: ignore[union-attr]  # fmt: skip
    assert point.count == 1  # type: ignore[union-attr]
    # INTERNALDATE has whole seconds: the lag of an instant delivery is under 2 s, never less
    # than 0.
    assert 0.0 <= point.sum < 2.0  # type: ignore[union-attr]
    assert dict(point.attributes or {}) == {"imap.mailbox": poller.mailbox.name}


async def test_an_idling_leader_keeps_a_lease_far_shorter_than_its_poll_interval(
    make_pipeline: MakePipeline, dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer
) -> None:
    pipeline = await make_pipeline(redis_url=redis_server.url, imap={"lease_ttl": "1500ms"})
    poller = pipeline.poller(_slow_poll(dovecot.settings("alice")))
    with structlog.testing.capture_logs() as logs:
        async with _running(poller):
            await _until("the leader idles", lambda: poller.mode == "idle")
            first = await pipeline.store.lease_holder(poller.lease_name)
            await asyncio.sleep(4.5)  # three lease TTLs in one rest
            held = await pipeline.store.lease_holder(poller.lease_name)
            leads = poller.leader
            dovecot.append("alice", _mail(1))
            await receiver.wait_for(1, timeout=10)
    assert first is not None
    assert held is not None
    assert (held.holder, held.token) == (first.holder, first.token)
    assert held.expires_at > first.expires_at + 3.0
    assert leads
    assert not [e for e in logs if e["event"] == "poller.lease_lost"]
    assert len(_polls(pipeline)) == 2  # the first cycle and the one IDLE woke


async def test_a_server_without_idle_is_polled_and_the_poller_says_so(
    pipeline: Pipeline, dovecot_without_idle: Dovecot, receiver: Receiver
) -> None:
    mailbox = _slow_poll(dovecot_without_idle.settings("alice"), 0.5)
    with structlog.testing.capture_logs() as logs:
        poller = pipeline.poller(mailbox)
        async with _running(poller):
            await _until("a first cycle", lambda: poller.last_success is not None)
            await _until("the mode is decided", lambda: bool(poller.mode_reason))
            dovecot_without_idle.append("alice", _mail(1))
            await receiver.wait_for(1, timeout=10)
            status = poller.status()
            points = _mode_points(pipeline)
    assert status["mode"] == "poll"
    assert status["mode_reason"] == "the server does not offer IDLE"
    assert points == {"idle": 0.0, "poll": 1.0}
    (logged,) = [e for e in logs if e["event"] == "imap.mode"]
    assert (logged["mode"], logged["reason"]) == ("poll", "the server does not offer IDLE")
    assert not [s for s in pipeline.spans.get_finished_spans() if s.name == "imap.idle"]


async def test_with_imap_idle_off_the_poller_polls_and_never_sends_idle(
    make_pipeline: MakePipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    pipeline = await make_pipeline(imap={"idle": False})
    poller = pipeline.poller(_slow_poll(dovecot.settings("alice"), 0.3))
    async with _running(poller):
        await _until("two cycles", lambda: len(_polls(pipeline)) >= 2)
        dovecot.append("alice", _mail(1))
        await receiver.wait_for(1, timeout=10)
        status = poller.status()
    assert (status["mode"], status["mode_reason"]) == ("poll", "imap.idle is off")
    assert not [s for s in pipeline.spans.get_finished_spans() if s.name == "imap.idle"]


def _polls(pipeline: Pipeline) -> list[Any]:
    return [s for s in pipeline.spans.get_finished_spans() if s.name == "imap.poll"]


async def test_dovecot_restarted_while_idling_reconnects_catches_up_and_delivers_each_mail_once(
    make_pipeline: MakePipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    pipeline = await make_pipeline(imap={"reconnect_max_backoff": "1s"})
    poller = pipeline.poller(_slow_poll(dovecot.settings("alice")))
    async with _running(poller):
        await _until("the leader idles", lambda: poller.mode == "idle")
        dovecot.append("alice", _mail(1))
        await receiver.wait_for(1, timeout=10)
        await _until("idling again", lambda: poller.next_check is not None)
        dovecot.stop()
        # Mail that arrives while the server is down is delivered without IMAP.
        for n in (2, 3):
            deliver_to_maildir(dovecot, "alice", _mail(n))
        await asyncio.sleep(1.0)
        dovecot.start()
        dovecot.append_many("alice", [_mail(4), _mail(5)])
        await receiver.wait_for(5, timeout=30)
        await asyncio.sleep(1.0)  # room for a duplicate to show up
    assert _subjects(receiver) == {f"idle {n}" for n in range(1, 6)}
    assert set(_keys(receiver).values()) == {1}
    # Caught up by the reconnect, not by the 300 s sweep.
    assert poller.failures == 0


async def test_a_black_holed_idle_is_found_dead_within_the_keepalive_budget_and_delivery_resumes(
    make_pipeline: MakePipeline,
    dovecot: Dovecot,
    receiver: Receiver,
    tcp_proxy: Callable[[int], TcpProxy],
) -> None:
    pipeline = await make_pipeline(
        imap={"idle_keepalive": "2s", "timeout": "2s", "reconnect_max_backoff": "1s"}
    )
    proxy = tcp_proxy(dovecot.port)
    mailbox = dataclasses.replace(_slow_poll(dovecot.settings("alice")), port=proxy.port)
    with structlog.testing.capture_logs() as logs:
        poller = pipeline.poller(mailbox)
        async with _running(poller):
            await _until("the leader idles", lambda: poller.mode == "idle")
            await asyncio.sleep(0.3)
            proxy.black_hole()
            found = await _until(
                "the dead IDLE is found",
                lambda: any(e["event"] == "imap.idle_failed" for e in logs),
                timeout=15,
            )
            proxy.forward()
            dovecot.append("alice", _mail(1))
            await receiver.wait_for(1, timeout=20)
    # Silent for the 2 s budget, then DONE + NOOP unanswered for imap.timeout (2 s) + slack.
    assert found <= 2.0 + 2.0 + 1.5
    (failed,) = [e for e in logs if e["event"] == "imap.idle_failed"]
    assert failed["error_type"] == "timeout"
    assert _subjects(receiver) == {"idle 1"}


@pytest.fixture
def wake() -> Iterator[IdleWake]:
    """A wake flag for IDLE waits, released after the test."""
    flag = IdleWake()
    yield flag
    flag.close()


def _client(dovecot: Dovecot, telemetry: Telemetry) -> ImapClient:
    tracer = telemetry.tracer("test")
    return ImapClient(
        dovecot.settings("alice"), timeout=2.0, tracer=tracer, instruments=telemetry.instruments
    )


async def test_an_idle_that_keeps_dying_falls_back_to_polling_and_says_so(
    make_pipeline: MakePipeline,
    dovecot: Dovecot,
    receiver: Receiver,
    tcp_proxy: Callable[[int], TcpProxy],
) -> None:
    pipeline = await make_pipeline(imap={"idle_keepalive": "2s", "timeout": "1s",
                                         "reconnect_max_backoff": "500ms",
                                         "idle_max_failures": 2})  # fmt: skip
    proxy = tcp_proxy(dovecot.port)
    proxy.forget_after = 1.0  # a NAT that forgets a connection silent for a second
    mailbox = dataclasses.replace(_slow_poll(dovecot.settings("alice"), 4.0), port=proxy.port)
    with structlog.testing.capture_logs() as logs:
        poller = pipeline.poller(mailbox)
        async with _running(poller):
            fell_back = lambda: poller.mode_reason.startswith("IDLE failed")  # noqa: E731
            await _until("the leader falls back to polling", fell_back, timeout=40)
            status = poller.status()
            points = _mode_points(pipeline)
            proxy.forget_after = None
            dovecot.append("alice", _mail(1))
            await receiver.wait_for(1, timeout=30)
    assert status["mode"] == "poll"
    assert status["mode_reason"].startswith("IDLE failed 2 times in a row (timeout)")
    assert points == {"idle": 0.0, "poll": 1.0}
    failed = [e for e in logs if e["event"] == "imap.idle_failed"]
    assert [e["consecutive_failures"] for e in failed[:2]] == [1, 2]
    modes = [(e["mode"], e["reason"]) for e in logs if e["event"] == "imap.mode"]
    assert modes[0] == ("idle", None)
    assert modes[-1] == ("poll", status["mode_reason"])


async def test_a_live_but_silent_idle_passes_its_keepalive_checks_and_still_wakes_on_mail(
    dovecot: Dovecot, wake: IdleWake
) -> None:
    telemetry, spans, _reader, _logs = telemetry_for_tests()
    imap = ImapSettings(
        timeout=Duration(2.0), idle_keepalive=Duration(1.0), idle_renew=Duration(60.0)
    )
    client = _client(dovecot, telemetry)
    await client.connect()
    await client.login()
    await client.select()
    idle = IdleSession(client, imap)
    await idle.start()
    try:
        assert await idle.wait(5.6, wake) is None
        assert idle.keepalive_checks >= 2
        dovecot.append("alice", _mail(1))
        woke = await idle.wait(5.0, wake)
        assert woke is not None
        assert woke.new_mail
    finally:
        await idle.end()
        await client.logout()
        telemetry.shutdown(2.0)
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("imap.noop") == idle.keepalive_checks


async def test_idle_is_issued_again_after_idle_renew_without_losing_a_wake_up(
    dovecot: Dovecot, wake: IdleWake
) -> None:
    telemetry, spans, _reader, _logs = telemetry_for_tests()
    imap = ImapSettings(idle_keepalive=Duration(60.0), idle_renew=Duration(1.0))
    client = _client(dovecot, telemetry)
    await client.connect()
    await client.login()
    await client.select()
    idle = IdleSession(client, imap)
    await idle.start()
    try:
        assert await idle.wait(3.5, wake) is None
        dovecot.append("alice", _mail(1))
        woke = await idle.wait(5.0, wake)
    finally:
        await idle.end()
        await client.logout()
        telemetry.shutdown(2.0)
    assert idle.reissued >= 3
    assert woke is not None
    assert woke.new_mail
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("imap.idle") >= 4
    assert names.count("imap.done") == names.count("imap.idle")
    assert "imap.noop" not in names


async def test_setting_the_wake_flag_ends_an_idle_wait_at_once(
    dovecot: Dovecot, wake: IdleWake
) -> None:
    telemetry, _spans, _reader, _logs = telemetry_for_tests()
    client = _client(dovecot, telemetry)
    await client.connect()
    await client.login()
    await client.select()
    idle = IdleSession(client, ImapSettings())
    await idle.start()
    asyncio.get_running_loop().call_later(0.2, wake.set)
    started = time.monotonic()
    assert await idle.wait(60.0, wake) is None
    took = time.monotonic() - started
    await idle.end()
    await client.noop()  # the connection takes commands again
    await client.logout()
    telemetry.shutdown(2.0)
    assert took < 1.0


@pytest.fixture
def descriptors_above_1024() -> Iterator[None]:
    """Holds open descriptors until the next one a socket gets is above select()'s FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1200
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"RLIMIT_NOFILE hard {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("descriptors_above_1024")
async def test_an_idle_wait_on_a_descriptor_above_1024_still_wakes_on_new_mail(
    dovecot: Dovecot, wake: IdleWake
) -> None:
    telemetry, _spans, _reader, _logs = telemetry_for_tests()
    client = _client(dovecot, telemetry)
    await client.connect()
    await client.login()
    await client.select()
    idle = IdleSession(client, ImapSettings())
    await idle.start()
    try:
        dovecot.append("alice", _mail(90))
        woke = await idle.wait(10.0, wake)
    finally:
        await idle.end()
        await client.logout()
        telemetry.shutdown(2.0)
    assert woke is not None
    assert woke.new_mail


async def test_two_replicas_on_redis_only_the_lease_holder_idles_and_a_lost_lease_ends_idle(
    make_pipeline: MakePipeline, dovecot: Dovecot, receiver: Receiver, redis_server: RedisServer
) -> None:
    first = await make_pipeline(redis_url=redis_server.url, imap={"lease_ttl": "3s"})
    second = await make_pipeline(redis_url=redis_server.url, imap={"lease_ttl": "3s"})
    mailbox = _slow_poll(dovecot.settings("alice"))
    a = first.poller(mailbox, holder="replica-a")
    async with _running(a):
        await _until("a idles", lambda: a.mode == "idle" and a.leader)
        b = second.poller(mailbox, holder="replica-b")
        async with _running(b):
            await asyncio.sleep(1.5)
            assert not b.leader
            assert b.status()["mode"] is None
            assert not [s for s in second.spans.get_finished_spans() if s.name == "imap.idle"]
            # Someone else takes the lease (as an operator's forced take-over would).
            lease = await first.store.lease_holder(a.lease_name)
            assert lease is not None
            taken_at = time.time_ns()
            assert await first.store.take_over_lease(lease, "replica-c", 30.0) is not None
            left = await _until("a sends DONE", lambda: bool(_done_after(first, taken_at)), 5)
    assert left <= 3.0 / 3 + 1.0
    assert not a.leader


def _done_after(pipeline: Pipeline, after_ns: int) -> list[Any]:
    return [s for s in pipeline.spans.get_finished_spans()
            if s.name == "imap.done" and (s.end_time or 0) > after_ns]  # fmt: skip
