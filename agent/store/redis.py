"""The shared state store on Redis, so replicas coordinate leases and see one delivery log."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from agent.store import redis_deliveries
from agent.store.base import (
    DELIVERY_OUTCOMES,
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

# Idle pooled connections are PINGed before reuse after this many seconds, so a connection
# broken by a server restart is replaced before a command is sent on it.
_HEALTH_CHECK_INTERVAL = 10

# KEYS: lease, token counter, holder's lease index. ARGV: holder, now, ttl ms, expires_at, name.
# Free or expired: the next token from the counter; already ours: same token, new expiry.
_ACQUIRE = """
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token', 'expires_at')
local now = tonumber(ARGV[2])
local token
if cur[1] and tonumber(cur[3]) > now then
  if cur[1] ~= ARGV[1] then return false end
  token = cur[2]
else
  token = tostring(redis.call('INCR', KEYS[2]))
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token, 'expires_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return tonumber(token)
"""

# KEYS: lease, token counter, holder's lease index. ARGV: holder, token, ttl ms, expires_at, name.
# Renewable while nobody took it since: ours with that token, or gone (expired) with the
# counter still at our token (every takeover and release moves the counter on).
_RENEW = """
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if cur[1] then
  if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
elseif redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', ARGV[2], 'expires_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1
"""

# KEYS: lease, token counter, holder's lease index. ARGV: holder, token, name.
_RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if cur[1] then
  if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
  redis.call('DEL', KEYS[1])
elseif redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('INCR', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[3])
return 1
"""

# KEYS: lease, token counter, old holder's lease index, new holder's lease index.
# ARGV: old holder, old token, new holder, ttl ms, expires_at, name, now.
# Only while the old holder still has it with that token; the next token from the counter.
_TAKE_OVER = """
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token')
if not cur[1] or cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return false end
local token = tostring(redis.call('INCR', KEYS[2]))
redis.call('HSET', KEYS[1], 'holder', ARGV[3], 'token', token, 'expires_at', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[6])
return tonumber(token)
"""

# KEYS: lease, watermark. ARGV: holder, token, now, uidvalidity, uid.
_FENCED_WATERMARK = """
local cur = redis.call('HMGET', KEYS[1], 'holder', 'token', 'expires_at')
if not cur[1] or cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] then return 0 end
if tonumber(cur[3]) <= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], 'uidvalidity', ARGV[4], 'uid', ARGV[5])
return 1
"""

# KEYS: letter hash, letter index, the mailbox's pending set. ARGV: email id, at, cutoff, max
# letters, letter key prefix, pending key prefix, then the letter's field/value pairs. An earlier
# letter's re-drive count is kept; letters past the age or count bound are dropped.
_KEEP_LETTER = """
local redrives = redis.call('HGET', KEYS[1], 'redrives')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if redrives then redis.call('HSET', KEYS[1], 'redrives', redrives) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local function drop(id)
  local box = redis.call('HGET', ARGV[5] .. id, 'mailbox')
  redis.call('DEL', ARGV[5] .. id)
  if box then redis.call('ZREM', ARGV[6] .. box, id) end
  redis.call('ZREM', KEYS[2], id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])) do drop(id) end
local n = redis.call('ZCARD', KEYS[2])
local max = tonumber(ARGV[4])
if n > max then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, n - max - 1)) do drop(id) end
end
return 1
"""

# KEYS: letter hash, the mailbox's pending set, the letter's attempts. ARGV: at, email id.
_REQUEST_REDRIVE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'dead_lettered' then return 0 end
local n = tonumber(redis.call('HGET', KEYS[1], 'redrives') or '0') + 1
redis.call('HSET', KEYS[1], 'status', 'redrive_requested', 'redrives', n,
           'requested_at', ARGV[1], 'updated_at', ARGV[1], 'note', '')
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: letter hash, the mailbox's pending set. ARGV: status, at, note, email id.
_FINISH_REDRIVE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'redrive_requested' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'requested_at', '', 'updated_at', ARGV[2],
           'note', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
"""

# Letters listed per round trip while filtering by mailbox or status.
_LETTER_PAGE = 200


class RedisStore:
    """The Store protocol on Redis; leases and fenced watermarks are atomic Lua scripts."""

    backend = "redis"
    single_process = False

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        delivery_retention: float = 7 * 86400.0,
        delivery_max_records: int = 100_000,
        dead_letter_retention: float = 14 * 86400.0,
        dead_letter_max_records: int = 10_000,
        prefix: str = "sidecar:",
        scan_budget: int = redis_deliveries.SCAN_BUDGET,
    ) -> None:
        self._url = url
        self._masked_url = _mask_url(url)
        self._password = urlsplit(url).password or ""
        self._timeout = float(timeout)
        self._retention = float(delivery_retention)
        self._max_records = int(delivery_max_records)
        self._letter_retention = float(dead_letter_retention)
        self._max_letters = int(dead_letter_max_records)
        self._prefix = prefix
        # Log lines one search script call walks at most (Redis runs nothing else meanwhile).
        self._scan_budget = max(1, int(scan_budget))
        self._client: Redis | None = None
        self._closed = False
        self._scripts: dict[str, AsyncScript] = {}

    # Lifecycle.

    async def start(self) -> None:
        """Creates the connection pool; connections open on first use and reopen by themselves."""
        if self._closed:
            raise RuntimeError("RedisStore is closed; create a new one")
        if self._client is not None:
            return
        try:
            client = Redis.from_url(
                self._url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                health_check_interval=_HEALTH_CHECK_INTERVAL,
                # One immediate retry on a broken connection: after a server restart the pooled
                # socket is dead, the retry reconnects. Timeouts are not retried (bounded calls).
                retry=Retry(ConstantBackoff(0.05), 1, (RedisConnectionError,)),
                decode_responses=True,
            )
        except ValueError as exc:
            raise StoreError(f"redis URL {self._masked_url} is invalid: {self._mask(exc)}") from exc
        self._scripts = {
            name: client.register_script(text)
            for name, text in {
                "acquire": _ACQUIRE,
                "renew": _RENEW,
                "release": _RELEASE,
                "take_over": _TAKE_OVER,
                "fenced_watermark": _FENCED_WATERMARK,
                "append": redis_deliveries.APPEND,
                "search": redis_deliveries.SEARCH,
                "request_redrive": _REQUEST_REDRIVE,
                "finish_redrive": _FINISH_REDRIVE,
            }.items()
        }
        self._client = client

    async def close(self) -> None:
        """Closes every pooled connection; the store cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            # Closing a pool to a dead server has nothing left to release.
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def ping(self) -> float:
        """Seconds of one PING round trip."""
        client = self._live()
        started = time.perf_counter()
        await self._call(lambda: client.ping())
        return time.perf_counter() - started

    # Leases.

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Takes the lease if free or expired (next token), renews it if already ours."""
        self._live()
        expires_at = time.time() + ttl
        token = await self._call(
            lambda: self._scripts["acquire"](
                keys=[
                    self._key("lease", name),
                    self._key("lease-token", name),
                    self._key("leases-of", holder),
                ],
                args=[holder, repr(time.time()), _ms(ttl), repr(expires_at), name],
            )
        )
        if token is None:
            return None
        return Lease(name, holder, int(token), expires_at)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extends the lease while nobody else has taken it since (same holder and token)."""
        self._live()
        expires_at = time.time() + ttl
        done = await self._call(
            lambda: self._scripts["renew"](
                keys=[
                    self._key("lease", lease.name),
                    self._key("lease-token", lease.name),
                    self._key("leases-of", lease.holder),
                ],
                args=[lease.holder, str(lease.token), _ms(ttl), repr(expires_at), lease.name],
            )
        )
        return dataclasses.replace(lease, expires_at=expires_at) if done == 1 else None

    async def release_lease(self, lease: Lease) -> bool:
        """Frees the lease if it is still ours with that token."""
        self._live()
        done = await self._call(
            lambda: self._scripts["release"](
                keys=[
                    self._key("lease", lease.name),
                    self._key("lease-token", lease.name),
                    self._key("leases-of", lease.holder),
                ],
                args=[lease.holder, str(lease.token), lease.name],
            )
        )
        return bool(done == 1)

    async def lease_holder(self, name: str) -> Lease | None:
        """The current unexpired lease of that name, whoever holds it."""
        client = self._live()
        holder, token, expires_at = await self._call(
            lambda: client.hmget(self._key("lease", name), ["holder", "token", "expires_at"])
        )
        if holder is None or float(expires_at) <= time.time():
            return None
        return Lease(name, str(holder), int(token), float(expires_at))

    async def take_over_lease(self, lease: Lease, holder: str, ttl: float) -> Lease | None:
        """Takes the lease from its ended holder while it still has that token (next token)."""
        self._live()
        now = time.time()
        expires_at = now + ttl
        token = await self._call(
            lambda: self._scripts["take_over"](
                keys=[
                    self._key("lease", lease.name),
                    self._key("lease-token", lease.name),
                    self._key("leases-of", lease.holder),
                    self._key("leases-of", holder),
                ],
                args=[
                    lease.holder,
                    str(lease.token),
                    holder,
                    _ms(ttl),
                    repr(expires_at),
                    lease.name,
                    repr(now),
                ],
            )
        )
        return None if token is None else Lease(lease.name, holder, int(token), expires_at)

    async def count_leases(self, holder: str, prefix: str) -> int:
        """How many unexpired leases whose names start with prefix the holder has."""
        client = self._live()
        names = await self._call(
            lambda: client.zrangebyscore(
                self._key("leases-of", holder), f"({time.time()!r}", "+inf"
            )
        )
        return sum(1 for name in names if str(name).startswith(prefix))

    # Watermarks.

    async def get_watermark(self, mailbox: str) -> Watermark | None:
        """The mailbox's UIDVALIDITY and UID watermark, or None before the first cycle."""
        client = self._live()
        uidvalidity, uid = await self._call(
            lambda: client.hmget(self._key("watermark", mailbox), ["uidvalidity", "uid"])
        )
        if uidvalidity is None or uid is None:
            return None
        return Watermark(int(uidvalidity), int(uid))

    async def set_watermark(
        self, mailbox: str, mark: Watermark, *, fence: Lease | None = None
    ) -> bool:
        """Stores the watermark; with a fence, atomically only while that lease is held."""
        client = self._live()
        key = self._key("watermark", mailbox)
        if fence is None:
            await self._call(
                lambda: client.hset(key, mapping={"uidvalidity": mark.uidvalidity, "uid": mark.uid})
            )
            return True
        done = await self._call(
            lambda: self._scripts["fenced_watermark"](
                keys=[self._key("lease", fence.name), key],
                args=[
                    fence.holder,
                    str(fence.token),
                    repr(time.time()),
                    mark.uidvalidity,
                    mark.uid,
                ],
            )
        )
        return bool(done == 1)

    # Processed ids and attempts.

    async def mark_processed(self, key: str, ttl: float) -> bool:
        """Remembers key for ttl seconds; False if it was already there."""
        client = self._live()
        done = await self._call(
            lambda: client.set(self._key("processed", key), "1", nx=True, px=_ms(ttl))
        )
        return bool(done)

    async def is_processed(self, key: str) -> bool:
        """Whether key was marked processed and has not expired."""
        client = self._live()
        return bool(await self._call(lambda: client.exists(self._key("processed", key))))

    async def incr_attempts(self, key: str, ttl: float) -> int:
        """Counts one more attempt at key (the count expires ttl after the last attempt)."""
        client = self._live()
        name = self._key("attempts", key)

        async def run() -> int:
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.pexpire(name, _ms(ttl))
                count, _ = await pipe.execute()
            return int(count)

        return int(await self._call(run))

    async def clear_attempts(self, key: str) -> None:
        """Forgets the attempt count of key."""
        client = self._live()
        await self._call(lambda: client.delete(self._key("attempts", key)))

    # Delivery log.

    async def append_delivery(self, record: DeliveryRecord) -> None:
        """Appends one outcome and trims the log by age and by count."""
        self._live()
        keys, args = self._append_call(record)
        await self._call(lambda: self._scripts["append"](keys=keys, args=args))

    def _append_call(self, record: DeliveryRecord) -> tuple[list[str], list[Any]]:
        record_id = redis_deliveries.new_id()
        cutoff = time.time() - self._retention
        keys = [
            self._key("deliveries", "log"),
            self._key("deliveries", "records"),
            self._key("deliveries", record.outcome),
        ] + [self._key("deliveries", outcome) for outcome in DELIVERY_OUTCOMES]
        args = [
            repr(record.at),
            redis_deliveries.search_line(record_id, record),
            record_id,
            record_to_json(record),
            repr(cutoff),
            self._max_records,
        ]
        return keys, args

    async def any_processed(self, keys: Sequence[str]) -> bool:
        """Whether any of the keys is marked processed (one EXISTS)."""
        client = self._live()
        names = [self._key("processed", key) for key in keys]
        if not names:
            return False
        return bool(await self._call(lambda: client.exists(*names)))

    async def record_outcome(
        self, keys: Sequence[str], ttl: float, record: DeliveryRecord | None
    ) -> None:
        """Marks the keys and appends the record in one MULTI/EXEC transaction."""
        client = self._live()
        names = [self._key("processed", key) for key in keys]

        async def run() -> None:
            async with client.pipeline(transaction=True) as pipe:
                for name in names:
                    pipe.set(name, "1", px=_ms(ttl))
                if record is not None:
                    append_keys, args = self._append_call(record)
                    # EVAL, not EVALSHA: inside MULTI a missing script (after a restart) would
                    # fail only that command; the script text is small.
                    pipe.eval(redis_deliveries.APPEND, len(append_keys), *append_keys, *args)
                await pipe.execute()

        await self._call(run)

    async def delivery_window(self, seconds: float, now: float | None = None) -> DeliveryWindow:
        """Counts by webhook outcome in (now - seconds, now], and the newest such record."""
        client = self._live()
        end = time.time() if now is None else now

        async def run() -> tuple[list[int], list[list[tuple[str, float]]]]:
            async with client.pipeline(transaction=False) as pipe:
                for outcome in WEBHOOK_OUTCOMES:
                    pipe.zcount(self._key("deliveries", outcome), f"({end - seconds!r}", repr(end))
                for outcome in WEBHOOK_OUTCOMES:
                    pipe.zrevrangebyscore(
                        self._key("deliveries", outcome),
                        repr(end),
                        "-inf",
                        start=0,
                        num=1,
                        withscores=True,
                    )
                answers = await pipe.execute()
            n = len(WEBHOOK_OUTCOMES)
            return [int(c) for c in answers[:n]], [list(a) for a in answers[n:]]

        counts, newest = await self._call(run)
        by_outcome: dict[str, int] = {
            o: c for o, c in zip(WEBHOOK_OUTCOMES, counts, strict=True) if c
        }
        heads = [head[0] for head in newest if head]
        last: DeliveryRecord | None = None
        if heads:
            newest_id = max(heads, key=lambda head: head[1])[0]
            last = next(iter(await self._records([newest_id])), None)
        return DeliveryWindow(by_outcome, last)

    async def recent_deliveries(self, limit: int) -> list[DeliveryRecord]:
        """The newest records, newest first."""
        client = self._live()
        if limit <= 0:
            return []
        lines = await self._call(
            lambda: client.zrevrange(self._key("deliveries", "log"), 0, limit - 1)
        )
        return await self._records([line[: redis_deliveries.ID_LENGTH] for line in lines])

    async def search_deliveries(self, query: DeliveryQuery) -> DeliveryPage:
        """Scans the time-sorted log newest first in bounded script calls until the page fills."""
        self._live()
        limit = max(1, query.limit)
        top, tie = ("+inf" if query.until is None else repr(query.until)), ""
        if query.cursor is not None:
            at, tie = decode_cursor(query.cursor)
            if len(tie) != redis_deliveries.ID_LENGTH:
                raise ValueError("not a delivery cursor")
            top = repr(at if query.until is None else min(at, query.until))
        bottom = "-inf" if query.since is None else repr(query.since)
        status = f",{query.status}," if query.status else ""
        found: list[tuple[str, str]] = []
        keys = [self._key("deliveries", "log")]
        while len(found) <= limit:
            args: list[str | int] = [
                top,
                tie,
                bottom,
                redis_deliveries.clean(query.mailbox or ""),
                query.outcome or "",
                status,
                query.needle,
                limit + 1 - len(found),
                self._scan_budget,
            ]
            hits, last_score, last_id, done = await self._call(
                functools.partial(self._scripts["search"], keys=keys, args=args)
            )
            found += list(zip(hits[::2], hits[1::2], strict=True))
            if int(done) or not last_id:
                break
            top, tie = last_score, last_id
        page = found[:limit]
        cursor = None
        if len(found) > limit:
            cursor = encode_cursor(float(page[-1][1]), page[-1][0])
        return DeliveryPage(await self._records([record_id for record_id, _ in page]), cursor)

    async def delivery_log_size(self) -> DeliveryLogSize:
        """ZCARD of the log and the score of its oldest line."""
        client = self._live()
        key = self._key("deliveries", "log")

        async def run() -> tuple[int, list[tuple[str, float]]]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.zcard(key)
                pipe.zrange(key, 0, 0, withscores=True)
                count, oldest = await pipe.execute()
            return int(count), list(oldest)

        count, oldest = await self._call(run)
        return DeliveryLogSize(count, float(oldest[0][1]) if oldest else None)

    async def _records(self, ids: Sequence[str]) -> list[DeliveryRecord]:
        """The records of those ids in that order; ids trimmed meanwhile are left out."""
        if not ids:
            return []
        client = self._live()
        key = self._key("deliveries", "records")
        texts = await self._call(lambda: client.hmget(key, list(ids)))
        return [record_from_json(text) for text in texts if text is not None]

    # Dead letters.

    async def record_dead_letter(
        self, keys: Sequence[str], ttl: float, record: DeliveryRecord, letter: DeadLetter
    ) -> None:
        """Marks the keys, appends the record and keeps the letter in one MULTI/EXEC."""
        client = self._live()
        names = [self._key("processed", key) for key in keys]
        kept = dataclasses.replace(
            letter, status="dead_lettered", requested_at=None, updated_at=letter.at
        )
        letter_keys = [
            self._key("deadletter", letter.email_id),
            self._key("deadletters"),
            self._key("deadletters", "pending", letter.mailbox),
        ]
        letter_args: list[str | int] = [
            letter.email_id,
            repr(letter.at),
            repr(time.time() - self._letter_retention),
            self._max_letters,
            self._key("deadletter", ""),
            self._key("deadletters", "pending", ""),
            *_letter_fields(kept),
        ]

        async def run() -> None:
            async with client.pipeline(transaction=True) as pipe:
                for name in names:
                    pipe.set(name, "1", px=_ms(ttl))
                append_keys, args = self._append_call(record)
                pipe.eval(redis_deliveries.APPEND, len(append_keys), *append_keys, *args)
                pipe.eval(_KEEP_LETTER, len(letter_keys), *letter_keys, *letter_args)
                await pipe.execute()

        await self._call(run)

    async def dead_letter(self, email_id: str) -> DeadLetter | None:
        """The dead letter kept under that email id, or None."""
        client = self._live()
        fields = await self._call(lambda: client.hgetall(self._key("deadletter", email_id)))
        return _letter(fields) if fields else None

    async def dead_letters(
        self,
        *,
        mailbox: str | None = None,
        statuses: Sequence[DeadLetterStatus] = (),
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first; filters are applied a page of the index at a time."""
        client = self._live()
        wanted = set(statuses)
        found: list[DeadLetter] = []
        key = self._key("deadletters")
        start = 0
        while len(found) < limit:
            page = functools.partial(client.zrevrange, key, start, start + _LETTER_PAGE - 1)
            ids = await self._call(page)
            if not ids:
                break
            for letter in await self._letters(client, ids):
                if (mailbox is None or letter.mailbox == mailbox) and (
                    not wanted or letter.status in wanted
                ):
                    found.append(letter)
            start += _LETTER_PAGE
        return found[: max(0, limit)]

    async def request_redrive(self, email_id: str, at: float) -> DeadLetter | None:
        """dead_lettered becomes redrive_requested with its attempts cleared; else unchanged."""
        self._live()
        before = await self.dead_letter(email_id)
        if before is None or before.status != "dead_lettered":
            return before
        done = await self._call(
            lambda: self._scripts["request_redrive"](
                keys=[
                    self._key("deadletter", email_id),
                    self._key("deadletters", "pending", before.mailbox),
                    self._key("attempts", email_id),
                ],
                args=[repr(at), email_id],
            )
        )
        # Changed between the read and the script (asked twice at once): report what is there.
        return before if done == 1 else await self.dead_letter(email_id)

    async def pending_redrives(self, mailbox: str, limit: int) -> list[DeadLetter]:
        """The mailbox's requested re-drives, oldest request first."""
        client = self._live()
        if limit <= 0:
            return []
        ids = await self._call(
            lambda: client.zrange(self._key("deadletters", "pending", mailbox), 0, limit - 1)
        )
        return [
            letter
            for letter in await self._letters(client, ids)
            if letter.status == "redrive_requested"
        ]

    async def finish_redrive(
        self, email_id: str, status: DeadLetterStatus, at: float, note: str
    ) -> bool:
        """Settles a pending re-drive; False when the letter has no pending request."""
        self._live()
        letter = await self.dead_letter(email_id)
        if letter is None:
            return False
        done = await self._call(
            lambda: self._scripts["finish_redrive"](
                keys=[
                    self._key("deadletter", email_id),
                    self._key("deadletters", "pending", letter.mailbox),
                ],
                args=[status, repr(at), note, email_id],
            )
        )
        return bool(done == 1)

    async def _letters(self, client: Redis, ids: Sequence[str]) -> list[DeadLetter]:
        if not ids:
            return []

        async def run() -> list[dict[str, str]]:
            async with client.pipeline(transaction=False) as pipe:
                for email_id in ids:
                    pipe.hgetall(self._key("deadletter", email_id))
                return list(await pipe.execute())

        return [_letter(fields) for fields in await self._call(run) if fields]

    # Key-value.

    async def kv_get(self, key: str) -> Any | None:
        """The value stored under key, or None (also once its TTL has passed)."""
        client = self._live()
        text = await self._call(lambda: client.get(self._key("kv", key)))
        return None if text is None else json.loads(text)

    async def kv_set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Stores a JSON-serialisable value; without ttl it never expires."""
        client = self._live()
        text = dump_json(value)
        px = None if ttl is None else _ms(ttl)
        await self._call(lambda: client.set(self._key("kv", key), text, px=px))

    async def kv_delete(self, key: str) -> None:
        """Removes key."""
        client = self._live()
        await self._call(lambda: client.delete(self._key("kv", key)))

    # Heartbeats.

    async def heartbeat(self, name: str, at: float, info: dict[str, Any] | None = None) -> None:
        """Records that the named task was alive at `at`."""
        client = self._live()
        text = dump_json({**(info or {}), "at": at})
        await self._call(lambda: client.hset(self._key("heartbeats"), name, text))

    async def heartbeats(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """{name: {"at": time, **info}} for every task whose name starts with prefix."""
        client = self._live()
        beats = await self._call(lambda: client.hgetall(self._key("heartbeats")))
        return {
            str(name): dict(json.loads(text))
            for name, text in beats.items()
            if str(name).startswith(prefix)
        }

    # Plumbing.

    def _live(self) -> Redis:
        if self._closed:
            raise RuntimeError("RedisStore is closed; it cannot be used after close()")
        if self._client is None:
            raise RuntimeError("RedisStore is not started; call start() first")
        return self._client

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _call(self, op: Callable[[], Awaitable[Any]]) -> Any:
        # The socket timeouts bound each attempt; this bounds the call with its one retry.
        try:
            async with asyncio.timeout(2 * self._timeout + 0.5):
                return await op()
        except TimeoutError as exc:
            raise StoreError(
                f"redis unavailable at {self._masked_url}: no answer within {self._timeout:g}s"
            ) from exc
        except (RedisError, OSError) as exc:
            reason = self._mask(exc) or type(exc).__name__
            raise StoreError(f"redis unavailable at {self._masked_url}: {reason}") from exc

    def _mask(self, exc: BaseException) -> str:
        text = _mask_url(str(exc))
        if self._password:
            text = text.replace(self._password, "***")
        return text


def _mask_url(text: str) -> str:
    return re.sub(r"(\w+://)[^/@\s]*@", r"\1***@", text)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _letter_fields(letter: DeadLetter) -> list[str]:
    """The letter as a flat field/value list for HSET (None as the empty string)."""
    flat: list[str] = []
    for name, value in dataclasses.asdict(letter).items():
        flat += [
            name,
            "" if value is None else repr(value) if isinstance(value, float) else str(value),
        ]
    return flat


def _letter(fields: dict[str, str]) -> DeadLetter:
    requested = fields.get("requested_at", "")
    return DeadLetter(
        email_id=fields["email_id"],
        mailbox=fields["mailbox"],
        uidvalidity=int(fields["uidvalidity"]),
        uid=int(fields["uid"]),
        reason=fields.get("reason", ""),
        error_type=fields["error_type"],  # type: ignore[arg-type]
        at=float(fields["at"]),
        attempts=int(fields.get("attempts", "1")),
        status=fields["status"],  # type: ignore[arg-type]
        redrives=int(fields.get("redrives", "0")),
        requested_at=float(requested) if requested else None,
        updated_at=float(fields.get("updated_at") or 0.0),
        note=fields.get("note", ""),
    )
