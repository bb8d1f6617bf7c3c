"""Redis store faults: a dead or silent server fails fast, leaks no password, and is recovered."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from agent.store.base import DeliveryPage, DeliveryQuery, DeliveryRecord, StoreError, Watermark
from agent.store.redis import RedisStore
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.redis import RedisServer

TIMEOUT = 1.0
# The socket timeout bounds each attempt; one reconnect retry and scheduling add a little.
BOUND = 2 * TIMEOUT + 1.0


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """A started store on the test's redis-server."""
    store = RedisStore(redis_server.url, timeout=TIMEOUT)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def protected_store(redis_server_with_password: RedisServer) -> AsyncIterator[RedisStore]:
    """A started store on a password-protected redis-server."""
    store = RedisStore(redis_server_with_password.url, timeout=TIMEOUT)
    await store.start()
    yield store
    await store.close()


async def test_call_on_a_killed_server_raises_store_error_within_the_timeout(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.ping()
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(StoreError, match="redis unavailable"):
        await store.get_watermark("a")
    assert time.monotonic() - started < BOUND


async def test_store_error_on_a_killed_server_never_shows_the_password(
    protected_store: RedisStore, redis_server_with_password: RedisServer
) -> None:
    assert await protected_store.ping() >= 0
    redis_server_with_password.kill()
    with pytest.raises(StoreError) as caught:
        await protected_store.acquire_lease("mailbox:a", "r1", 5)
    message = str(caught.value)
    assert redis_server_with_password.password not in message
    assert "***" in message


async def test_wrong_password_becomes_store_error_without_the_password(
    redis_server_with_password: RedisServer,
) -> None:
    wrong = "wrong-Pa55-4242"
    url = f"redis://:{wrong}@127.0.0.1:{redis_server_with_password.port}/0"
    store = RedisStore(url, timeout=TIMEOUT)
    await store.start()
    try:
        with pytest.raises(StoreError) as caught:
            await store.ping()
    finally:
        await store.close()
    assert wrong not in str(caught.value)
    assert redis_server_with_password.password not in str(caught.value)


async def test_same_store_works_again_after_the_killed_server_restarts(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.set_watermark("a", Watermark(1, 5))
    redis_server.kill()
    with pytest.raises(StoreError):
        await store.ping()
    redis_server.start()
    # The server came back empty (no persistence); the next calls, Lua scripts included,
    # must succeed on fresh connections.
    lease = await store.acquire_lease("mailbox:a", "r1", 5)
    assert lease is not None
    assert await store.set_watermark("a", Watermark(1, 6), fence=lease) is True
    assert await store.get_watermark("a") == Watermark(1, 6)


async def test_first_call_after_a_graceful_restart_succeeds(
    store: RedisStore, redis_server: RedisServer
) -> None:
    await store.kv_set("k", 1)
    redis_server.stop()
    redis_server.start()
    # Pooled connections were closed by the server; no call in between noticed it.
    await store.kv_set("k", 2)
    assert await store.kv_get("k") == 2


async def test_a_server_that_never_answers_fails_within_the_timeout(blackhole: BlackHole) -> None:
    store = RedisStore(f"redis://127.0.0.1:{blackhole.port}/0", timeout=TIMEOUT)
    await store.start()
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="redis unavailable"):
            await store.ping()
    finally:
        await store.close()
    assert time.monotonic() - started < BOUND


async def test_nothing_listening_fails_fast(redis_server: RedisServer) -> None:
    redis_server.kill()
    store = RedisStore(redis_server.url, timeout=TIMEOUT)
    await store.start()
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="redis unavailable"):
            await store.lease_holder("mailbox:a")
    finally:
        await store.close()
    assert time.monotonic() - started < BOUND


async def test_invalid_url_becomes_store_error_without_the_password() -> None:
    store = RedisStore("redis://:hunter2-secret@127.0.0.1:notaport/0")
    with pytest.raises(StoreError, match="invalid") as caught:
        await store.start()
    assert "hunter2-secret" not in str(caught.value)


async def test_stores_with_different_prefixes_do_not_see_each_other(
    redis_server: RedisServer,
) -> None:
    first = RedisStore(redis_server.url, prefix="one:")
    second = RedisStore(redis_server.url, prefix="two:")
    await first.start()
    await second.start()
    try:
        await first.set_watermark("a", Watermark(1, 1))
        assert await second.get_watermark("a") is None
        assert await second.acquire_lease("mailbox:a", "r2", 5) is not None
        assert await first.acquire_lease("mailbox:a", "r1", 5) is not None
    finally:
        await first.close()
        await second.close()


async def test_window_counts_over_many_records_stay_fast(store: RedisStore) -> None:
    now = time.time()
    for i in range(2000):
        await store.append_delivery(
            DeliveryRecord(now - i, "failed" if i % 4 == 0 else "delivered", "box", f"e{i}")
        )
    started = time.monotonic()
    window = await store.delivery_window(86400, now=now)
    elapsed = time.monotonic() - started
    assert window.counts == {"failed": 500, "delivered": 1500}
    assert elapsed < 0.1


async def test_a_search_resumes_its_bounded_scan_until_the_page_is_full(
    redis_server: RedisServer,
) -> None:
    """With a scan budget of 7 lines a call, paging through 60 records still sees each once."""
    store = RedisStore(redis_server.url, timeout=1.0, scan_budget=7, prefix="scan:")
    await store.start()
    try:
        now = time.time()
        for n in range(60):
            subject = "wanted" if n % 4 == 0 else "other"
            # Pairs share a time, so resuming inside a run of equal scores is exercised too.
            await store.append_delivery(
                DeliveryRecord(now - 100 + n // 2, "delivered", "box", f"e{n}", subject=subject)
            )
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.search_deliveries(DeliveryQuery(q="wanted", limit=4, cursor=cursor))
            seen += [r.email_id for r in page.records]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert sorted(seen) == sorted(f"e{n}" for n in range(0, 60, 4))
        assert len(seen) == 15
        assert await store.search_deliveries(DeliveryQuery(q="nowhere")) == DeliveryPage([], None)
    finally:
        await store.close()
