"""The embedded state store: one SQLite file in the data dir, needing no other server."""

# One process at a time: start() takes an exclusive lock (flock) on a file beside the database
# (waiting up to lock_wait seconds for a predecessor that is still shutting down) and holds it
# until close(); the kernel drops it when the process ends, even by SIGKILL. So a lease in the
# file held by any other holder belongs to a process that has ended, and a restarted sidecar
# takes its mailboxes back at once instead of waiting out the lease. A command-line tool that
# reads or writes a few records beside a running sidecar (redrive, deliveries) opens the file
# without that lock (instance_lock=False): it never holds a lease, and SQLite's own locking keeps
# each of its transactions safe next to the sidecar's.

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent.store.base import (
    WEBHOOK_OUTCOMES,
    DeadLetter,
    DeadLetterStatus,
    DeliveryLogSize,
    DeliveryPage,
    DeliveryQuery,
    DeliveryRecord,
    DeliveryWindow,
    Lease,
    StoreError,
    Watermark,
    decode_cursor,
    dump_json,
    encode_cursor,
    record_from_json,
    record_to_json,
)

_T = TypeVar("_T")

# Expired processed ids, attempts and kv rows are purged once every this many writes.
_PURGE_EVERY = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS watermarks (
    mailbox TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS processed (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS processed_expiry ON processed (expires_at);
CREATE TABLE IF NOT EXISTS attempts (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_at ON deliveries (at, outcome);
CREATE TABLE IF NOT EXISTS dead_letters (
    email_id TEXT PRIMARY KEY,
    mailbox TEXT NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL,
    requested_at REAL,
    letter TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_at ON dead_letters (at);
CREATE INDEX IF NOT EXISTS dead_letters_pending ON dead_letters (mailbox, status, requested_at);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS heartbeats (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL,
    info TEXT NOT NULL
);
"""


class LocalStore:
    """The Store protocol on SQLite; every query runs on one dedicated worker thread."""

    backend = "sqlite"
    single_process = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 2.0,
        delivery_retention: float = 7 * 86400.0,
        delivery_max_records: int = 100_000,
        lock_wait: float = 10.0,
        instance_lock: bool = True,
        dead_letter_retention: float = 14 * 86400.0,
        dead_letter_max_records: int = 10_000,
    ) -> None:
        self.path = Path(path)
        self._lock_wait = float(lock_wait)
        self._instance_lock = instance_lock
        self._timeout = float(timeout)
        self._retention = float(delivery_retention)
        self._max_records = int(delivery_max_records)
        self._letter_retention = float(dead_letter_retention)
        self._max_letters = int(dead_letter_max_records)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self._writes = 0

    # Lifecycle.

    async def start(self) -> None:
        """Creates the data dir and the file if needed, and opens the connection."""
        if self._closed:
            raise RuntimeError("LocalStore is closed; create a new one")
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._submit(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        """Closes the connection and stops the worker thread."""
        if self._closed:
            return
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_conn)
        finally:
            executor.shutdown(wait=True)

    async def ping(self) -> float:
        """Seconds one trivial query takes on the worker thread."""
        started = time.perf_counter()
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())
        return time.perf_counter() - started

    # Leases.

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Takes the lease if free or expired (next token), renews it if already ours."""
        return await self._run(self._acquire, name, holder, ttl)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extends the lease while nobody else has taken it since (same holder and token)."""
        return await self._run(self._renew, lease, ttl)

    async def release_lease(self, lease: Lease) -> bool:
        """Frees the lease if it is still ours with that token."""
        return await self._run(self._release, lease)

    async def lease_holder(self, name: str) -> Lease | None:
        """The current unexpired lease of that name, whoever holds it."""

        def query(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                "SELECT holder, token, expires_at FROM leases "
                "WHERE name = ? AND holder != '' AND expires_at > ?",
                (name, time.time()),
            ).fetchone()
            return None if row is None else Lease(name, row[0], row[1], row[2])

        return await self._run(query)

    async def take_over_lease(self, lease: Lease, holder: str, ttl: float) -> Lease | None:
        """Takes the lease from its ended holder while it still has that token (next token)."""
        return await self._run(self._take_over, lease, holder, ttl)

    async def count_leases(self, holder: str, prefix: str) -> int:
        """How many unexpired leases whose names start with prefix the holder has."""

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT count(*) FROM leases WHERE holder = ? AND expires_at > ? "
                "AND substr(name, 1, ?) = ?",
                (holder, time.time(), len(prefix), prefix),
            ).fetchone()
            return int(row[0])

        return await self._run(query)

    # Watermarks.

    async def get_watermark(self, mailbox: str) -> Watermark | None:
        """The mailbox's UIDVALIDITY and UID watermark, or None before the first cycle."""

        def query(conn: sqlite3.Connection) -> Watermark | None:
            row = conn.execute(
                "SELECT uidvalidity, uid FROM watermarks WHERE mailbox = ?", (mailbox,)
            ).fetchone()
            return None if row is None else Watermark(row[0], row[1])

        return await self._run(query)

    async def set_watermark(
        self, mailbox: str, mark: Watermark, *, fence: Lease | None = None
    ) -> bool:
        """Stores the watermark; with a fence, in the same transaction that checks the lease."""
        return await self._run(self._set_watermark, mailbox, mark, fence)

    # Processed ids and attempts.

    async def mark_processed(self, key: str, ttl: float) -> bool:
        """Remembers key for ttl seconds; False if it was already there."""

        def write(conn: sqlite3.Connection) -> bool:
            now = time.time()
            with _transaction(conn):
                row = conn.execute(
                    "SELECT 1 FROM processed WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
                if row is not None:
                    return False
                conn.execute(
                    "INSERT INTO processed (key, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
                    (key, now + ttl),
                )
            self._maybe_purge(conn)
            return True

        return await self._run(write)

    async def is_processed(self, key: str) -> bool:
        """Whether key was marked processed and has not expired."""

        def query(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM processed WHERE key = ? AND expires_at > ?", (key, time.time())
            ).fetchone()
            return row is not None

        return await self._run(query)

    async def any_processed(self, keys: Sequence[str]) -> bool:
        """Whether any of the keys is marked processed (one query)."""
        wanted = list(keys)
        if not wanted:
            return False

        def query(conn: sqlite3.Connection) -> bool:
            marks = ",".join("?" for _ in wanted)
            row = conn.execute(
                f"SELECT 1 FROM processed WHERE key IN ({marks}) AND expires_at > ? LIMIT 1",  # noqa: S608 - only placeholders are interpolated
                (*wanted, time.time()),
            ).fetchone()
            return row is not None

        return await self._run(query)

    async def record_outcome(
        self, keys: Sequence[str], ttl: float, record: DeliveryRecord | None
    ) -> None:
        """Marks the keys processed and appends the record in one transaction (one fsync)."""
        marked = list(keys)

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            with _transaction(conn):
                _mark_processed(conn, marked, now + ttl)
                if record is not None:
                    self._insert_delivery(conn, record)
            self._maybe_purge(conn)

        await self._run(write)

    async def incr_attempts(self, key: str, ttl: float) -> int:
        """Counts one more attempt at key (the count expires ttl after the last attempt)."""

        def write(conn: sqlite3.Connection) -> int:
            now = time.time()
            with _transaction(conn):
                row = conn.execute(
                    "SELECT count FROM attempts WHERE key = ? AND expires_at > ?", (key, now)
                ).fetchone()
                count = 1 if row is None else int(row[0]) + 1
                conn.execute(
                    "INSERT INTO attempts (key, count, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET count = excluded.count, "
                    "expires_at = excluded.expires_at",
                    (key, count, now + ttl),
                )
            self._maybe_purge(conn)
            return count

        return await self._run(write)

    async def clear_attempts(self, key: str) -> None:
        """Forgets the attempt count of key."""
        await self._run(lambda conn: conn.execute("DELETE FROM attempts WHERE key = ?", (key,)))

    # Delivery log.

    async def append_delivery(self, record: DeliveryRecord) -> None:
        """Appends one outcome and trims the log by age and by count."""

        def write(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                self._insert_delivery(conn, record)

        await self._run(write)

    def _insert_delivery(self, conn: sqlite3.Connection, record: DeliveryRecord) -> None:
        cursor = conn.execute(
            "INSERT INTO deliveries (at, outcome, record, mailbox, statuses, search) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.at,
                record.outcome,
                record_to_json(record),
                record.mailbox,
                _statuses(record.link_statuses),
                record.search_text,
            ),
        )
        conn.execute("DELETE FROM deliveries WHERE at < ?", (time.time() - self._retention,))
        # Ids grow with every insert, so the newest max_records rows are the top ids.
        conn.execute(
            "DELETE FROM deliveries WHERE id <= ?",
            (int(cursor.lastrowid or 0) - self._max_records,),
        )

    async def delivery_window(self, seconds: float, now: float | None = None) -> DeliveryWindow:
        """Counts by outcome of records in (now - seconds, now], and the newest up to now."""
        end = time.time() if now is None else now

        def query(conn: sqlite3.Connection) -> DeliveryWindow:
            counts = {
                str(outcome): int(count)
                for outcome, count in conn.execute(
                    "SELECT outcome, count(*) FROM deliveries WHERE at > ? AND at <= ? "  # noqa: S608 - a constant
                    f"AND outcome IN {_WEBHOOK_OUTCOMES} GROUP BY outcome",
                    (end - seconds, end),
                )
            }
            row = conn.execute(
                "SELECT record FROM deliveries WHERE at <= ? "  # noqa: S608 - a constant
                f"AND outcome IN {_WEBHOOK_OUTCOMES} ORDER BY at DESC, id DESC LIMIT 1",
                (end,),
            ).fetchone()
            return DeliveryWindow(counts, None if row is None else _record(row[0]))

        return await self._run(query)

    async def recent_deliveries(self, limit: int) -> list[DeliveryRecord]:
        """The newest records, newest first."""

        def query(conn: sqlite3.Connection) -> list[DeliveryRecord]:
            rows = conn.execute(
                "SELECT record FROM deliveries ORDER BY at DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [_record(row[0]) for row in rows]

        return await self._run(query)

    async def search_deliveries(self, query: DeliveryQuery) -> DeliveryPage:
        """One indexed walk newest first; the filters are plain columns, `q` a substring."""
        clauses: list[str] = []
        params: list[Any] = []
        if query.cursor is not None:
            at, tie = decode_cursor(query.cursor)
            if not tie.isdigit():
                raise ValueError("not a delivery cursor")
            # A range on `at` the index walks from, then the tie-break among equal times.
            clauses.append("at <= ? AND (at < ? OR id < ?)")
            params += [at, at, int(tie)]
        for column, value in (
            ("mailbox = ?", query.mailbox),
            ("outcome = ?", query.outcome),
            ("at >= ?", query.since),
            ("at <= ?", query.until),
        ):
            if value is not None:
                clauses.append(column)
                params.append(value)
        if query.status is not None:
            clauses.append("instr(statuses, ?) > 0")
            params.append(_statuses((query.status,)))
        if query.q:
            clauses.append("instr(search, ?) > 0")
            params.append(query.needle)
        where = " AND ".join(clauses) or "1"
        limit = max(1, query.limit)

        def run(conn: sqlite3.Connection) -> DeliveryPage:
            # Two steps: the ids from the covering search index (no record is read while the
            # filters walk it), then the matching records by id.
            rows = conn.execute(
                f"SELECT id, at FROM deliveries WHERE {where} "  # noqa: S608 - only placeholders are interpolated
                "ORDER BY at DESC, id DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            cursor = encode_cursor(rows[-1][1], str(rows[-1][0])) if more else None
            ids = [row[0] for row in rows]
            records = dict(
                conn.execute(
                    f"SELECT id, record FROM deliveries WHERE id IN ({','.join('?' * len(ids))})",  # noqa: S608 - only placeholders are interpolated
                    ids,
                ).fetchall()
            )
            return DeliveryPage([_record(records[i]) for i in ids if i in records], cursor)

        return await self._run(run)

    async def delivery_log_size(self) -> DeliveryLogSize:
        """Rows in the log and the oldest time."""

        def query(conn: sqlite3.Connection) -> DeliveryLogSize:
            count, oldest = conn.execute("SELECT count(*), min(at) FROM deliveries").fetchone()
            return DeliveryLogSize(int(count), None if oldest is None else float(oldest))

        return await self._run(query)

    # Dead letters.

    async def record_dead_letter(
        self, keys: Sequence[str], ttl: float, record: DeliveryRecord, letter: DeadLetter
    ) -> None:
        """Marks the keys, appends the record and keeps the letter in one transaction."""
        marked = list(keys)

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            with _transaction(conn):
                _mark_processed(conn, marked, now + ttl)
                self._insert_delivery(conn, record)
                earlier = _find_letter(conn, letter.email_id)
                kept = dataclasses.replace(
                    letter,
                    status="dead_lettered",
                    redrives=earlier.redrives if earlier is not None else letter.redrives,
                    requested_at=None,
                    updated_at=letter.at,
                )
                _write_letter(conn, kept)
                conn.execute(
                    "DELETE FROM dead_letters WHERE at < ?", (now - self._letter_retention,)
                )
                conn.execute(
                    "DELETE FROM dead_letters WHERE email_id IN (SELECT email_id FROM "
                    "dead_letters ORDER BY at DESC LIMIT -1 OFFSET ?)",
                    (self._max_letters,),
                )
            self._maybe_purge(conn)

        await self._run(write)

    async def dead_letter(self, email_id: str) -> DeadLetter | None:
        """The dead letter kept under that email id, or None."""
        return await self._run(_find_letter, email_id)

    async def dead_letters(
        self,
        *,
        mailbox: str | None = None,
        statuses: Sequence[DeadLetterStatus] = (),
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first, filtered by mailbox and statuses when given."""
        wanted = list(statuses)

        def query(conn: sqlite3.Connection) -> list[DeadLetter]:
            clauses = ["1 = 1"]
            params: list[Any] = []
            if mailbox is not None:
                clauses.append("mailbox = ?")
                params.append(mailbox)
            if wanted:
                clauses.append(f"status IN ({','.join('?' for _ in wanted)})")
                params.extend(wanted)
            rows = conn.execute(
                f"SELECT letter FROM dead_letters WHERE {' AND '.join(clauses)} "  # noqa: S608 - only placeholders are interpolated
                "ORDER BY at DESC, email_id DESC LIMIT ?",
                (*params, max(0, limit)),
            ).fetchall()
            return [_letter(row[0]) for row in rows]

        return await self._run(query)

    async def request_redrive(self, email_id: str, at: float) -> DeadLetter | None:
        """dead_lettered becomes redrive_requested with its attempts cleared; else unchanged."""

        def write(conn: sqlite3.Connection) -> DeadLetter | None:
            with _transaction(conn):
                before = _find_letter(conn, email_id)
                if before is None or before.status != "dead_lettered":
                    return before
                _write_letter(
                    conn,
                    dataclasses.replace(
                        before,
                        status="redrive_requested",
                        redrives=before.redrives + 1,
                        requested_at=at,
                        updated_at=at,
                        note="",
                    ),
                )
                conn.execute("DELETE FROM attempts WHERE key = ?", (email_id,))
            return before

        return await self._run(write)

    async def pending_redrives(self, mailbox: str, limit: int) -> list[DeadLetter]:
        """The mailbox's requested re-drives, oldest request first."""

        def query(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT letter FROM dead_letters WHERE mailbox = ? AND status = ? "
                "ORDER BY requested_at, email_id LIMIT ?",
                (mailbox, "redrive_requested", max(0, limit)),
            ).fetchall()
            return [_letter(row[0]) for row in rows]

        return await self._run(query)

    async def finish_redrive(
        self, email_id: str, status: DeadLetterStatus, at: float, note: str
    ) -> bool:
        """Settles a pending re-drive; False when the letter has no pending request."""

        def write(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                before = _find_letter(conn, email_id)
                if before is None or before.status != "redrive_requested":
                    return False
                _write_letter(
                    conn,
                    dataclasses.replace(
                        before, status=status, requested_at=None, updated_at=at, note=note
                    ),
                )
            return True

        return await self._run(write)

    # Key-value.

    async def kv_get(self, key: str) -> Any | None:
        """The value stored under key, or None (also once its TTL has passed)."""

        def query(conn: sqlite3.Connection) -> Any | None:
            row = conn.execute(
                "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            ).fetchone()
            return None if row is None else json.loads(row[0])

        return await self._run(query)

    async def kv_set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Stores a JSON-serialisable value; without ttl it never expires."""
        text = dump_json(value)

        def write(conn: sqlite3.Connection) -> None:
            expires_at = None if ttl is None else time.time() + ttl
            conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at",
                (key, text, expires_at),
            )
            self._maybe_purge(conn)

        await self._run(write)

    async def kv_delete(self, key: str) -> None:
        """Removes key."""
        await self._run(lambda conn: conn.execute("DELETE FROM kv WHERE key = ?", (key,)))

    # Heartbeats.

    async def heartbeat(self, name: str, at: float, info: dict[str, Any] | None = None) -> None:
        """Records that the named task was alive at `at`."""
        text = dump_json(info or {})
        await self._run(
            lambda conn: conn.execute(
                "INSERT INTO heartbeats (name, at, info) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET at = excluded.at, info = excluded.info",
                (name, at, text),
            )
        )

    async def heartbeats(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """{name: {"at": time, **info}} for every task whose name starts with prefix."""

        def query(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            rows = conn.execute(
                "SELECT name, at, info FROM heartbeats WHERE substr(name, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchall()
            return {name: {**json.loads(info), "at": at} for name, at, info in rows}

        return await self._run(query)

    # Worker-thread side.

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise RuntimeError("LocalStore is closed; it cannot be used after close()")
        if self._executor is None:
            raise RuntimeError("LocalStore is not started; call start() first")
        return await self._submit(functools.partial(self._with_conn, fn), *args)

    async def _submit(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise RuntimeError("LocalStore is not started; call start() first")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from exc

    def _with_conn(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._conn is None:
            raise RuntimeError("LocalStore connection is not open")
        return fn(self._conn, *args)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"sqlite store {self.path}: cannot create directory: {exc}") from exc
        self._lock()
        try:
            # Autocommit mode: every multi-statement write opens its own BEGIN IMMEDIATE.
            # timeout: how long a write waits for another connection's lock before failing.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._timeout)
        except BaseException:
            self._unlock()
            raise
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: in WAL mode NORMAL may lose the last commits on power loss, and a
            # watermark that moved past a message whose outcome was lost means lost mail. The
            # writes are few and small, so the extra fsync per commit costs little.
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            _add_search_columns(conn)
        except BaseException:
            conn.close()
            self._unlock()
            raise
        self._conn = conn

    def _lock(self) -> None:
        if not self._instance_lock:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"sqlite store {self.path}: cannot open {lock_path}: {exc}") from exc
        # A restart may overlap the predecessor's shutdown (a few seconds): wait for it that long.
        deadline = time.monotonic() + self._lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)  # on the store's worker thread, never the event loop
                    continue
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StoreError(
                    f"sqlite store {self.path} is in use by another process (pid {other}): the "
                    "embedded store serves one sidecar; give each its own SIDECAR_DATA_DIR, or "
                    "share REDIS_URL between replicas"
                ) from None
        with contextlib.suppress(OSError):  # the pid only makes the message above clearer
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the only descriptor releases the flock

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._unlock()

    def _maybe_purge(self, conn: sqlite3.Connection) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY:
            return
        now = time.time()
        with _transaction(conn):
            conn.execute("DELETE FROM processed WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM attempts WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))

    @staticmethod
    def _acquire(conn: sqlite3.Connection, name: str, holder: str, ttl: float) -> Lease | None:
        now = time.time()
        expires_at = now + ttl
        with _transaction(conn):
            row = conn.execute(
                "SELECT holder, token, expires_at FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                token = 1
            elif row[2] > now and row[0] == holder:
                token = int(row[1])
            elif row[2] > now and row[0] != "":
                return None
            else:
                token = int(row[1]) + 1
            conn.execute(
                "INSERT INTO leases (name, holder, token, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "token = excluded.token, expires_at = excluded.expires_at",
                (name, holder, token, expires_at),
            )
        return Lease(name, holder, token, expires_at)

    @staticmethod
    def _renew(conn: sqlite3.Connection, lease: Lease, ttl: float) -> Lease | None:
        expires_at = time.time() + ttl
        cursor = conn.execute(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND token = ?",
            (expires_at, lease.name, lease.holder, lease.token),
        )
        if cursor.rowcount != 1:
            return None
        return dataclasses.replace(lease, expires_at=expires_at)

    @staticmethod
    def _take_over(conn: sqlite3.Connection, lease: Lease, holder: str, ttl: float) -> Lease | None:
        expires_at = time.time() + ttl
        cursor = conn.execute(
            "UPDATE leases SET holder = ?, token = token + 1, expires_at = ? "
            "WHERE name = ? AND holder = ? AND token = ?",
            (holder, expires_at, lease.name, lease.holder, lease.token),
        )
        if cursor.rowcount != 1:
            return None
        return Lease(lease.name, holder, lease.token + 1, expires_at)

    @staticmethod
    def _release(conn: sqlite3.Connection, lease: Lease) -> bool:
        # The row stays (holder emptied) so the next holder's token keeps growing.
        cursor = conn.execute(
            "UPDATE leases SET holder = '', expires_at = 0 "
            "WHERE name = ? AND holder = ? AND token = ?",
            (lease.name, lease.holder, lease.token),
        )
        return cursor.rowcount == 1

    @staticmethod
    def _set_watermark(
        conn: sqlite3.Connection, mailbox: str, mark: Watermark, fence: Lease | None
    ) -> bool:
        with _transaction(conn):
            if fence is not None:
                row = conn.execute(
                    "SELECT 1 FROM leases WHERE name = ? AND holder = ? AND token = ? "
                    "AND expires_at > ?",
                    (fence.name, fence.holder, fence.token, time.time()),
                ).fetchone()
                if row is None:
                    return False
            conn.execute(
                "INSERT INTO watermarks (mailbox, uidvalidity, uid) VALUES (?, ?, ?) "
                "ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity, "
                "uid = excluded.uid",
                (mailbox, mark.uidvalidity, mark.uid),
            )
        return True


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT on leaving the block (also by return), ROLLBACK on an error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")


def _record(text: str) -> DeliveryRecord:
    return record_from_json(text)


def _statuses(statuses: Sequence[str]) -> str:
    """Link statuses as one column a status is found in by instr: ",transferred,failed,"."""
    return "," + ",".join(statuses) + "," if statuses else ""


_WEBHOOK_OUTCOMES = "(" + ",".join(f"'{o}'" for o in WEBHOOK_OUTCOMES) + ")"
# Columns the search reads, added to files written before they existed.
_SEARCH_COLUMNS = {
    "mailbox": "TEXT NOT NULL DEFAULT ''",
    "statuses": "TEXT NOT NULL DEFAULT ''",
    "search": "TEXT NOT NULL DEFAULT ''",
}


def _add_search_columns(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(deliveries)")}
    for name, kind in _SEARCH_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE deliveries ADD COLUMN {name} {kind}")
    if "mailbox" not in have:
        # Records of earlier versions: their mailbox is in the JSON (they have no other facts).
        conn.execute("UPDATE deliveries SET mailbox = json_extract(record, '$.mailbox')")
    # Covers every filter of a search, so a search walks this index alone, newest first.
    conn.execute(
        "CREATE INDEX IF NOT EXISTS deliveries_search "
        "ON deliveries (at, mailbox, outcome, statuses, search)"
    )


def _mark_processed(conn: sqlite3.Connection, keys: Sequence[str], expires_at: float) -> None:
    conn.executemany(
        "INSERT INTO processed (key, expires_at) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at",
        [(key, expires_at) for key in keys],
    )


def _letter(text: str) -> DeadLetter:
    return DeadLetter(**json.loads(text))


def _find_letter(conn: sqlite3.Connection, email_id: str) -> DeadLetter | None:
    row = conn.execute("SELECT letter FROM dead_letters WHERE email_id = ?", (email_id,)).fetchone()
    return None if row is None else _letter(row[0])


def _write_letter(conn: sqlite3.Connection, letter: DeadLetter) -> None:
    conn.execute(
        "INSERT INTO dead_letters (email_id, mailbox, status, at, requested_at, letter) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (email_id) DO UPDATE SET "
        "mailbox = excluded.mailbox, status = excluded.status, at = excluded.at, "
        "requested_at = excluded.requested_at, letter = excluded.letter",
        (
            letter.email_id,
            letter.mailbox,
            letter.status,
            letter.at,
            letter.requested_at,
            json.dumps(dataclasses.asdict(letter)),
        ),
    )
