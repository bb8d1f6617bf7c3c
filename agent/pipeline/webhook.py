"""Delivers one signed webhook per message to the app, retrying only what a retry can fix."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from agent.config import WebhookSettings
from agent.pipeline.delivery_log import MailFacts
from agent.retry import Backoff, RetryBudget
from agent.store.base import DeadLetter, Store, StoreError
from agent.telemetry.catalogue import Instruments
from agent.telemetry.certificates import observing_context
from agent.telemetry.logs import get_logger
from agent.telemetry.masking import Masker

Outcome = Literal["delivered", "failed", "dead_lettered"]

_RETRY_AFTER_CAP = 60.0
# Answers kept while the store cannot record them: a store outage of this many deliveries.
_UNRECORDED_MAX = 10_000


@dataclass(frozen=True)
class WebhookResult:
    """The final outcome of one delivery, after every attempt."""

    outcome: Outcome
    attempts: int
    status_code: int | None
    error: str
    duration: float


@dataclass(frozen=True)
class _Unrecorded:
    """The app's final answer to one mail, kept until the store records it."""

    result: WebhookResult
    mailbox: str
    email_id: str
    processed_keys: tuple[str, ...]
    dead_letter: DeadLetter | None
    facts: MailFacts


def sign(body: bytes, secret: str) -> str:
    """The X-Signature-256 value: sha256=<hex HMAC-SHA256 of the body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class WebhookClient:
    """POSTs the payload with signature, idempotency key and traceparent; records every outcome."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        session: aiohttp.ClientSession,
        tracer: Tracer,
        instruments: Instruments,
        store: Store,
        masker: Masker,
        processed_ttl: float = 14 * 86400.0,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self._settings = settings
        # Once set (SIGTERM), no new attempt starts; one already sent runs to its answer.
        self._stopping = stopping or asyncio.Event()
        self._in_flight: set[asyncio.Task[WebhookResult]] = set()
        self._processed_ttl = processed_ttl
        self._session = session
        self._tracer = tracer
        self._instruments = instruments
        self._store = store
        self._masker = masker
        self._span_url = masker.mask_url(settings.url)  # the URL is fixed: masked once
        # HTTPS: the app's certificate is noted at each handshake, for tls.certificate.expiry.
        self._tls: ssl.SSLContext | bool = True
        target = urlsplit(settings.url)
        if target.scheme == "https":
            host, port = target.hostname or "", target.port or 443

            def note(peercert: object) -> None:
                instruments.certificates.record("webhook", host, port, peercert)

            self._tls = observing_context(note)
        self._log = get_logger("webhook")
        self._backoff = Backoff(initial=settings.backoff_initial, maximum=settings.backoff_max)
        # Final answers of the app that the store failed to record, by Idempotency-Key: the
        # message comes back on a later cycle, and its answer is recorded then instead of the
        # app being asked again; a clean shutdown records what is left (record_unrecorded).
        # Bounded; a forgotten one costs a duplicate the key lets the app drop. Only a process
        # that dies before recording loses them (a SIGKILL).
        self._unrecorded: OrderedDict[str, _Unrecorded] = OrderedDict()
        self.active = 0

    @property
    def masker(self) -> Masker:
        """The masker of everything this client logs and records."""
        return self._masker

    @property
    def configured(self) -> bool:
        """Whether WEBHOOK_URL is set."""
        return bool(self._settings.url)

    def encode(self, payload: dict[str, Any]) -> bytes:
        """The exact body bytes that are signed and sent."""
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()

    async def deliver(
        self,
        payload: dict[str, Any],
        *,
        idempotency_key: str,
        mailbox: str,
        email_id: str,
        processed_keys: Sequence[str] = (),
        dead_letter: DeadLetter | None = None,
        facts: MailFacts | None = None,
    ) -> WebhookResult:
        """Delivers with retries inside the budget, records the outcome, and returns it.

        A final outcome (delivered, dead_lettered) is recorded together with `processed_keys`
        in one store transaction; a store failure then raises StoreError, so the message is
        retried rather than forgotten. When the app refuses the mail for good, `dead_letter`
        is kept in that same transaction, with this delivery's reason, attempts and time.
        `facts` (headers and links) are logged with the outcome, so the mail can be found.

        Cancelling the caller does not cut a delivery off: a request the app may already have
        taken runs to its answer, which is recorded, so a clean shutdown never makes the app
        see the mail twice (finish() waits for them). Once stopping, no new attempt starts:
        the delivery ends as cancelled, with nothing recorded.
        """
        delivery = asyncio.ensure_future(
            self._deliver(
                payload,
                idempotency_key=idempotency_key,
                mailbox=mailbox,
                email_id=email_id,
                processed_keys=processed_keys,
                dead_letter=dead_letter,
                facts=facts or MailFacts(),
            )
        )
        self._in_flight.add(delivery)
        delivery.add_done_callback(self._settled)
        return await asyncio.shield(delivery)

    def _settled(self, delivery: asyncio.Task[WebhookResult]) -> None:
        self._in_flight.discard(delivery)
        # Marks a failure as seen: a caller cancelled by the shutdown no longer reads it, and
        # the mail, not recorded as processed, is delivered by the next process.
        if not delivery.cancelled():
            delivery.exception()

    async def finish(self, within: float) -> int:
        """Waits up to `within` seconds for deliveries in flight to get their answer recorded;
        returns how many were still unfinished (and are then cancelled)."""
        if not self._in_flight:
            return 0
        _done, pending = await asyncio.wait(set(self._in_flight), timeout=within)
        for delivery in pending:
            delivery.cancel()
        return len(pending)

    async def _deliver(
        self,
        payload: dict[str, Any],
        *,
        idempotency_key: str,
        mailbox: str,
        email_id: str,
        processed_keys: Sequence[str],
        dead_letter: DeadLetter | None,
        facts: MailFacts,
    ) -> WebhookResult:
        pending = self._unrecorded.get(idempotency_key)
        if pending is not None:
            await self._record_late(idempotency_key, pending)
            return pending.result
        started = time.monotonic()
        self.active += 1
        try:
            with self._tracer.start_as_current_span(
                "webhook.deliver",
                # email.id and imap.mailbox are on the parent email.process span.
                attributes={"webhook.idempotency_key": idempotency_key},
            ) as span:
                result = await self._attempts(self.encode(payload), idempotency_key)
                span.set_attribute("webhook.attempts", result.attempts)
                span.set_attribute("outcome", result.outcome)
                if result.status_code is not None:
                    span.set_attribute("http.response.status_code", result.status_code)
                if result.outcome != "delivered":
                    span.set_status(StatusCode.ERROR, result.error)
                    span.set_attribute("error.type", _error_type(result))
        finally:
            self.active -= 1
        duration = time.monotonic() - started
        result = WebhookResult(
            result.outcome, result.attempts, result.status_code, result.error, duration
        )
        self._instruments.webhook_deliveries.add(1, {"outcome": result.outcome})
        self._instruments.webhook_delivery_duration.record(duration, {"outcome": result.outcome})
        if result.outcome != "failed" and processed_keys:
            answer = _Unrecorded(
                result, mailbox, email_id, tuple(processed_keys), dead_letter, facts
            )
            self._remember(idempotency_key, answer)
        await self._record(
            result,
            mailbox=mailbox,
            email_id=email_id,
            processed_keys=processed_keys,
            dead_letter=dead_letter,
            facts=facts,
        )
        self._unrecorded.pop(idempotency_key, None)
        log = self._log.info if result.outcome == "delivered" else self._log.warning
        log(
            "webhook.delivery",
            outcome=result.outcome,
            attempts=result.attempts,
            status_code=result.status_code,
            error=result.error,
            email_id=email_id,
            mailbox=mailbox,
            duration_ms=round(duration * 1000, 1),
        )
        return result

    def _remember(self, key: str, answer: _Unrecorded) -> None:
        self._unrecorded[key] = answer
        while len(self._unrecorded) > _UNRECORDED_MAX:
            self._unrecorded.popitem(last=False)

    async def record_unrecorded(self) -> int:
        """Records the app's answers the store missed so far (at shutdown: a restart would
        send those mails again); stops at the first store failure. Returns how many are left."""
        for key, pending in list(self._unrecorded.items()):
            try:
                await self._record_late(key, pending)
            except StoreError as exc:
                self._log.error(
                    "webhook.answers_unrecorded", count=len(self._unrecorded), error=str(exc)
                )
                break
        return len(self._unrecorded)

    async def _record_late(self, key: str, pending: _Unrecorded) -> None:
        await self._record(
            pending.result,
            mailbox=pending.mailbox,
            email_id=pending.email_id,
            processed_keys=pending.processed_keys,
            dead_letter=pending.dead_letter,
            facts=pending.facts,
        )
        self._unrecorded.pop(key, None)
        self._log.info(
            "webhook.delivery_recorded_late",
            outcome=pending.result.outcome,
            email_id=pending.email_id,
            mailbox=pending.mailbox,
        )

    async def _record(
        self,
        result: WebhookResult,
        *,
        mailbox: str,
        email_id: str,
        processed_keys: Sequence[str],
        dead_letter: DeadLetter | None,
        facts: MailFacts,
    ) -> None:
        record = facts.record(
            at=time.time(),
            outcome=result.outcome,
            mailbox=mailbox,
            email_id=email_id,
            status_code=result.status_code,
            duration=result.duration,
            error=result.error,
            attempts=result.attempts,
        )
        if result.outcome == "dead_lettered" and processed_keys and dead_letter is not None:
            letter = dataclasses.replace(
                dead_letter, reason=result.error, attempts=result.attempts, at=record.at
            )
            await self._store.record_dead_letter(
                processed_keys, self._processed_ttl, record, letter
            )
            return
        if result.outcome != "failed" and processed_keys:
            await self._store.record_outcome(processed_keys, self._processed_ttl, record)
            return
        try:
            await self._store.append_delivery(record)
        except StoreError as exc:
            # The outcome still counts in metrics; the log keeps the record the store missed.
            self._log.error("webhook.delivery_log_failed", error=str(exc), email_id=email_id)

    async def _attempts(self, body: bytes, key: str) -> WebhookResult:
        settings = self._settings
        budget = RetryBudget(seconds=settings.retry_budget, max_attempts=settings.max_attempts)
        last_status: int | None = None
        last_error = ""
        while True:
            if self._stopping.is_set():
                # Shutting down: abandoned as a cancelled delivery is (nothing recorded, no
                # attempt counted against the mail), and the next process delivers it once.
                raise asyncio.CancelledError(f"stopping before attempt {budget.attempts + 1}")
            budget.attempts += 1
            retry_after: float | None = None
            try:
                status, retry_after = await self._post(body, key)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_status = None
                last_error = self._masker.mask(_describe(exc))
                retryable = True
            else:
                last_status = status
                if 200 <= status < 300:
                    return WebhookResult("delivered", budget.attempts, status, "", 0.0)
                last_error = f"HTTP {status}"
                retryable = status >= 500 or status == 429
                if not retryable:
                    return WebhookResult(
                        "dead_lettered",
                        budget.attempts,
                        status,
                        f"{last_error}: permanent failure",
                        0.0,
                    )
            delay = self._backoff.delay(budget.attempts)
            if retry_after is not None:
                delay = min(max(delay, retry_after), _RETRY_AFTER_CAP)
            if not budget.allows(delay):
                return WebhookResult(
                    "failed",
                    budget.attempts,
                    last_status,
                    f"{last_error} after {budget.attempts} attempts",
                    0.0,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _post(self, body: bytes, key: str) -> tuple[int, float | None]:
        settings = self._settings
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "User-Agent": "signal-sidecar",
        }
        if settings.secret:
            headers["X-Signature-256"] = sign(body, settings.secret)
        with self._tracer.start_as_current_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": self._span_url,
            },
        ) as span:
            propagate.inject(headers)
            timeout = aiohttp.ClientTimeout(total=settings.timeout)
            try:
                async with self._session.post(
                    settings.url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                    ssl=self._tls,
                ) as response:
                    await response.read()
                    span.set_attribute("http.response.status_code", response.status)
                    if response.status >= 400:
                        span.set_status(StatusCode.ERROR)
                        span.set_attribute("error.type", str(response.status))
                    return response.status, _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                span.set_status(StatusCode.ERROR)
                span.set_attribute("error.type", type(exc).__name__)
                raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _error_type(result: WebhookResult) -> str:
    if result.status_code is not None:
        return str(result.status_code)
    return "timeout" if "timed out" in result.error else "connection"
