"""Behaviour of the embedded SQLite store that Redis does not share: the file on disk."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store.base import DeliveryQuery, DeliveryRecord, StoreError, Watermark
from agent.store.local import LocalStore
from tests.support.components import ROOT


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = LocalStore(path)
    await store.start()
    lease = await store.acquire_lease("mailbox:a", "r1", 60)
    await store.set_watermark("a", Watermark(9, 99))
    await store.mark_processed("msg-1", 60)
    await store.append_delivery(DeliveryRecord(time.time(), "delivered", "a", "e1"))
    await store.kv_set("alert", {"state": "firing"})
    await store.close()

    reopened = LocalStore(path)
    await reopened.start()
    try:
        assert await reopened.get_watermark("a") == Watermark(9, 99)
        assert await reopened.is_processed("msg-1")
        assert await reopened.lease_holder("mailbox:a") == lease
        assert (await reopened.delivery_window(60)).counts == {"delivered": 1}
        assert await reopened.kv_get("alert") == {"state": "firing"}
    finally:
        await reopened.close()


async def test_a_second_store_on_the_same_file_is_refused_while_the_first_is_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    first = LocalStore(path)
    await first.start()
    second = LocalStore(path, lock_wait=0.3)
    try:
        with pytest.raises(StoreError, match=r"in use by another process \(pid \d+\)"):
            await second.start()
    finally:
        await first.close()
    third = LocalStore(path)
    await third.start()
    await third.close()


async def test_the_file_is_free_again_once_its_process_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    script = (
        "import asyncio, sys\n"
        "from agent.store.local import LocalStore\n"
        "async def main():\n"
        f"    await LocalStore({str(path)!r}).start()\n"
        "    print('open', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"open"
        with pytest.raises(StoreError, match=f"pid {proc.pid}"):
            await LocalStore(path, lock_wait=0.3).start()
    finally:
        proc.kill()
        proc.wait(10)
    store = LocalStore(path, lock_wait=0)
    await store.start()
    await store.close()


async def test_a_second_store_waits_for_the_first_to_close_within_its_lock_wait(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    first = LocalStore(path)
    await first.start()
    second = LocalStore(path, lock_wait=10)
    opening = asyncio.create_task(second.start())
    await asyncio.sleep(0.5)
    assert not opening.done()
    await first.close()
    async with asyncio.timeout(5):
        await opening
    await second.close()


async def test_start_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "data" / "state.sqlite3"
    store = LocalStore(path)
    await store.start()
    await store.close()
    assert path.is_file()


async def test_file_uses_the_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = LocalStore(path)
    await store.start()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_write_waiting_for_a_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = LocalStore(path, timeout=0.5)
    await store.start()
    ticks = 0

    async def _tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ticker = asyncio.create_task(_tick())
    try:
        with pytest.raises(StoreError):
            await store.set_watermark("a", Watermark(1, 1))
    finally:
        ticker.cancel()
        blocker.execute("ROLLBACK")
        blocker.close()
        await store.close()
    assert ticks >= 10


async def test_unopenable_file_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "is-a-directory"
    path.mkdir()
    store = LocalStore(path)
    with pytest.raises(StoreError, match="sqlite store"):
        await store.start()
    await store.close()


async def test_sqlite_errors_become_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = LocalStore(path, timeout=0.3)
    await store.start()
    try:
        # Another connection holding the write lock makes our write fail after busy_timeout.
        blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked"):
                await store.set_watermark("a", Watermark(1, 1))
            assert time.monotonic() - started < 3
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    finally:
        await store.close()


async def test_a_delivery_log_of_an_earlier_version_is_searchable_after_an_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    now = time.time()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE deliveries (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
            "outcome TEXT NOT NULL, record TEXT NOT NULL)"
        )
        old = (
            f'{{"at": {now!r}, "outcome": "failed", "mailbox": "a", "email_id": "e-old", '
            '"status_code": 503, "duration": 1.0, "error": "HTTP 503", "attempts": 3, "extra": {}}'
        )
        conn.execute(
            "INSERT INTO deliveries (at, outcome, record) VALUES (?, 'failed', ?)", (now, old)
        )
    store = LocalStore(path)
    await store.start()
    try:
        await store.append_delivery(
            DeliveryRecord(now + 1, "delivered", "a", "e-new", subject="Tuesday files")
        )
        found = await store.search_deliveries(DeliveryQuery(outcome="failed", mailbox="a"))
        assert [(r.email_id, r.status_code) for r in found.records] == [("e-old", 503)]
        found = await store.search_deliveries(DeliveryQuery(q="tuesday"))
        assert [r.email_id for r in found.records] == ["e-new"]
    finally:
        await store.close()
