"""Polls one mailbox while holding its lease; the UID watermark moves only over durable outcomes.

UIDVALIDITY rule: when the folder's UIDVALIDITY differs from the stored one, the watermark restarts
at 0 under the new UIDVALIDITY, and every message is checked against the processed set by its
content key (Message-ID, Date, From, Subject) before anything is sent. Mail already delivered under
the old UIDs is recognised and skipped without a webhook; mail that arrived around the change is
delivered. Nothing is lost, and nothing is delivered twice (mail without a Message-ID is the
exception: it cannot be recognised, so it is delivered again with a new Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opentelemetry.metrics import Observation
from opentelemetry.trace import StatusCode, Tracer

from agent.config import MailboxSettings, Settings
from agent.pipeline.imap import FetchedMessage, ImapError, ReconnectingSession
from agent.pipeline.process import EmailProcessor, ProcessOutcome
from agent.pipeline.redrive import carry_out_redrives
from agent.store.base import Lease, Store, StoreError, Watermark
from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger

LEASE_PREFIX = "lease:mailbox:"
REPLICA_PREFIX = "replica:"


class LeaseLost(RuntimeError):
    """Another replica took this mailbox's lease; polling it stops at once."""


class MailboxPoller:
    """One mailbox: lease, cycle, watermark, heartbeat; exposes status and a liveness hook."""

    def __init__(
        self,
        mailbox: MailboxSettings,
        settings: Settings,
        *,
        holder: str,
        store: Store,
        tracer: Tracer,
        instruments: Instruments,
        processor: EmailProcessor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mailbox = mailbox
        self._settings = settings
        self._holder = holder
        self._store = store
        self._tracer = tracer
        self._instruments = instruments
        self._processor = processor
        self._clock = clock
        self._log = get_logger("imap")
        self._session = ReconnectingSession(
            mailbox, settings.imap, tracer=tracer, instruments=instruments
        )
        self._lease: Lease | None = None
        self.started_at = clock()
        self.last_check: float | None = None
        self.last_success: float | None = None
        self.last_error = ""
        self.backlog = 0
        self.watermark: Watermark | None = None
        self._semaphore = asyncio.Semaphore(settings.imap.concurrency)
        instruments.publish("poller.leader", self._observe_leader)
        instruments.publish("poller.last_success.time", self._observe_last_success)
        instruments.publish("imap.mailbox.backlog", self._observe_backlog)

    @property
    def lease_name(self) -> str:
        """The store key of this mailbox's lease."""
        return LEASE_PREFIX + self.mailbox.name

    @property
    def leader(self) -> bool:
        """Whether this replica holds the lease now."""
        return self._lease is not None and self._lease.expires_at > self._clock()

    @property
    def stall_after(self) -> float:
        """No successful cycle for this long means the poller is stalled."""
        return max(3 * self.mailbox.poll_interval, 300.0)

    def liveness(self) -> tuple[bool, str]:
        """A leader with no successful cycle for stall_after seconds is stalled."""
        # A cycle that hangs stops renewing, so its lease expires long before stall_after: the
        # lease still held (even if expired) is what marks this poller as the one that should run.
        if self._lease is None:
            return True, ""
        since = self.last_success or self.started_at
        idle = self._clock() - since
        if idle > self.stall_after:
            return False, f"no successful cycle for {idle:.0f}s"
        return True, ""

    def status(self) -> dict[str, Any]:
        """This mailbox's part of /health's background_tasks.imap_poller."""
        ok, _ = self.liveness()
        if not ok:
            state = "stalled"
        elif self.last_error and self.leader:
            state = "error"
        elif self.leader:
            state = "ok"
        else:
            state = "standby"
        return {
            "status": state,
            "lock_acquired": self.leader,
            "leader": self.leader,
            "last_check": self.last_check,
            "last_success": self.last_success,
            "error": self.last_error or None,
            "watermark": None if self.watermark is None else self.watermark.uid,
            "uidvalidity": None if self.watermark is None else self.watermark.uidvalidity,
            "backlog": self.backlog,
        }

    async def run(self, stop: asyncio.Event, fair_share: Callable[[], int]) -> None:
        """Polls until stop is set; a lost lease stops polling until it is won again."""
        interval = self.mailbox.poll_interval
        try:
            while not stop.is_set():
                self.last_check = self._clock()
                try:
                    if await self._hold_lease(fair_share):
                        await self.cycle(stop)
                except LeaseLost:
                    self._log.warning("poller.lease_lost", mailbox=self.mailbox.name)
                    self._lease = None
                    await self._session.close()
                    self._session = ReconnectingSession(
                        self.mailbox,
                        self._settings.imap,
                        tracer=self._tracer,
                        instruments=self._instruments,
                    )
                except StoreError as exc:
                    self.last_error = f"store: {exc}"
                    self._log.error("poller.store_error", mailbox=self.mailbox.name, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        finally:
            await self._session.close()
            if self._lease is not None:
                with contextlib.suppress(StoreError):
                    await self._store.release_lease(self._lease)
                self._lease = None

    async def _hold_lease(self, fair_share: Callable[[], int]) -> bool:
        ttl = self._settings.imap.lease_ttl
        if self._lease is not None:
            self._lease = await self._store.renew_lease(self._lease, ttl)
            if self._lease is None:
                raise LeaseLost(self.mailbox.name)
            return True
        held = await self._store.count_leases(self._holder, LEASE_PREFIX)
        if held >= fair_share():
            return False
        self._lease = await self._store.acquire_lease(self.lease_name, self._holder, ttl)
        if self._lease is not None:
            self._log.info("poller.leader", mailbox=self.mailbox.name, token=self._lease.token)
        return self._lease is not None

    async def cycle(self, stop: asyncio.Event | None = None) -> None:
        """One poll cycle in its own trace: select, search above the watermark, fetch, process."""
        started = time.perf_counter()
        outcome = "ok"
        with self._tracer.start_as_current_span(
            "imap.poll",
            attributes={"imap.mailbox": self.mailbox.name, "server.address": self.mailbox.host},
        ) as span:
            try:
                processed = await self._cycle(span.get_span_context(), stop)
                span.set_attribute("imap.messages", processed)
                self.last_success = self._clock()
                self.last_error = ""
            except ImapError as exc:
                outcome = "error"
                self._session.mark_broken()
                self.last_error = f"imap {exc.error_type}: {exc}"
                span.set_status(StatusCode.ERROR, str(exc))
                span.set_attribute("error.type", exc.error_type)
                self._log.warning(
                    "poller.cycle_failed",
                    mailbox=self.mailbox.name,
                    error_type=exc.error_type,
                    error=str(exc),
                )
            except (LeaseLost, StoreError) as exc:
                outcome = "error"
                span.set_status(StatusCode.ERROR, str(exc))
                span.set_attribute("error.type", type(exc).__name__)
                raise
            finally:
                self._instruments.imap_poll_duration.record(
                    time.perf_counter() - started,
                    {"imap.mailbox": self.mailbox.name, "outcome": outcome},
                )
                await self._heartbeat()

    async def _cycle(self, poll_context: Any, stop: asyncio.Event | None) -> int:
        client = await self._session.ensure()
        status = await client.select()
        mark = await self._store.get_watermark(self.mailbox.name)
        if mark is None or mark.uidvalidity != status.uidvalidity:
            if mark is not None:
                self._log.warning(
                    "poller.uidvalidity_changed",
                    mailbox=self.mailbox.name,
                    old=mark.uidvalidity,
                    new=status.uidvalidity,
                    old_watermark=mark.uid,
                )
            mark = Watermark(uidvalidity=status.uidvalidity, uid=0)
            await self._save(mark)
        self.watermark = mark
        await carry_out_redrives(
            self.mailbox.name,
            status.uidvalidity,
            client=client,
            store=self._store,
            processor=self._processor,
            settings=self._settings,
            poll=poll_context,
            renew=self._renew,
            stop=stop,
        )
        uids = sorted(await client.search_uids_above(mark.uid))
        self.backlog = len(uids)
        if not uids:
            return 0
        sizes = await client.fetch_sizes(uids)
        for size in sizes.values():
            self._instruments.imap_message_size.record(size, {"imap.mailbox": self.mailbox.name})
        max_bytes = self._settings.parse.max_message_bytes
        blocked = False
        processed = 0
        for batch in fetch_batches(
            uids,
            sizes,
            max_count=self._settings.imap.batch_size,
            max_batch_bytes=self._settings.imap.batch_bytes,
            max_message_bytes=max_bytes,
        ):
            if stop is not None and stop.is_set():
                break
            messages = await client.fetch(batch, max_bytes=max_bytes, sizes=sizes)
            outcomes = await asyncio.gather(
                *(self._process(status.uidvalidity, message, poll_context) for message in messages)
            )
            processed += len(outcomes)
            by_uid = {o.uid: o for o in outcomes}
            # The watermark moves only over the contiguous prefix of durable outcomes.
            for uid in batch:
                if blocked:
                    break
                result = by_uid.get(uid)
                if result is None or not result.durable:
                    blocked = True
                    break
                mark = Watermark(uidvalidity=status.uidvalidity, uid=uid)
            if mark != self.watermark:
                await self._save(mark)
                self.watermark = mark
            self.backlog = len([u for u in uids if u > mark.uid])
            await self._renew()
        return processed

    async def _process(
        self, uidvalidity: int, message: FetchedMessage, poll_context: Any
    ) -> ProcessOutcome:
        async with self._semaphore:
            return await self._processor.process(
                self.mailbox.name, uidvalidity, message, poll_context
            )

    async def _save(self, mark: Watermark) -> None:
        if not await self._store.set_watermark(self.mailbox.name, mark, fence=self._lease):
            raise LeaseLost(self.mailbox.name)

    async def _renew(self) -> None:
        if self._lease is None:
            raise LeaseLost(self.mailbox.name)
        self._lease = await self._store.renew_lease(self._lease, self._settings.imap.lease_ttl)
        if self._lease is None:
            raise LeaseLost(self.mailbox.name)

    async def _heartbeat(self) -> None:
        with contextlib.suppress(StoreError):
            await self._store.heartbeat(
                f"poller:{self._holder}:{self.mailbox.name}",
                self._clock(),
                {"leader": self.leader, "last_success": self.last_success},
            )

    def _observe_leader(self) -> list[Observation]:
        return [Observation(1 if self.leader else 0, {"imap.mailbox": self.mailbox.name})]

    def _observe_last_success(self) -> list[Observation]:
        if self.last_success is None:
            return []
        return [Observation(self.last_success, {"imap.mailbox": self.mailbox.name})]

    def _observe_backlog(self) -> list[Observation]:
        if not self.leader:
            return []
        return [Observation(self.backlog, {"imap.mailbox": self.mailbox.name})]


def fetch_batches(
    uids: list[int],
    sizes: Mapping[int, int],
    *,
    max_count: int,
    max_batch_bytes: int,
    max_message_bytes: int,
) -> Iterator[list[int]]:
    """UIDs in order, cut into batches of at most max_count messages and max_batch_bytes.

    A message counts with the bytes that will be fetched of it (at most max_message_bytes); one
    larger than max_batch_bytes makes a batch of its own. UIDs without a size (expunged since
    the search) ride along at no cost, so the caller still sees them.
    """
    batch: list[int] = []
    held = 0
    for uid in uids:
        cost = min(sizes.get(uid, 0), max_message_bytes)
        if batch and (len(batch) >= max_count or held + cost > max_batch_bytes):
            yield batch
            batch, held = [], 0
        batch.append(uid)
        held += cost
    if batch:
        yield batch


def fair_share(mailboxes: int, replicas: int) -> int:
    """The most mailboxes one replica may lead: ceil(M / N), at least 1."""
    return max(1, math.ceil(mailboxes / max(1, replicas)))
