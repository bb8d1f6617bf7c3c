"""One contract suite run against both store backends, so they behave the same."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.store.base import (
    DELIVERY_OUTCOMES,
    LINK_STATUSES,
    DeadLetter,
    DeliveryQuery,
    DeliveryRecord,
    Lease,
    LoggedFile,
    LoggedLink,
    Store,
    Watermark,
)
from agent.store.local import LocalStore
from agent.store.redis import RedisStore

OpenStore = Callable[..., Awaitable[Store]]

SHORT_TTL = 0.3


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Store]:
    """Builds an unstarted store of the backend under test (all share one file or server)."""
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        return lambda **kwargs: RedisStore(server.url, timeout=1.0, **kwargs)
    return lambda **kwargs: LocalStore(tmp_path / "data" / "state.sqlite3", **kwargs)


@pytest.fixture
async def open_store(make_store: Callable[..., Store]) -> AsyncIterator[OpenStore]:
    """Starts stores on demand and closes them all at teardown."""
    opened: list[Store] = []

    async def _open(**kwargs: Any) -> Store:
        store = make_store(**kwargs)
        await store.start()
        opened.append(store)
        return store

    yield _open
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: OpenStore) -> Store:
    """A started store of the backend under test."""
    return await open_store()


def _record(at: float, outcome: str = "delivered", **extra: Any) -> DeliveryRecord:
    return DeliveryRecord(at=at, outcome=outcome, mailbox="box", email_id=f"e{at}", **extra)  # type: ignore[arg-type]


# Lifecycle.


async def test_store_satisfies_the_store_protocol(store: Store) -> None:
    assert isinstance(store, Store)


async def test_ping_returns_round_trip_seconds(store: Store) -> None:
    seconds = await store.ping()
    assert 0 <= seconds < 1


async def test_methods_before_start_raise_runtime_error(make_store: Callable[..., Store]) -> None:
    store = make_store()
    with pytest.raises(RuntimeError, match="start"):
        await store.get_watermark("box")


async def test_methods_after_close_raise_runtime_error(open_store: OpenStore) -> None:
    store = await open_store()
    await store.close()
    with pytest.raises(RuntimeError, match="close"):
        await store.kv_get("k")


# Leases.


async def test_acquire_gives_a_free_lease_to_the_holder(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", 5)
    assert lease is not None
    assert (lease.name, lease.holder) == ("mailbox:a", "r1")
    assert lease.token >= 1
    assert lease.expires_at == pytest.approx(time.time() + 5, abs=1)


async def test_acquire_is_refused_while_another_holder_has_the_lease(store: Store) -> None:
    assert await store.acquire_lease("mailbox:a", "r1", 5) is not None
    assert await store.acquire_lease("mailbox:a", "r2", 5) is None


async def test_acquire_by_the_holder_renews_with_the_same_token(store: Store) -> None:
    first = await store.acquire_lease("mailbox:a", "r1", 5)
    again = await store.acquire_lease("mailbox:a", "r1", 10)
    assert first is not None
    assert again is not None
    assert again.token == first.token
    assert again.expires_at > first.expires_at


async def test_renew_extends_the_expiry_and_keeps_the_token(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", 1)
    assert lease is not None
    renewed = await store.renew_lease(lease, 10)
    assert renewed is not None
    assert renewed.token == lease.token
    assert renewed.expires_at > lease.expires_at + 5
    held = await store.lease_holder("mailbox:a")
    assert held is not None
    assert held.expires_at == pytest.approx(renewed.expires_at, abs=0.01)


async def test_release_frees_the_lease_for_another_holder_with_a_higher_token(
    store: Store,
) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", 5)
    assert lease is not None
    assert await store.release_lease(lease) is True
    assert await store.lease_holder("mailbox:a") is None
    taken = await store.acquire_lease("mailbox:a", "r2", 5)
    assert taken is not None
    assert taken.token > lease.token


async def test_release_with_a_wrong_token_is_refused(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", 5)
    assert lease is not None
    forged = Lease(lease.name, lease.holder, lease.token + 7, lease.expires_at)
    assert await store.release_lease(forged) is False
    assert await store.lease_holder("mailbox:a") is not None


async def test_renew_after_release_is_refused(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", 5)
    assert lease is not None
    assert await store.release_lease(lease)
    assert await store.renew_lease(lease, 5) is None


async def test_expired_lease_is_taken_by_another_holder_with_a_higher_token(
    store: Store,
) -> None:
    old = await store.acquire_lease("mailbox:a", "r1", SHORT_TTL)
    assert old is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    new = await store.acquire_lease("mailbox:a", "r2", 5)
    assert new is not None
    assert new.token > old.token
    holder = await store.lease_holder("mailbox:a")
    assert holder is not None
    assert holder.holder == "r2"


async def test_expired_lease_nobody_took_can_still_be_renewed(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", SHORT_TTL)
    assert lease is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    renewed = await store.renew_lease(lease, 5)
    assert renewed is not None
    assert renewed.token == lease.token


async def test_stale_holder_cannot_renew_after_takeover(store: Store) -> None:
    stale = await store.acquire_lease("mailbox:a", "r1", SHORT_TTL)
    assert stale is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.acquire_lease("mailbox:a", "r2", 5) is not None
    assert await store.renew_lease(stale, 5) is None
    holder = await store.lease_holder("mailbox:a")
    assert holder is not None
    assert holder.holder == "r2"


async def test_stale_holder_cannot_set_a_fenced_watermark_after_takeover(store: Store) -> None:
    stale = await store.acquire_lease("mailbox:a", "r1", SHORT_TTL)
    assert stale is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    fresh = await store.acquire_lease("mailbox:a", "r2", 5)
    assert fresh is not None
    assert await store.set_watermark("a", Watermark(7, 100), fence=fresh) is True
    assert await store.set_watermark("a", Watermark(7, 50), fence=stale) is False
    assert await store.get_watermark("a") == Watermark(7, 100)


async def test_stale_holder_cannot_release_after_takeover(store: Store) -> None:
    stale = await store.acquire_lease("mailbox:a", "r1", SHORT_TTL)
    assert stale is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.acquire_lease("mailbox:a", "r2", 5) is not None
    assert await store.release_lease(stale) is False
    holder = await store.lease_holder("mailbox:a")
    assert holder is not None
    assert holder.holder == "r2"


async def test_fenced_watermark_is_refused_once_the_lease_expired(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", SHORT_TTL)
    assert lease is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.set_watermark("a", Watermark(1, 10), fence=lease) is False
    assert await store.get_watermark("a") is None


async def test_fenced_watermark_is_stored_while_the_lease_is_held(store: Store) -> None:
    lease = await store.acquire_lease("mailbox:a", "r1", 5)
    assert lease is not None
    assert await store.set_watermark("a", Watermark(1, 10), fence=lease) is True
    assert await store.get_watermark("a") == Watermark(1, 10)


async def test_lease_holder_is_none_once_the_lease_expired(store: Store) -> None:
    assert await store.acquire_lease("mailbox:a", "r1", SHORT_TTL) is not None
    assert await store.lease_holder("mailbox:a") is not None
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.lease_holder("mailbox:a") is None


async def test_count_leases_counts_unexpired_leases_of_the_holder_under_the_prefix(
    store: Store,
) -> None:
    await store.acquire_lease("mailbox:a", "r1", 5)
    await store.acquire_lease("mailbox:b", "r1", 5)
    await store.acquire_lease("mailbox:c", "r2", 5)
    await store.acquire_lease("other:x", "r1", 5)
    await store.acquire_lease("mailbox:short", "r1", SHORT_TTL)
    assert await store.count_leases("r1", "mailbox:") == 3
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.count_leases("r1", "mailbox:") == 2
    assert await store.count_leases("r2", "mailbox:") == 1
    assert await store.count_leases("r3", "mailbox:") == 0


async def test_take_over_gives_a_held_lease_to_the_successor_with_a_higher_token(
    store: Store,
) -> None:
    old = await store.acquire_lease("mailbox:a", "r1", 60)
    assert old is not None
    held = await store.lease_holder("mailbox:a")
    assert held is not None
    new = await store.take_over_lease(held, "r2", 5)
    assert new is not None
    assert (new.holder, new.token > old.token) == ("r2", True)
    assert new.expires_at == pytest.approx(time.time() + 5, abs=1)
    current = await store.lease_holder("mailbox:a")
    assert current is not None
    assert (current.holder, current.token) == ("r2", new.token)
    assert (
        await store.count_leases("r1", "mailbox:"),
        await store.count_leases("r2", "mailbox:"),
    ) == (0, 1)


async def test_the_old_holder_can_neither_renew_nor_fence_a_watermark_after_a_take_over(
    store: Store,
) -> None:
    old = await store.acquire_lease("mailbox:a", "r1", 60)
    assert old is not None
    assert await store.take_over_lease(old, "r2", 60) is not None
    assert await store.renew_lease(old, 60) is None
    assert await store.set_watermark("a", Watermark(7, 50), fence=old) is False
    assert await store.release_lease(old) is False


async def test_take_over_is_refused_once_the_lease_changed_hands(store: Store) -> None:
    old = await store.acquire_lease("mailbox:a", "r1", 60)
    assert old is not None
    assert await store.take_over_lease(old, "r2", 60) is not None
    # r3 read the lease before r2 took it: it must not take it from r2.
    assert await store.take_over_lease(old, "r3", 60) is None
    current = await store.lease_holder("mailbox:a")
    assert current is not None
    assert current.holder == "r2"


async def test_concurrent_acquires_from_two_replicas_give_the_lease_to_one(
    store: Store, open_store: OpenStore
) -> None:
    # The embedded store serves one process: its "replicas" share the one open store.
    first, second = store, (store if store.single_process else await open_store())
    results = await asyncio.gather(
        *((first if i % 2 else second).acquire_lease("mailbox:a", f"r{i}", 5) for i in range(10))
    )
    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1


# Watermarks.


async def test_watermark_is_none_before_the_first_cycle(store: Store) -> None:
    assert await store.get_watermark("a") is None


async def test_watermark_round_trips_per_mailbox(store: Store) -> None:
    assert await store.set_watermark("a", Watermark(uidvalidity=42, uid=9)) is True
    assert await store.set_watermark("b", Watermark(uidvalidity=1, uid=2)) is True
    await store.set_watermark("a", Watermark(uidvalidity=42, uid=11))
    assert await store.get_watermark("a") == Watermark(42, 11)
    assert await store.get_watermark("b") == Watermark(1, 2)


# Processed ids and attempts.


async def test_processed_key_is_remembered_until_its_ttl(store: Store) -> None:
    assert await store.mark_processed("msg-1", SHORT_TTL) is True
    assert await store.is_processed("msg-1") is True
    assert await store.is_processed("msg-2") is False
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.is_processed("msg-1") is False


async def test_marking_a_processed_key_again_returns_false(store: Store) -> None:
    assert await store.mark_processed("msg-1", 5) is True
    assert await store.mark_processed("msg-1", 5) is False


async def test_an_expired_processed_key_can_be_marked_again(store: Store) -> None:
    assert await store.mark_processed("msg-1", SHORT_TTL) is True
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.mark_processed("msg-1", 5) is True


async def test_attempts_count_up_per_key_and_clear(store: Store) -> None:
    assert [await store.incr_attempts("m", 5) for _ in range(3)] == [1, 2, 3]
    assert await store.incr_attempts("other", 5) == 1
    await store.clear_attempts("m")
    assert await store.incr_attempts("m", 5) == 1


async def test_attempts_are_forgotten_after_their_ttl(store: Store) -> None:
    await store.incr_attempts("m", SHORT_TTL)
    await store.incr_attempts("m", SHORT_TTL)
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.incr_attempts("m", 5) == 1


async def test_any_processed_is_true_when_one_key_is_processed(store: Store) -> None:
    assert not await store.any_processed([])
    assert not await store.any_processed(["a", "b"])
    await store.mark_processed("b", 5)
    assert await store.any_processed(["a", "b"])
    assert not await store.any_processed(["a", "c"])


async def test_any_processed_forgets_expired_keys(store: Store) -> None:
    await store.mark_processed("a", SHORT_TTL)
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert not await store.any_processed(["a"])


async def test_record_outcome_marks_every_key_and_appends_the_record(store: Store) -> None:
    now = time.time()
    await store.record_outcome(["email-1", "msg:1"], 5, _record(now, "dead_lettered"))
    assert await store.is_processed("email-1")
    assert await store.is_processed("msg:1")
    window = await store.delivery_window(100, now=now + 1)
    assert window.counts == {"dead_lettered": 1}
    assert window.last is not None
    assert window.last.outcome == "dead_lettered"


async def test_record_outcome_without_a_record_only_marks(store: Store) -> None:
    await store.record_outcome(["email-2"], 5, None)
    assert await store.is_processed("email-2")
    assert (await store.delivery_window(100)).total == 0


async def test_record_outcome_marks_expire_after_their_ttl(store: Store) -> None:
    await store.record_outcome(["email-3"], SHORT_TTL, None)
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert not await store.is_processed("email-3")


async def test_record_outcome_keeps_at_most_max_records(open_store: OpenStore) -> None:
    store = await open_store(delivery_max_records=3)
    now = time.time()
    for i in range(6):
        await store.record_outcome([f"k{i}"], 5, _record(now - 10 + i))
    assert [r.at for r in await store.recent_deliveries(10)] == [now - 5, now - 6, now - 7]


# Delivery log.


async def test_delivery_window_counts_by_outcome_inside_the_window(store: Store) -> None:
    now = time.time()
    for at, outcome in [
        (now - 10, "delivered"),
        (now - 9, "delivered"),
        (now - 8, "failed"),
        (now - 7, "dead_lettered"),
        (now - 500, "failed"),  # outside the 100 s window
    ]:
        await store.append_delivery(_record(at, outcome))
    window = await store.delivery_window(100, now=now)
    assert window.counts == {"delivered": 2, "failed": 1, "dead_lettered": 1}
    assert window.total == 4
    assert window.error_ratio == pytest.approx(0.5)


async def test_delivery_window_is_empty_without_records(store: Store) -> None:
    window = await store.delivery_window(86400)
    assert window.total == 0
    assert window.error_ratio is None
    assert window.last is None


async def test_delivery_window_last_is_the_newest_record_with_all_its_fields(
    store: Store,
) -> None:
    now = time.time()
    await store.append_delivery(_record(now - 5, "delivered"))
    newest = DeliveryRecord(
        at=now - 1,
        outcome="failed",
        mailbox="box",
        email_id="e-new",
        status_code=503,
        duration=1.25,
        error="upstream said no",
        attempts=3,
        message_id="<m@x>",
        sender="a@b",
        subject="hi",
        received_at=now - 60,
        trace_id="ab" * 16,
        links=(
            LoggedLink(
                "dropbox",
                "https://www.dropbox.com/s/x",
                "transferred",
                "k",
                5,
                "",
                (LoggedFile("k", 5, "f.txt"),),
            ),
        ),
    )
    await store.append_delivery(newest)
    await store.append_delivery(_record(now - 3, "delivered"))
    window = await store.delivery_window(60, now=now)
    assert window.last == newest


async def test_recent_deliveries_are_newest_first_up_to_the_limit(store: Store) -> None:
    now = time.time()
    for offset in (5, 1, 3, 4, 2):
        await store.append_delivery(_record(now - offset))
    recent = await store.recent_deliveries(3)
    assert [r.at for r in recent] == [now - 1, now - 2, now - 3]


async def test_delivery_log_drops_records_older_than_the_retention(
    open_store: OpenStore,
) -> None:
    store = await open_store(delivery_retention=60.0)
    now = time.time()
    await store.append_delivery(_record(now - 120, "failed"))
    await store.append_delivery(_record(now - 30, "delivered"))
    recent = await store.recent_deliveries(10)
    assert [r.at for r in recent] == [now - 30]
    window = await store.delivery_window(86400, now=now)
    assert window.counts == {"delivered": 1}


async def test_delivery_log_keeps_at_most_max_records(open_store: OpenStore) -> None:
    store = await open_store(delivery_max_records=5)
    now = time.time()
    for i in range(12):
        await store.append_delivery(_record(now - 100 + i, "failed" if i < 6 else "delivered"))
    recent = await store.recent_deliveries(100)
    assert [r.at for r in recent] == [now - 100 + i for i in range(11, 6, -1)]
    window = await store.delivery_window(86400, now=now)
    assert window.counts == {"delivered": 5}


async def test_delivery_window_counts_only_webhook_outcomes(store: Store) -> None:
    now = time.time()
    await store.append_delivery(_record(now - 3, "delivered"))
    await store.append_delivery(_record(now - 2, "skipped"))
    await store.append_delivery(_record(now - 1, "duplicate"))
    window = await store.delivery_window(60, now=now)
    assert window.counts == {"delivered": 1}
    assert window.last is not None
    assert window.last.at == now - 3


def _mail(at: float, n: int, **fields: Any) -> DeliveryRecord:
    values: dict[str, Any] = {
        "at": at,
        "outcome": "delivered",
        "mailbox": "box",
        "email_id": f"id-{n}",
        "message_id": f"<m{n}@mail.example>",
        "sender": f"Sender {n} <s{n}@example.org>",
        "subject": f"Files number {n}",
    }
    return DeliveryRecord(**(values | fields))


def _link(status: str) -> LoggedLink:
    return LoggedLink("wetransfer", "https://we.tl/t-x", status)


async def _ids(store: Store, **filters: Any) -> list[str]:
    page = await store.search_deliveries(DeliveryQuery(**filters))
    return [r.email_id for r in page.records]


async def test_search_finds_by_sender_subject_words_and_message_id_case_insensitively(
    store: Store,
) -> None:
    now = time.time()
    await store.append_delivery(_mail(now - 3, 1))
    await store.append_delivery(_mail(now - 2, 2, subject="Quarterly Überblick"))
    await store.append_delivery(_mail(now - 1, 3, sender="Ann <ann@corp.example>"))
    assert await _ids(store, q="ANN@CORP") == ["id-3"]
    assert await _ids(store, q="überblick") == ["id-2"]
    assert await _ids(store, q="<m1@mail.example>") == ["id-1"]
    assert await _ids(store, q="files number") == ["id-3", "id-1"]
    assert await _ids(store, q="delivered") == []  # the outcome is a filter, not text


async def test_search_filters_by_mailbox_outcome_link_status_and_time(store: Store) -> None:
    now = time.time()
    await store.append_delivery(_mail(now - 40, 1, links=(_link("transferred"),)))
    await store.append_delivery(
        _mail(now - 30, 2, outcome="dead_lettered", links=(_link("transferred"), _link("failed")))
    )
    await store.append_delivery(_mail(now - 20, 3, mailbox="other", outcome="skipped"))
    await store.append_delivery(_mail(now - 10, 4, outcome="duplicate"))
    assert await _ids(store, mailbox="other") == ["id-3"]
    assert await _ids(store, outcome="dead_lettered") == ["id-2"]
    assert await _ids(store, status="transferred") == ["id-2", "id-1"]
    assert await _ids(store, status="failed") == ["id-2"]
    assert await _ids(store, status="unavailable") == []
    assert await _ids(store, since=now - 30, until=now - 20) == ["id-3", "id-2"]
    assert await _ids(store, outcome="duplicate", q="files") == ["id-4"]


async def test_search_pages_newest_first_with_a_cursor_through_equal_times(store: Store) -> None:
    now = time.time()
    for n in range(7):
        # Pairs of records share a time: the cursor must neither repeat nor skip one of them.
        await store.append_delivery(_mail(now - 100 + n // 2, n))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.search_deliveries(DeliveryQuery(limit=3, cursor=cursor))
        seen += [r.email_id for r in page.records]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(f"id-{n}" for n in range(7))
    assert len(seen) == 7
    ats = [now - 100 + int(i.split("-")[1]) // 2 for i in seen]
    assert ats == sorted(ats, reverse=True)
    assert pages == 3


async def test_search_page_ends_without_a_cursor_when_nothing_more_matches(store: Store) -> None:
    now = time.time()
    for n in range(4):
        await store.append_delivery(_mail(now - 10 + n, n))
    page = await store.search_deliveries(DeliveryQuery(limit=4))
    assert len(page.records) == 4
    assert page.next_cursor is None


async def test_search_rejects_a_cursor_it_did_not_hand_out(store: Store) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.search_deliveries(DeliveryQuery(cursor="not-a-cursor"))


async def test_search_returns_the_record_with_every_field(store: Store) -> None:
    now = time.time()
    record = _mail(
        now,
        1,
        status_code=200,
        attempts=2,
        received_at=now - 90,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        links=(
            LoggedLink(
                "wetransfer",
                "https://we.tl/t-x",
                "transferred",
                None,
                30,
                "",
                (LoggedFile("2026/a/1.pdf", 10, "1.pdf"), LoggedFile("2026/a/2.pdf", 20, "2.pdf")),
            ),
            LoggedLink("dropbox", "https://www.dropbox.com/s/y", "unavailable", error="gone"),
        ),
    )
    await store.append_delivery(record)
    page = await store.search_deliveries(DeliveryQuery(q="m1@"))
    assert page.records == [record]
    assert page.records[0].lag == pytest.approx(90)


async def test_search_scans_past_many_non_matching_records(open_store: OpenStore) -> None:
    """A match older than a long run of others is still found (the scan resumes itself)."""
    store = await open_store(delivery_max_records=10_000)
    now = time.time()
    await store.append_delivery(_mail(now - 20_000, 0, subject="the needle"))
    for n in range(1, 2_001):
        await store.append_delivery(_mail(now - 20_000 + n, n))
    assert await _ids(store, q="needle") == ["id-0"]


async def test_every_search_returns_exactly_what_the_query_matches_page_by_page(
    store: Store,
) -> None:
    """Random records and random queries against the query's own definition of a match."""
    rng = random.Random(7)
    now = time.time()
    words = ["Files", "invoice", "ÜBER", "order", "Tuesday", "re:"]
    records = []
    for n in range(90):
        record = _mail(
            now - 1000 + n * 3,
            n,
            mailbox=rng.choice(["a", "b"]),
            outcome=rng.choice(DELIVERY_OUTCOMES),
            subject=" ".join(rng.sample(words, 2)),
            links=tuple(_link(rng.choice(LINK_STATUSES)) for _ in range(rng.randrange(3))),
        )
        records.append(record)
        await store.append_delivery(record)
    newest_first = sorted(records, key=lambda r: r.at, reverse=True)
    for _ in range(25):
        query = DeliveryQuery(
            mailbox=rng.choice([None, "a", "b"]),
            outcome=rng.choice([None, *DELIVERY_OUTCOMES]),
            status=rng.choice([None, *LINK_STATUSES]),
            since=rng.choice([None, now - 700]),
            until=rng.choice([None, now - 300]),
            q=rng.choice(["", "files", "über", "ORDER TUES", "<m1", "nothing"]),
            limit=rng.choice([1, 4, 50]),
        )
        found: list[DeliveryRecord] = []
        cursor = None
        while True:
            page = await store.search_deliveries(dataclasses.replace(query, cursor=cursor))
            assert len(page.records) <= query.limit
            found += page.records
            cursor = page.next_cursor
            if cursor is None:
                break
        assert found == [r for r in newest_first if query.matches(r)], query


async def test_delivery_log_trims_the_oldest_records_from_the_search_too(
    open_store: OpenStore,
) -> None:
    store = await open_store(delivery_max_records=3, delivery_retention=60.0)
    now = time.time()
    await store.append_delivery(_mail(now - 120, 0))  # older than the retention
    for n in range(1, 6):
        await store.append_delivery(_mail(now - 10 + n, n))
    assert await _ids(store) == ["id-5", "id-4", "id-3"]
    size = await store.delivery_log_size()
    assert size.records == 3
    assert size.oldest_at == pytest.approx(now - 7)


async def test_delivery_log_size_is_zero_when_empty(store: Store) -> None:
    size = await store.delivery_log_size()
    assert (size.records, size.oldest_at) == (0, None)


# Dead letters.


def _letter(email_id: str, at: float, mailbox: str = "box", **extra: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "uidvalidity": 7,
        "uid": int(at) % 1000,
        "reason": "HTTP 400: permanent failure",
        "error_type": "webhook_rejected",
        **extra,
    }
    return DeadLetter(email_id=email_id, mailbox=mailbox, at=at, **fields)


async def _dead(store: Store, letter: DeadLetter) -> None:
    record = DeliveryRecord(
        at=letter.at, outcome="dead_lettered", mailbox=letter.mailbox, email_id=letter.email_id
    )
    await store.record_dead_letter([letter.email_id], 60, record, letter)


async def test_record_dead_letter_marks_the_keys_logs_the_record_and_keeps_the_letter(
    store: Store,
) -> None:
    now = time.time()
    letter = _letter("e1", now, attempts=3)
    record = DeliveryRecord(at=now, outcome="dead_lettered", mailbox="box", email_id="e1")
    await store.record_dead_letter(["e1", "msg:1"], 60, record, letter)
    assert await store.is_processed("e1")
    assert await store.is_processed("msg:1")
    assert await store.recent_deliveries(5) == [record]
    assert await store.dead_letter("e1") == dataclasses.replace(letter, updated_at=now)


async def test_a_dead_letter_round_trips_every_field(store: Store) -> None:
    now = time.time()
    await _dead(store, _letter("e1", now - 5))
    await store.request_redrive("e1", now)
    await store.finish_redrive("e1", "gone", now + 1.5, "UIDVALIDITY changed from 7 to 8")
    assert await store.dead_letter("e1") == DeadLetter(
        email_id="e1",
        mailbox="box",
        uidvalidity=7,
        uid=int(now - 5) % 1000,
        reason="HTTP 400: permanent failure",
        error_type="webhook_rejected",
        at=now - 5,
        attempts=1,
        status="gone",
        redrives=1,
        requested_at=None,
        updated_at=now + 1.5,
        note="UIDVALIDITY changed from 7 to 8",
    )


async def test_dead_letter_is_none_for_an_unknown_email_id(store: Store) -> None:
    assert await store.dead_letter("nobody") is None


async def test_dead_letters_are_listed_newest_first_and_filtered_by_mailbox_and_status(
    store: Store,
) -> None:
    now = time.time()
    for email_id, at, mailbox in [("a", 1, "x"), ("b", 3, "y"), ("c", 2, "x"), ("d", 4, "x")]:
        await _dead(store, _letter(email_id, now - 10 + at, mailbox))
    await store.request_redrive("d", now)
    assert [d.email_id for d in await store.dead_letters()] == ["d", "b", "c", "a"]
    assert [d.email_id for d in await store.dead_letters(limit=2)] == ["d", "b"]
    assert [d.email_id for d in await store.dead_letters(mailbox="x")] == ["d", "c", "a"]
    waiting = await store.dead_letters(mailbox="x", statuses=["dead_lettered"])
    assert [d.email_id for d in waiting] == ["c", "a"]


async def test_request_redrive_moves_a_dead_letter_to_requested_and_clears_its_attempts(
    store: Store,
) -> None:
    now = time.time()
    await _dead(store, _letter("e1", now - 5))
    await store.incr_attempts("e1", 60)
    before = await store.request_redrive("e1", now)
    assert before is not None
    assert before.status == "dead_lettered"
    after = await store.dead_letter("e1")
    assert after is not None
    assert (after.status, after.requested_at, after.redrives) == ("redrive_requested", now, 1)
    assert await store.incr_attempts("e1", 60) == 1


async def test_request_redrive_twice_is_one_request(store: Store) -> None:
    now = time.time()
    await _dead(store, _letter("e1", now - 5))
    await store.request_redrive("e1", now)
    again = await store.request_redrive("e1", now + 1)
    assert again is not None
    assert (again.status, again.requested_at, again.redrives) == ("redrive_requested", now, 1)
    assert [d.email_id for d in await store.pending_redrives("box", 10)] == ["e1"]


async def test_request_redrive_of_an_unknown_email_id_is_none(store: Store) -> None:
    assert await store.request_redrive("nobody", time.time()) is None
    assert await store.dead_letter("nobody") is None


async def test_request_redrive_leaves_a_delivered_letter_as_it_is(store: Store) -> None:
    now = time.time()
    await _dead(store, _letter("e1", now - 5))
    await store.request_redrive("e1", now)
    assert await store.finish_redrive("e1", "delivered", now + 1, "HTTP 200")
    before = await store.request_redrive("e1", now + 2)
    assert before is not None
    assert (before.status, before.redrives) == ("delivered", 1)
    assert await store.pending_redrives("box", 10) == []


async def test_pending_redrives_lists_one_mailboxs_requests_oldest_request_first(
    store: Store,
) -> None:
    now = time.time()
    for email_id, mailbox in [("a", "x"), ("b", "x"), ("c", "y"), ("d", "x")]:
        await _dead(store, _letter(email_id, now - 10, mailbox))
    for offset, email_id in enumerate(["d", "c", "a"]):
        await store.request_redrive(email_id, now + offset)
    assert [d.email_id for d in await store.pending_redrives("x", 10)] == ["d", "a"]
    assert [d.email_id for d in await store.pending_redrives("x", 1)] == ["d"]
    assert [d.email_id for d in await store.pending_redrives("y", 10)] == ["c"]


async def test_finish_redrive_settles_the_request_once(store: Store) -> None:
    now = time.time()
    await _dead(store, _letter("e1", now - 5))
    assert not await store.finish_redrive("e1", "delivered", now, "before any request")
    await store.request_redrive("e1", now)
    assert await store.finish_redrive("e1", "delivered", now + 1, "HTTP 200")
    assert not await store.finish_redrive("e1", "gone", now + 2, "too late")
    done = await store.dead_letter("e1")
    assert done is not None
    assert (done.status, done.note, done.requested_at) == ("delivered", "HTTP 200", None)
    assert await store.pending_redrives("box", 10) == []


async def test_a_letter_dead_lettered_again_keeps_its_redrive_count_and_settles_the_request(
    store: Store,
) -> None:
    now = time.time()
    await _dead(store, _letter("e1", now - 5))
    await store.request_redrive("e1", now - 4)
    await _dead(store, _letter("e1", now, reason="x", attempts=2))
    again = await store.dead_letter("e1")
    assert again is not None
    assert (again.status, again.redrives, again.at, again.attempts) == (
        "dead_lettered",
        1,
        now,
        2,
    )
    assert await store.pending_redrives("box", 10) == []


async def test_dead_letters_older_than_the_retention_are_dropped(open_store: OpenStore) -> None:
    store = await open_store(dead_letter_retention=60.0)
    now = time.time()
    await _dead(store, _letter("old", now - 120))
    await _dead(store, _letter("new", now - 30))
    assert [d.email_id for d in await store.dead_letters()] == ["new"]
    assert await store.dead_letter("old") is None


async def test_dead_letters_beyond_the_count_bound_drop_the_oldest(open_store: OpenStore) -> None:
    store = await open_store(dead_letter_max_records=3)
    now = time.time()
    for i in range(6):
        await _dead(store, _letter(f"e{i}", now - 10 + i))
    await store.request_redrive("e5", now)
    assert [d.email_id for d in await store.dead_letters()] == ["e5", "e4", "e3"]
    assert [d.email_id for d in await store.pending_redrives("box", 10)] == ["e5"]


# Key-value.


async def test_kv_round_trips_json_values(store: Store) -> None:
    value = {"state": "firing", "since": 12.5, "labels": ["a", "b"], "n": None}
    await store.kv_set("alert:x", value)
    assert await store.kv_get("alert:x") == value
    assert await store.kv_get("missing") is None


async def test_kv_delete_removes_the_key(store: Store) -> None:
    await store.kv_set("k", 1)
    await store.kv_delete("k")
    assert await store.kv_get("k") is None


async def test_kv_value_expires_after_its_ttl(store: Store) -> None:
    await store.kv_set("k", "v", ttl=SHORT_TTL)
    assert await store.kv_get("k") == "v"
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.kv_get("k") is None


async def test_kv_set_without_ttl_clears_an_earlier_ttl(store: Store) -> None:
    await store.kv_set("k", "v", ttl=SHORT_TTL)
    await store.kv_set("k", "w")
    await asyncio.sleep(SHORT_TTL + 0.1)
    assert await store.kv_get("k") == "w"


# Heartbeats.


async def test_heartbeats_are_listed_by_prefix_with_their_time_and_info(store: Store) -> None:
    await store.heartbeat("poller:a", 100.0, {"replica": "r1"})
    await store.heartbeat("poller:b", 101.0)
    await store.heartbeat("health", 102.0)
    await store.heartbeat("poller:a", 105.0, {"replica": "r1", "cycle": 3})
    beats = await store.heartbeats("poller:")
    assert beats == {
        "poller:a": {"at": 105.0, "replica": "r1", "cycle": 3},
        "poller:b": {"at": 101.0},
    }
    assert set(await store.heartbeats()) == {"poller:a", "poller:b", "health"}
