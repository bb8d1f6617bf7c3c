"""MailboxPoller against real Dovecot, a real store and receiver: lease, watermark, faults."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import structlog
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import Duration, MailboxSettings, Settings, settings_from_mapping
from agent.pipeline.links import LinkRegistry
from agent.pipeline.poller import LeaseLost, MailboxPoller, fetch_batches
from agent.pipeline.process import EmailProcessor
from agent.pipeline.replicas import ReplicaIdentity, Replicas
from agent.pipeline.webhook import WebhookClient
from agent.store.base import Store, Watermark
from agent.store.local import LocalStore
from agent.store.redis import RedisStore
from agent.telemetry.setup import Telemetry
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import DROPBOX_URL, make_message
from tests.support.telemetry import telemetry_for_tests

_SECTIONS: dict[str, Any] = {
    "imap": {"timeout": "2s", "lease_ttl": "60s", "concurrency": 1, "batch_size": 10},
    "webhook": {"backoff_initial": "10ms", "retry_budget": "1s", "max_attempts": 1},
}


@dataclass
class Pipeline:
    """One mailbox's poller with its processor, webhook client and store, telemetry in memory."""

    settings: Settings
    store: Store
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    session: aiohttp.ClientSession

    def replicas(self, holder: str = "replica-a", *, mailboxes: int = 1) -> Replicas:
        return Replicas(self.store, ReplicaIdentity(holder), mailboxes=mailboxes, interval=1.0,
                        lease_ttl=self.settings.imap.lease_ttl)  # fmt: skip

    def poller(
        self,
        mailbox: MailboxSettings,
        *,
        holder: str = "replica-a",
        replicas: Replicas | None = None,
        clock: Callable[[], float] = time.time,
    ) -> MailboxPoller:
        tracer = self.telemetry.tracer("test")
        webhook = WebhookClient(self.settings.webhook, session=self.session, tracer=tracer,
                                instruments=self.telemetry.instruments, store=self.store,
                                masker=self.telemetry.masker)  # fmt: skip
        processor = EmailProcessor(self.settings, store=self.store, tracer=tracer,
                                   instruments=self.telemetry.instruments, webhook=webhook,
                                   links=LinkRegistry(self.settings.links))  # fmt: skip
        return MailboxPoller(mailbox, self.settings, replicas=replicas or self.replicas(holder),
                             store=self.store,
                             tracer=tracer, instruments=self.telemetry.instruments,
                             processor=processor, clock=clock)  # fmt: skip


@pytest.fixture
async def make_pipeline(
    tmp_path: Path, receiver: Receiver
) -> AsyncIterator[Callable[..., Awaitable[Pipeline]]]:
    """make_pipeline(redis_url="", **sections) -> a Pipeline on SQLite (on Redis with a URL;
    sections merge over the defaults), closed after."""
    opened: list[Pipeline] = []

    async def make(redis_url: str = "", **sections: dict[str, Any]) -> Pipeline:
        merged = {name: {**_SECTIONS.get(name, {}), **sections.get(name, {})}
                  for name in {*_SECTIONS, *sections}}  # fmt: skip
        merged["webhook"].setdefault("url", receiver.url + "/hook")
        settings = settings_from_mapping(merged)
        telemetry, spans, reader, _logs = telemetry_for_tests(settings)
        store: Store = (
            RedisStore(redis_url, timeout=1.0)
            if redis_url
            else LocalStore(tmp_path / f"state-{len(opened)}.sqlite3")
        )
        await store.start()
        built = Pipeline(settings, store, telemetry, spans, reader, aiohttp.ClientSession())
        opened.append(built)
        return built

    yield make
    for built in opened:
        await built.session.close()
        await built.store.close()
        built.telemetry.shutdown(2.0)


@pytest.fixture
async def pipeline(make_pipeline: Callable[..., Awaitable[Pipeline]]) -> Pipeline:
    return await make_pipeline()


def _mails(count: int, start: int = 0) -> list[bytes]:
    return [make_message(subject=f"mail {i}", message_id=f"<poller-{i}@test.example>",
                         links=[DROPBOX_URL] if i % 2 else [])
            for i in range(start, start + count)]  # fmt: skip


def _keys(receiver: Receiver) -> list[str]:
    return [r.headers["Idempotency-Key"] for r in receiver.requests]


async def _lead(poller: MailboxPoller) -> None:
    assert await poller._hold_lease(), "the lease should be free"


async def test_one_cycle_delivers_every_new_message_and_moves_the_watermark_to_the_last_uid(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    dovecot.append_many("alice", _mails(12))
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    assert len(set(_keys(receiver))) == len(receiver.requests) == 12
    mark = await pipeline.store.get_watermark(poller.mailbox.name)
    assert mark == Watermark(dovecot.uidvalidity("alice"), 12)


async def test_a_cycle_fetches_in_batches_bounded_by_bytes_and_asks_sizes_once(
    make_pipeline: Callable[..., Awaitable[Pipeline]], dovecot: Dovecot, receiver: Receiver
) -> None:
    mails = _mails(5)
    # Room for two of these mails per batch, not three.
    pipeline = await make_pipeline(imap={"batch_bytes": max(map(len, mails)) * 5 // 2})
    dovecot.append_many("alice", mails)
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    assert len(receiver.requests) == 5
    fetches = [s.attributes["imap.fetch.items"] for s in pipeline.spans.get_finished_spans()
               if s.name == "imap.fetch" and s.attributes]  # fmt: skip
    assert fetches == ["RFC822.SIZE", "BODY.PEEK[]", "BODY.PEEK[]", "BODY.PEEK[]"]


async def test_mail_in_a_folder_with_a_non_ascii_name_is_delivered(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    folder = "Q&A \U0001f4c1 Pi\u00e8ces"
    # Created and filled by doveadm under its plain name, so Dovecot does its own encoding.
    dovecot.create_folder("alice", folder)
    for raw in _mails(2):
        dovecot.save("alice", raw, folder)
    poller = pipeline.poller(dovecot.settings("alice", folder=folder))
    await _lead(poller)
    await poller.cycle()
    assert poller.last_error == ""
    assert sorted(r.json["subject"] for r in receiver.requests) == ["mail 0", "mail 1"]


async def test_a_second_cycle_without_new_mail_sends_nothing(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    dovecot.append_many("alice", _mails(3))
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    await poller.cycle()
    assert len(receiver.requests) == 3


async def test_watermark_does_not_move_past_a_failed_message(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    dovecot.append_many("alice", _mails(5))
    receiver.answers = [200, 200, 503, 200, 200]
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    mark = await pipeline.store.get_watermark(poller.mailbox.name)
    assert mark is not None
    assert mark.uid == 2


async def test_the_next_cycle_retries_the_failed_message_only_and_then_passes_it(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    dovecot.append_many("alice", _mails(5))
    receiver.answers = [200, 200, 503, 200, 200]
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    await poller.cycle()
    keys = _keys(receiver)
    assert len(keys) == 6
    assert keys[5] == keys[2]
    mark = await pipeline.store.get_watermark(poller.mailbox.name)
    assert mark is not None
    assert mark.uid == 5


async def test_a_message_failing_max_attempts_times_is_dead_lettered_and_passed(
    make_pipeline: Callable[..., Awaitable[Pipeline]], dovecot: Dovecot, receiver: Receiver
) -> None:
    pipeline = await make_pipeline(imap={"max_attempts": 2})
    dovecot.append_many("alice", _mails(1))
    receiver.default = 503
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    first = await pipeline.store.get_watermark(poller.mailbox.name)
    await poller.cycle()
    second = await pipeline.store.get_watermark(poller.mailbox.name)
    log = await pipeline.store.recent_deliveries(10)
    assert (first and first.uid, second and second.uid) == (0, 1)
    dead = [r for r in log if r.outcome == "dead_lettered"]
    assert len(dead) == 1
    assert "gave up after 2 attempts" in dead[0].error


async def test_uidvalidity_change_delivers_only_mail_not_delivered_before(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    old = _mails(4)
    dovecot.append_many("alice", old)
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    dovecot.recreate_folder("alice")
    dovecot.append_many("alice", [*old, *_mails(1, start=100)])
    await poller.cycle()
    subjects = [r.json["subject"] for r in receiver.requests]
    assert sorted(subjects) == ["mail 0", "mail 1", "mail 100", "mail 2", "mail 3"]
    mark = await pipeline.store.get_watermark(poller.mailbox.name)
    assert mark is not None
    assert mark.uidvalidity == dovecot.uidvalidity("alice")


async def test_reprocess_policy_delivers_the_folder_again_after_a_uidvalidity_change(
    make_pipeline: Callable[..., Awaitable[Pipeline]], dovecot: Dovecot, receiver: Receiver
) -> None:
    pipeline = await make_pipeline(imap={"uidvalidity_policy": "reprocess"})
    old = _mails(2)
    dovecot.append_many("alice", old)
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    dovecot.recreate_folder("alice")
    dovecot.append_many("alice", old)
    await poller.cycle()
    assert [r.json["subject"] for r in receiver.requests] == ["mail 0", "mail 1"] * 2
    assert len(set(_keys(receiver))) == 4


async def test_a_poller_whose_lease_was_taken_cannot_move_the_watermark(
    make_pipeline: Callable[..., Awaitable[Pipeline]], dovecot: Dovecot, receiver: Receiver
) -> None:
    pipeline = await make_pipeline(imap={"lease_ttl": "1s"})
    dovecot.append_many("alice", _mails(2))
    old = pipeline.poller(dovecot.settings("alice"), holder="replica-a")
    await _lead(old)
    await asyncio.sleep(1.2)
    new = pipeline.poller(dovecot.settings("alice"), holder="replica-b")
    await _lead(new)
    with pytest.raises(LeaseLost):
        await old.cycle()
    mark = await pipeline.store.get_watermark(old.mailbox.name)
    assert mark is None or mark.uid == 0


async def test_a_replica_takes_no_more_mailboxes_than_its_fair_share(
    pipeline: Pipeline, dovecot: Dovecot
) -> None:
    replicas = pipeline.replicas(mailboxes=2)
    replicas.count = 2
    alice = pipeline.poller(dovecot.settings("alice"), replicas=replicas)
    bob = pipeline.poller(dovecot.settings("bob"), replicas=replicas)
    assert await alice._hold_lease()
    assert not await bob._hold_lease()
    assert bob.status()["standby"] == "fair share: this replica leads 1 of at most 1"
    replicas.count = 1
    assert await bob._hold_lease()


async def test_a_leader_above_its_share_hands_a_lease_back_without_waiting_its_poll_interval(
    make_pipeline: Callable[..., Awaitable[Pipeline]],
    dovecot: Dovecot,
    receiver: Receiver,
    redis_server: RedisServer,
) -> None:
    pipeline = await make_pipeline(redis_url=redis_server.url)
    dovecot.append_many("alice", _mails(3))
    dovecot.append_many("bob", _mails(3, start=10))
    first = pipeline.replicas("replica-a", mailboxes=2)
    await first.beat()
    slow = {"poll_interval": Duration(30.0)}
    pollers = [pipeline.poller(dataclasses.replace(dovecot.settings(user), **slow),
                               replicas=first) for user in ("alice", "bob")]  # fmt: skip
    stop = asyncio.Event()
    tasks = [asyncio.create_task(p.run(stop)) for p in pollers]
    try:
        await _until("replica-a leads both", lambda: all(p.leader for p in pollers))
        await receiver.wait_for(6, timeout=20)
        await _until("both rest until their next cycle", lambda: all(p.next_check for p in pollers))
        await pipeline.replicas("replica-b", mailboxes=2).beat()
        await first.beat()
        await _until("one lease handed back", lambda: sum(p.leader for p in pollers) == 1, 10)
        (handed,) = [p for p in pollers if not p.leader]
        assert handed.status()["standby"] == "handed back: this replica led 2, its share is 1"
        assert await pipeline.store.lease_holder(handed.lease_name) is None
        mark = await pipeline.store.get_watermark(handed.mailbox.name)
        assert mark is not None
        assert mark.uid == 3
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*tasks)
    assert len(receiver.requests) == 6


async def test_a_leader_whose_cycle_hangs_past_its_lease_is_reported_stalled(
    pipeline: Pipeline, dovecot: Dovecot
) -> None:
    """A hung cycle stops renewing its lease (60 s) long before stall_after (300 s) is reached."""
    now = [time.time()]
    mailbox = dataclasses.replace(dovecot.settings("alice"), poll_interval=Duration(1.0))
    poller = pipeline.poller(mailbox, clock=lambda: now[0])
    await _lead(poller)
    assert poller.liveness()[0]
    now[0] += poller.stall_after - 1
    assert poller.liveness()[0]
    now[0] += 2
    ok, why = poller.liveness()
    assert not ok
    assert "no successful cycle" in why
    assert poller.status()["status"] == "stalled"


async def test_imap_stall_after_sets_how_long_a_leader_may_go_without_a_successful_cycle(
    make_pipeline: Callable[..., Awaitable[Pipeline]], dovecot: Dovecot
) -> None:
    pipeline = await make_pipeline(imap={"stall_after": "5s"})
    now = [time.time()]
    mailbox = dataclasses.replace(dovecot.settings("alice"), poll_interval=Duration(1.0))
    poller = pipeline.poller(mailbox, clock=lambda: now[0])
    await _lead(poller)
    now[0] += 4.5
    assert poller.liveness()[0]
    now[0] += 1.0
    assert poller.liveness() == (False, "no successful cycle for 6s")
    assert poller.status()["status"] == "stalled"


async def test_a_silent_imap_server_fails_the_cycle_within_the_imap_timeout(
    pipeline: Pipeline, blackhole: BlackHole
) -> None:
    mailbox = MailboxSettings(name="hole", host="127.0.0.1", port=blackhole.port,
                              username="u", password="p", tls="none")  # fmt: skip
    poller = pipeline.poller(mailbox)
    await _lead(poller)
    started = time.monotonic()
    await poller.cycle()
    elapsed = time.monotonic() - started
    # The configured timeout is 2 s; the asyncio backstop adds a little slack on top.
    assert elapsed < 2.0 + 3.0
    assert "timeout" in poller.last_error
    assert poller.status()["status"] == "error"
    assert poller.liveness()[0]


async def test_the_poller_keeps_attempting_cycles_against_a_silent_server(
    pipeline: Pipeline, blackhole: BlackHole
) -> None:
    mailbox = MailboxSettings(name="hole", host="127.0.0.1", port=blackhole.port, username="u",
                              password="p", tls="none", poll_interval=Duration(0.1))  # fmt: skip
    poller = pipeline.poller(mailbox)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    try:
        async with asyncio.timeout(20):
            while blackhole.accepted < 2:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert poller.last_success is None
    assert "timeout" in poller.last_error


async def _until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def _failed_poll_starts(pipeline: Pipeline, error_type: str) -> list[float]:
    return sorted(s.start_time / 1e9 for s in pipeline.spans.get_finished_spans()
                  if s.name == "imap.poll" and s.start_time is not None and s.attributes
                  and s.attributes.get("error.type") == error_type)  # fmt: skip


def _failed_polls_counted(pipeline: Pipeline, error_type: str) -> int:
    data = pipeline.metrics.get_metrics_data()
    assert data is not None
    return sum(point.count for rm in data.resource_metrics for sm in rm.scope_metrics
               for metric in sm.metrics if metric.name == "imap.poll.duration"
               for point in metric.data.data_points  # type: ignore[union-attr]
               if dict(point.attributes or {}).get("error.type") == error_type)  # fmt: skip


async def test_a_cycle_that_raises_anything_is_a_failed_cycle_logged_counted_and_retried(
    make_pipeline: Callable[..., Awaitable[Pipeline]],
    dovecot: Dovecot,
    receiver: Receiver,
    redis_server: RedisServer,
) -> None:
    pipeline = await make_pipeline(redis_url=redis_server.url)
    mailbox = dataclasses.replace(dovecot.settings("alice"), poll_interval=Duration(0.1))
    # Hostile state in a real Redis: a watermark that no longer reads as numbers.
    raw = redis.Redis.from_url(redis_server.url)
    key = f"sidecar:watermark:{mailbox.name}"
    raw.hset(key, mapping={"uidvalidity": "1", "uid": "not-a-number"})
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        poller = pipeline.poller(mailbox)
        task = asyncio.create_task(poller.run(stop))
        try:
            await _until("five failed cycles", lambda: poller.failures >= 5)
            assert not task.done()
            assert poller.liveness() == (True, "")
            status = poller.status()
            assert status["status"] == "error"
            assert status["error"].startswith("ValueError: ")
            raw.delete(key)
            dovecot.append("alice", _mails(1)[0])
            await receiver.wait_for(1, timeout=20)
            await _until("a successful cycle", lambda: poller.failures == 0)
        finally:
            stop.set()
            async with asyncio.timeout(10):
                await task
    failed = [e for e in logs if e["event"] == "poller.cycle_failed"]
    assert len(failed) >= 5
    assert {e["error_type"] for e in failed} == {"ValueError"}
    assert [e["consecutive_failures"] for e in failed[:5]] == [1, 2, 3, 4, 5]
    assert _failed_polls_counted(pipeline, "ValueError") >= 5
    # Tried again after 0.1, 0.2, 0.4, 0.8 s (+-20 %), not every 0.1 s.
    starts = _failed_poll_starts(pipeline, "ValueError")
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps[3] >= 0.6
    assert gaps[3] > 2 * gaps[0]


async def test_a_poller_task_that_ends_before_shutdown_is_dead_and_fails_liveness(
    pipeline: Pipeline, dovecot: Dovecot
) -> None:
    poller = pipeline.poller(dovecot.settings("alice"))
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    poller.watch(task, stop)
    await _until("the lease is won", lambda: poller.leader)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert poller.liveness() == (False, "poller task ended: cancelled")
    assert poller.status()["status"] == "dead"
    assert not poller.leader


async def test_a_poller_task_ended_by_shutdown_is_not_dead(
    pipeline: Pipeline, dovecot: Dovecot
) -> None:
    poller = pipeline.poller(dovecot.settings("alice"))
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    poller.watch(task, stop)
    await _until("the lease is won", lambda: poller.leader)
    stop.set()
    async with asyncio.timeout(10):
        await task
    assert poller.liveness() == (True, "")
    assert poller.status()["status"] == "standby"


async def test_a_frozen_dovecot_fails_the_cycle_within_the_imap_timeout(
    pipeline: Pipeline, dovecot: Dovecot, receiver: Receiver
) -> None:
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    dovecot.pause()
    try:
        started = time.monotonic()
        await poller.cycle()
        elapsed = time.monotonic() - started
    finally:
        dovecot.resume()
    assert elapsed < 2.0 + 3.0
    assert "timeout" in poller.last_error
    dovecot.append("alice", _mails(1)[0])
    await poller.cycle()
    assert poller.last_error == ""
    assert len(receiver.requests) == 1


async def test_each_cycle_is_one_imap_poll_trace(pipeline: Pipeline, dovecot: Dovecot) -> None:
    dovecot.append_many("alice", _mails(2))
    poller = pipeline.poller(dovecot.settings("alice"))
    await _lead(poller)
    await poller.cycle()
    await poller.cycle()
    polls = [s for s in pipeline.spans.get_finished_spans() if s.name == "imap.poll"]
    assert len(polls) == 2
    assert all(s.parent is None for s in polls)
    assert polls[0].attributes is not None
    assert polls[0].attributes["imap.messages"] == 2


def _batches(sizes: dict[int, int], **kw: int) -> list[list[int]]:
    limits = {"max_count": 50, "max_batch_bytes": 100, "max_message_bytes": 1000, **kw}
    return list(fetch_batches(sorted(sizes), sizes, **limits))


def test_fetch_batches_cut_at_the_message_count() -> None:
    assert _batches({1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, max_count=2) == [[1, 2], [3, 4], [5]]


def test_fetch_batches_cut_before_the_byte_budget_is_exceeded() -> None:
    assert _batches({1: 40, 2: 40, 3: 40, 4: 20}) == [[1, 2], [3, 4]]


def test_a_message_larger_than_the_byte_budget_is_fetched_alone() -> None:
    assert _batches({1: 10, 2: 500, 3: 10, 4: 10}) == [[1], [2], [3, 4]]


def test_a_message_counts_only_the_bytes_fetched_of_it() -> None:
    # Above max_message_bytes only a prefix is fetched, so only the prefix is held.
    assert _batches({1: 10**9, 2: 10}, max_message_bytes=60) == [[1, 2]]


def test_uids_without_a_size_ride_along_in_order() -> None:
    sizes = {1: 60, 3: 60}
    assert list(fetch_batches([1, 2, 3], sizes, max_count=50, max_batch_bytes=100,
                              max_message_bytes=1000)) == [[1, 2], [3]]  # fmt: skip
