"""Polls one mailbox while holding its lease; the UID watermark moves only over durable outcomes.

UIDVALIDITY rule: when the folder's UIDVALIDITY differs from the stored one, the watermark restarts
at 0 under the new UIDVALIDITY, and every message is checked against the processed set by its
content key (Message-ID, Date, From, Subject) before anything is sent. Mail already delivered under
the old UIDs is recognised and skipped without a webhook; mail that arrived around the change is
delivered. Nothing is lost, and nothing is delivered twice (mail without a Message-ID is the
exception: it cannot be recognised, so it is delivered again with a new Idempotency-Key).

Failure rule: whatever a cycle raises (IMAP, store, or anything unexpected) is a failed cycle:
logged with its type, counted on imap.poll.duration {outcome="error", error.type}, and tried
again after a backoff that starts at the poll interval and doubles up to
min(imap.reconnect_max_backoff, imap.lease_ttl / 2), so the lease is still renewed in time. A
mailbox in IDLE mode starts that backoff at min(poll interval, 1 s) instead: push delivery waits
on the reconnect, and the poll interval may be minutes long.
Only shutdown ends run(); a poller task that ends any other way is marked dead (watch()), which
fails /livez and /health.

Rest rule: between cycles the leader renews its lease every third of imap.lease_ttl, so the poll
interval is not tied to the TTL; a standby tries for the lease every min(poll interval, TTL / 4).
With imap.idle on and a server that offers IDLE the leader rests in IDLE (mode "idle"): the
server's EXISTS ends the rest, and the next cycle (the same watermark, lease and dedupe path)
fetches the mail at once; the poll interval remains as a catch-up sweep. A dead IDLE connection
ends the rest: the next cycle reconnects (with backoff) and catches up. Without IDLE, or after
imap.idle_max_failures IDLE failures in a row, the mailbox polls (mode "poll", with the reason in
/health and a log line) and tries IDLE again 15 minutes later.

Fair share: a leader above its share hands one lease back at a safe point, after a cycle
(its watermark recorded), never in the middle of a batch; the replica that lacks one takes it
on its next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opentelemetry.metrics import Observation
from opentelemetry.trace import Span, StatusCode, Tracer

from agent.config import MailboxSettings, Settings
from agent.pipeline.idle import IdleSession
from agent.pipeline.imap import (
    FetchedMessage,
    IdleEvents,
    IdleWake,
    ImapAuthError,
    ImapError,
    ReconnectingSession,
)
from agent.pipeline.oauth import AccessTokenSource, TokenError
from agent.pipeline.process import EmailProcessor, ProcessOutcome
from agent.pipeline.redrive import carry_out_redrives
from agent.pipeline.replicas import Replicas
from agent.retry import Backoff
from agent.store.base import Lease, Store, StoreError, Watermark
from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger
from agent.timestamps import iso

LEASE_PREFIX = "lease:mailbox:"
# After IDLE kept failing, how long the mailbox polls before IDLE is tried again.
IDLE_RETRY_AFTER = 900.0
MODES = ("idle", "poll")


class LeaseLost(RuntimeError):
    """Another replica took this mailbox's lease; polling it stops at once."""


class MailboxPoller:
    """One mailbox: lease, cycle, watermark, heartbeat; exposes status and a liveness hook."""

    def __init__(
        self,
        mailbox: MailboxSettings,
        settings: Settings,
        *,
        replicas: Replicas,
        store: Store,
        tracer: Tracer,
        instruments: Instruments,
        processor: EmailProcessor,
        tokens: AccessTokenSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mailbox = mailbox
        self._tokens = tokens
        self._settings = settings
        self._replicas = replicas
        self._holder = replicas.holder
        self._store = store
        self._tracer = tracer
        self._instruments = instruments
        self._processor = processor
        self._clock = clock
        self._log = get_logger("imap")
        self._session = self._new_session()
        self._lease: Lease | None = None
        interval = float(mailbox.poll_interval)
        reconnect_cap = min(float(settings.imap.reconnect_max_backoff), settings.imap.lease_ttl / 2)
        self._backoff = Backoff(initial=interval, maximum=max(interval, reconnect_cap))
        soon = min(interval, 1.0)
        self._idle_backoff = Backoff(initial=soon, maximum=max(soon, reconnect_cap))
        self.started_at = clock()
        self.last_check: float | None = None
        self.next_check: float | None = None
        self.last_success: float | None = None
        self.last_error = ""
        self.failures = 0
        self.retry_in: float | None = None
        self.ended = ""
        self.waiting_for: Lease | None = None
        self.standby_reason = ""
        self.backlog = 0
        # None until the first login attempt; then whether the latest one failed on auth.
        self.login_failing: bool | None = None
        self.watermark: Watermark | None = None
        self._semaphore = asyncio.Semaphore(settings.imap.concurrency)
        self.mode = "poll"
        self.mode_reason = "" if settings.imap.idle else "imap.idle is off"
        self._idle_failures = 0
        self._idle_retry_at = 0.0
        self._wakeup: IdleEvents | None = None
        # The highest UID the last cycle's search found: mail above it arrived after the search.
        self._searched_to = 0
        instruments.publish("poller.leader", self._observe_leader)
        instruments.publish("imap.mailbox.mode", self._observe_mode)
        instruments.publish("poller.last_success.time", self._observe_last_success)
        instruments.publish("imap.mailbox.backlog", self._observe_backlog)
        instruments.publish("imap.login.failing", self._observe_login_failing)

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
        return max(3 * self.mailbox.poll_interval, float(self._settings.imap.stall_after))

    def liveness(self) -> tuple[bool, str]:
        """Fails when the poller task has ended, or a leader had no successful cycle for
        stall_after seconds."""
        if self.ended:
            return False, f"poller task ended: {self.ended}"
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
        ok, why = self.liveness()
        if self.ended:
            state = "dead"
        elif not ok:
            state = "stalled"
        elif self.last_error and self.leader:
            state = "error"
        elif self.leader:
            state = "ok"
        else:
            state = "standby"
        waiting = self.waiting_for
        return {
            "status": state,
            "lock_acquired": self.leader,
            "leader": self.leader,
            "last_check": self.last_check,
            "next_check": self.next_check,
            "last_success": self.last_success,
            "error": (why if self.ended else self.last_error) or None,
            "consecutive_failures": self.failures,
            "retry_in": self.retry_in,
            "standby": None if self.leader or self.ended else (self.standby_reason or None),
            "waiting_for": None
            if waiting is None or self.leader
            else {"holder": waiting.holder, "until": iso(waiting.expires_at)},
            "watermark": None if self.watermark is None else self.watermark.uid,
            "uidvalidity": None if self.watermark is None else self.watermark.uidvalidity,
            "backlog": self.backlog,
            "mode": self.mode if self.leader else None,
            "mode_reason": (self.mode_reason or None) if self.leader else None,
        }

    def watch(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        """Marks this poller dead if its task ever ends before shutdown, whatever the cause."""

        def ended(done: asyncio.Task[None]) -> None:
            if stop.is_set():
                return
            if done.cancelled():
                reason = "cancelled"
            elif (exc := done.exception()) is not None:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "returned before shutdown"
            self.ended = reason
            self._lease = None
            self._log.error("poller.ended", mailbox=self.mailbox.name, reason=reason)

        task.add_done_callback(ended)

    async def run(self, stop: asyncio.Event) -> None:
        """Polls until stop is set; a lost lease stops polling until it is won again, and no
        failure ends the loop (each is a failed cycle, tried again after a backoff)."""
        try:
            while not stop.is_set():
                self.last_check = self._clock()
                try:
                    if await self._hold_lease():
                        await self.cycle(stop)
                        if not stop.is_set():
                            await self._hand_back_above_share()
                except LeaseLost:
                    self._log.warning("poller.lease_lost", mailbox=self.mailbox.name)
                    self._lease = None
                    await self._reset_session()
                except StoreError as exc:
                    self._failed(exc, "store", event="poller.store_error")
                except Exception as exc:  # the poller's boundary: only shutdown may end it
                    self._failed(exc, type(exc).__name__, event="poller.lease_failed")
                try:
                    await self._rest(stop, self._pause())
                except LeaseLost:
                    self._log.warning("poller.lease_lost", mailbox=self.mailbox.name)
                    self._lease = None
                    await self._reset_session()
        finally:
            await self._close()

    async def _rest(self, stop: asyncio.Event, seconds: float) -> None:
        """Waits until the next attempt, or shutdown, renewing the lease; rests in IDLE when it
        can and ends early when the server announces mail. Also wakes when this replica's share
        changes (unless backing off), so a leader above it hands back after one more cycle and
        a standby below it takes a free lease now rather than a poll interval later.

        Raises LeaseLost when a renewal finds the lease gone (IDLE is left first)."""
        events = [stop] if self.failures else [stop, self._replicas.changed()]
        waiters = {asyncio.ensure_future(event.wait()) for event in events}
        wake = IdleWake()  # the IDLE wait runs in a thread: this ends it
        for waiter in waiters:
            waiter.add_done_callback(lambda _done: wake.set())
        self.next_check = self._clock() + seconds
        deadline = time.monotonic() + seconds
        renew_every = self._settings.imap.lease_ttl / 3
        idle: IdleSession | None = None
        try:
            while not wake.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                chunk = min(left, renew_every) if self._lease is not None else left
                if idle is None:
                    idle = await self._start_idle()
                    if self._wakeup is not None:
                        return
                if idle is not None:
                    woke = await idle.wait(chunk, wake)
                    if woke is not None or idle.proven:
                        self._idle_failures = 0
                    if woke is not None:
                        self._wakeup = woke
                        return
                else:
                    await asyncio.wait(waiters, timeout=chunk, return_when=asyncio.FIRST_COMPLETED)
                if self._lease is not None and not wake.is_set():
                    await self._renew()
        except ImapError as exc:
            self._idle_failed(exc)
            idle = None
        except StoreError as exc:
            # The next cycle renews again and counts the failure; resting on is not safe.
            self._log.warning("poller.rest_renew_failed", mailbox=self.mailbox.name, error=str(exc))
        finally:
            self.next_check = None
            for waiter in waiters:
                waiter.cancel()
            if idle is not None:
                await self._end_idle(idle)
            wake.close()

    async def _start_idle(self) -> IdleSession | None:
        """IDLE on the leader's open connection, or None (and the mode says why) when it
        cannot or should not be used now."""
        if not self._settings.imap.idle or self._lease is None or self.failures:
            return None
        if time.monotonic() < self._idle_retry_at:
            return None
        client = self._session.current
        if client is None:
            return None
        if not await client.supports_idle():
            self._set_mode("poll", "the server does not offer IDLE")
            return None
        # Mail that arrived after the cycle's search was announced during its FETCH, where the
        # announcement is not kept, and IDLE will not repeat it: look once before idling.
        if await client.search_uids_above(self._searched_to):
            self._wakeup = IdleEvents(new_mail=True, woke_ns=time.time_ns())
            return None
        idle = IdleSession(client, self._settings.imap)
        await idle.start()
        self._set_mode("idle", "")
        return idle

    async def _end_idle(self, idle: IdleSession) -> None:
        try:
            await idle.end()
        except ImapError as exc:
            self._idle_failed(exc)

    def _idle_failed(self, exc: ImapError) -> None:
        """A dead or refused IDLE: the next cycle reconnects and catches up; after
        imap.idle_max_failures in a row the mailbox polls for IDLE_RETRY_AFTER seconds."""
        self._session.mark_broken()
        self._idle_failures += 1
        self._log.warning(
            "imap.idle_failed",
            mailbox=self.mailbox.name,
            error_type=exc.error_type,
            error=str(exc),
            consecutive_failures=self._idle_failures,
        )
        if self._idle_failures >= self._settings.imap.idle_max_failures:
            self._idle_failures = 0
            self._idle_retry_at = time.monotonic() + IDLE_RETRY_AFTER
            self._set_mode(
                "poll",
                f"IDLE failed {self._settings.imap.idle_max_failures} times in a row "
                f"({exc.error_type}); trying it again in {IDLE_RETRY_AFTER / 60:g} min",
            )

    def _set_mode(self, mode: str, reason: str) -> None:
        if (mode, reason) == (self.mode, self.mode_reason):
            return
        self.mode, self.mode_reason = mode, reason
        log = self._log.info if mode == "idle" else self._log.warning
        log("imap.mode", mailbox=self.mailbox.name, mode=mode, reason=reason or None)

    def _pause(self) -> float:
        if not self.failures:
            self.retry_in = None
            if self._lease is None:
                # A standby looks for a free lease at least every quarter TTL, however long the
                # poll interval: a lost leader is replaced within the TTL.
                return min(float(self.mailbox.poll_interval), self._settings.imap.lease_ttl / 4)
            return float(self.mailbox.poll_interval)
        if self.mode == "idle":
            self.retry_in = self._idle_backoff.delay(self.failures)
        else:
            self.retry_in = max(
                float(self.mailbox.poll_interval), self._backoff.delay(self.failures)
            )
        return self.retry_in

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self._session.close()
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(Exception):
                await self._store.release_lease(lease)

    def _new_session(self) -> ReconnectingSession:
        return ReconnectingSession(
            self.mailbox,
            self._settings.imap,
            tracer=self._tracer,
            instruments=self._instruments,
            tokens=self._tokens,
        )

    async def _reset_session(self) -> None:
        with contextlib.suppress(Exception):
            await self._session.close()
        self._session = self._new_session()

    def _failed(self, exc: BaseException, error_type: str, *, event: str) -> None:
        """Counts one failed attempt and logs it with its type (with a traceback when it is
        not one of the expected IMAP or store failures)."""
        self.failures += 1
        if isinstance(exc, ImapError):
            self.last_error = f"imap {error_type}: {exc}"
        elif isinstance(exc, StoreError):
            self.last_error = f"store: {exc}"
        else:
            self.last_error = f"{error_type}: {exc}"
        expected = isinstance(exc, ImapError | StoreError)
        log = self._log.warning if expected else self._log.error
        log(
            event,
            mailbox=self.mailbox.name,
            error_type=error_type,
            error=str(exc),
            consecutive_failures=self.failures,
            exc_info=None if expected else exc,
        )

    async def _hold_lease(self) -> bool:
        ttl = self._settings.imap.lease_ttl
        if self._lease is not None:
            self._lease = await self._store.renew_lease(self._lease, ttl)
            if self._lease is None:
                raise LeaseLost(self.mailbox.name)
            return True
        # One decision at a time per replica, so two pollers cannot both fill the last place.
        async with self._replicas.lock:
            held = await self._store.count_leases(self._holder, LEASE_PREFIX)
            share = self._replicas.share()
            if held >= share:
                self.waiting_for = None
                self.standby_reason = f"fair share: this replica leads {held} of at most {share}"
                return False
            lease = await self._store.acquire_lease(self.lease_name, self._holder, ttl)
            if lease is None:
                lease = await self._take_over(ttl)
        if lease is None:
            return False
        self._lease = lease
        self.waiting_for = None
        self.standby_reason = ""
        self._log.info("poller.leader", mailbox=self.mailbox.name, token=lease.token)
        return True

    async def _take_over(self, ttl: float) -> Lease | None:
        """The lease taken from a holder known to have ended; None: wait for whoever has it."""
        current = await self._store.lease_holder(self.lease_name)
        if current is None:  # expired or released since: free for the next attempt
            return None
        reason = await self._replicas.ended(current.holder)
        if not reason:
            self.waiting_for = current
            self.standby_reason = "lease held by another replica"
            return None
        lease = await self._store.take_over_lease(current, self._holder, ttl)
        if lease is not None:
            self._log.warning(
                "poller.lease_taken_over",
                mailbox=self.mailbox.name,
                previous_holder=current.holder,
                reason=reason,
                token=lease.token,
            )
        return lease

    async def _hand_back_above_share(self) -> None:
        """After a cycle (watermark recorded): gives this lease back if the replica leads more
        mailboxes than its share, so a replica below its share takes it."""
        if self._lease is None:
            return
        async with self._replicas.lock:
            held = await self._store.count_leases(self._holder, LEASE_PREFIX)
            share = self._replicas.share()
            if held <= share:
                return
            lease, self._lease = self._lease, None
            await self._store.release_lease(lease)
        self.standby_reason = f"handed back: this replica led {held}, its share is {share}"
        self._log.info(
            "poller.lease_handed_back", mailbox=self.mailbox.name, leads=held - 1, share=share
        )
        await self._reset_session()

    async def cycle(self, stop: asyncio.Event | None = None) -> None:
        """One poll cycle in its own trace: select, search above the watermark, fetch, process."""
        started = time.perf_counter()
        wakeup, self._wakeup = self._wakeup, None
        with self._tracer.start_as_current_span(
            "imap.poll",
            attributes={
                "imap.mailbox": self.mailbox.name,
                "server.address": self.mailbox.host,
                "imap.trigger": "poll" if wakeup is None else "idle",
            },
            start_time=None if wakeup is None else wakeup.woke_ns,
        ) as span:
            if wakeup is not None:
                self._trace_wakeup(wakeup)
            error_type = ""
            try:
                processed = await self._cycle(span.get_span_context(), stop)
                span.set_attribute("imap.messages", processed)
                self.last_success = self._clock()
                self.last_error = ""
                self.failures = 0
                self.login_failing = False
            except LeaseLost as exc:
                error_type = "lease_lost"
                _fail_span(span, exc, error_type)
                raise
            except Exception as exc:  # a failed cycle, whatever failed: the next one retries
                error_type = _error_type(exc)
                if isinstance(exc, ImapAuthError):
                    self.login_failing = True
                elif self._session.failures == 0:
                    self.login_failing = False  # logged in; something later failed
                if not isinstance(exc, StoreError):
                    # The connection may be mid-command or in an unknown state: start afresh.
                    self._session.mark_broken()
                _fail_span(span, exc, error_type)
                self._failed(exc, error_type, event="poller.cycle_failed")
            finally:
                attributes = {"imap.mailbox": self.mailbox.name, "outcome": "ok"}
                if error_type:
                    attributes |= {"outcome": "error", "error.type": error_type}
                self._instruments.imap_poll_duration.record(
                    time.perf_counter() - started, attributes
                )
                await self._heartbeat()

    def _trace_wakeup(self, wakeup: IdleEvents) -> None:
        """A child span from the server's announcement to the end of IDLE (DONE answered)."""
        self._tracer.start_span(
            "imap.idle.wakeup",
            start_time=wakeup.woke_ns,
            attributes={
                "imap.mailbox": self.mailbox.name,
                "imap.idle.responses": list(wakeup.responses),
            },
        ).end()

    async def _cycle(self, poll_context: Any, stop: asyncio.Event | None) -> int:
        await self._keep_token_fresh()
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
        self._searched_to = max(uids, default=mark.uid)
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

    async def _keep_token_fresh(self) -> None:
        """Refreshes an OAuth token nearing its expiry while the connection still works, so a
        failing token endpoint shows (log, metric, /health) before a login needs it."""
        if self._tokens is None:
            return
        # The source logs and counts a failure; the cycle goes on with the connection it has.
        with contextlib.suppress(TokenError):
            await self._tokens.token()

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

    def _observe_mode(self) -> list[Observation]:
        if not self.leader:
            return []
        return [
            Observation(
                1 if mode == self.mode else 0,
                {"imap.mailbox": self.mailbox.name, "imap.mode": mode},
            )
            for mode in MODES
        ]

    def _observe_login_failing(self) -> list[Observation]:
        if not self.leader or self.login_failing is None:
            return []
        attributes = {"imap.mailbox": self.mailbox.name, "imap.auth": self.mailbox.auth}
        return [Observation(1 if self.login_failing else 0, attributes)]

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


def pollers_status(pollers: list[MailboxPoller], replica: str = "") -> dict[str, Any]:
    """/health's background_tasks.imap_poller: the worst mailbox state, and each mailbox."""
    boxes = {p.mailbox.name: p.status() for p in pollers}
    statuses = {b["status"] for b in boxes.values()}
    overall = next((s for s in ("dead", "stalled", "error", "ok") if s in statuses), "standby")
    checks = [b["last_check"] for b in boxes.values() if b["last_check"]]
    successes = [b["last_success"] for b in boxes.values() if b["last_success"]]
    return {
        "status": overall,
        "lock_acquired": any(b["lock_acquired"] for b in boxes.values()),
        "leader": any(b["leader"] for b in boxes.values()),
        "last_check": max(checks) if checks else None,
        "last_success": max(successes) if successes else None,
        "replica": replica,
        "mode": _overall_mode(boxes),
        "mailboxes": boxes,
    }


def _overall_mode(boxes: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The replica's mode: idle when every mailbox it leads idles, poll when one of them polls,
    None when it leads none."""
    modes = {b["mode"] for b in boxes.values() if b["leader"]}
    if not modes:
        return None
    return "idle" if modes == {"idle"} else "poll"


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, ImapError):
        return exc.error_type
    if isinstance(exc, StoreError):
        return "store"
    return type(exc).__name__


def _fail_span(span: Span, exc: BaseException, error_type: str) -> None:
    span.set_status(StatusCode.ERROR, str(exc))
    span.set_attribute("error.type", error_type)
