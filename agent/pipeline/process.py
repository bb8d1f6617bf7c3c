"""One email end to end: parse off the loop, find links, transfer them, deliver one webhook."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanContext, StatusCode, Tracer

from agent.config import Settings
from agent.pipeline.budget import ByteBudget
from agent.pipeline.delivery_log import MailFacts, mail_facts
from agent.pipeline.imap import FetchedMessage
from agent.pipeline.links import DeliveryLink, LinkRegistry
from agent.pipeline.parse import ParsedEmail, parse_email
from agent.pipeline.webhook import WebhookClient
from agent.store.base import (
    DEAD_LETTER_REASONS,
    DeadLetter,
    DeadLetterReason,
    DeliveryRecord,
    Store,
    StoreError,
)
from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger

Outcome = Literal["delivered", "dead_lettered", "failed", "skipped", "duplicate"]

DURABLE: frozenset[str] = frozenset({"delivered", "dead_lettered", "skipped", "duplicate"})


@dataclass(frozen=True)
class ProcessOutcome:
    """What became of one message; durable outcomes let the watermark move past it."""

    uid: int
    outcome: Outcome
    reason: str = ""
    # For failed and dead-lettered outcomes: the bounded name of why (None: processing_error).
    error_type: DeadLetterReason | None = None
    # What the delivery log keeps of the mail, once it was parsed.
    facts: MailFacts | None = None

    @property
    def durable(self) -> bool:
        """Whether the outcome is recorded for good (the watermark may pass it)."""
        return self.outcome in DURABLE


class LinkTransfers(Protocol):
    """Copies delivery links into R2 (the R2 transfer client has this shape)."""

    async def transfer_all(
        self, links: list[DeliveryLink], *, email_id: str
    ) -> list[dict[str, Any]]:
        """One delivery_links entry per link: status, key, r2_url, size (total), error, files."""


def email_id_for(mailbox: str, uidvalidity: int, uid: int) -> str:
    """Stable id of one message in one mailbox: it is also the webhook's Idempotency-Key."""
    return hashlib.sha256(f"{mailbox}\0{uidvalidity}\0{uid}".encode()).hexdigest()[:32]


def content_key(parsed: ParsedEmail) -> str | None:
    """Identity of a mail independent of UIDs (survives a UIDVALIDITY change), when it has one."""
    if not parsed.message_id:
        return None
    raw = "\0".join((parsed.message_id, parsed.date, parsed.from_, parsed.subject))
    return "msg:" + hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:32]


def _counted_as(mailbox: str, outcome: str, reason: DeadLetterReason) -> dict[str, str]:
    """imap.messages attributes: a dead letter also says why, as a bounded error.type."""
    attributes = {"imap.mailbox": mailbox, "outcome": outcome}
    if outcome == "dead_lettered":
        attributes["error.type"] = reason
    return attributes


def skipped_links(links: list[DeliveryLink]) -> list[dict[str, Any]]:
    """delivery_links entries when no R2 Worker is configured."""
    return [
        {
            "provider": link.provider,
            "url": link.url,
            "status": "skipped",
            "key": None,
            "r2_url": None,
            "size": None,
            "error": None,
            "files": [],
        }
        for link in links
    ]


class EmailProcessor:
    """Turns a fetched message into exactly one recorded outcome."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        tracer: Tracer,
        instruments: Instruments,
        webhook: WebhookClient,
        links: LinkRegistry,
        transfers: LinkTransfers | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._tracer = tracer
        self._instruments = instruments
        self._webhook = webhook
        self._links = links
        self._transfers = transfers
        self._clock = clock
        self._log = get_logger("imap")
        # Emails with an attempt count in the store: only those need it cleared once done.
        self._counted: set[str] = set()
        self._parse_budget = ByteBudget(settings.parse.max_bytes_in_flight)
        # Every dead-letter series exists from the start, at zero: the first dead letter of a
        # mailbox is then an increase to any rule engine (the built-in one, Prometheus).
        for box in settings.mailboxes:
            for reason in DEAD_LETTER_REASONS:
                instruments.imap_messages.add(0, _counted_as(box.name, "dead_lettered", reason))

    async def process(
        self,
        mailbox: str,
        uidvalidity: int,
        message: FetchedMessage,
        poll: SpanContext | None = None,
        *,
        redrive: bool = False,
    ) -> ProcessOutcome:
        """Processes one message in its own trace, linked to the poll cycle that found it.

        A re-drive processes a dead-lettered message again: its processed marks (left by the
        dead letter) do not make it a duplicate; its dead-letter record guards against twice.
        """
        email_id = email_id_for(mailbox, uidvalidity, message.uid)
        links = [Link(poll)] if poll is not None and poll.is_valid else []
        # A new root: one trace per email, so a slow transfer never hides in a cycle's trace.
        with self._tracer.start_as_current_span(
            "email.process",
            context=otel_context.Context(),
            links=links,
            attributes={
                "imap.mailbox": mailbox,
                "imap.uid": message.uid,
                "email.id": email_id,
                "imap.message.size": message.size,
            },
        ) as span:
            if message.partial:
                span.set_attribute("imap.message.partial", True)
            if redrive:
                span.set_attribute("email.redrive", True)
            try:
                outcome = await self._process(mailbox, uidvalidity, email_id, message, redrive)
            except StoreError as exc:
                outcome = ProcessOutcome(message.uid, "failed", f"store: {exc}", "store_error")
            if outcome.outcome == "failed":
                outcome = await self._count_failure(mailbox, uidvalidity, email_id, outcome)
            span.set_attribute("outcome", outcome.outcome)
            if outcome.outcome in ("failed", "dead_lettered"):
                span.set_status(StatusCode.ERROR, outcome.reason)
                span.set_attribute("error.type", outcome.error_type or "processing_error")
            self._instruments.imap_messages.add(
                1, _counted_as(mailbox, outcome.outcome, outcome.error_type or "processing_error")
            )
            return outcome

    async def _process(
        self, mailbox: str, uidvalidity: int, email_id: str, message: FetchedMessage, redrive: bool
    ) -> ProcessOutcome:
        uid = message.uid
        parsed = await self._parse(message)
        key = content_key(parsed)
        skip_existing = self._settings.imap.uidvalidity_policy == "skip_existing"
        # One round trip for both dedupe keys (a crash's re-run parses again, which is cheap).
        seen = [email_id, key] if key is not None and skip_existing else [email_id]
        masker = self._webhook.masker
        if not redrive and await self._store.any_processed(seen):
            facts = mail_facts(parsed, [], masker)
            await self._done(email_id, None, self._logged(mailbox, email_id, "duplicate", facts))
            return ProcessOutcome(uid, "duplicate", "already processed")
        found = parsed.links
        if not found and self._settings.webhook.only_with_links:
            facts = mail_facts(parsed, [], masker)
            await self._done(email_id, key, self._logged(mailbox, email_id, "skipped", facts))
            return ProcessOutcome(uid, "skipped", "no delivery links")
        if self._transfers is not None and found:
            delivery_links = await self._transfers.transfer_all(found, email_id=email_id)
        else:
            delivery_links = skipped_links(found)
        facts = mail_facts(parsed, delivery_links, masker)
        if not self._webhook.configured:
            skipped = self._logged(
                mailbox, email_id, "skipped", facts, error="WEBHOOK_URL is not set"
            )
            await self._done(email_id, key, skipped)
            return ProcessOutcome(uid, "skipped", "WEBHOOK_URL is not set")
        payload = self._payload(mailbox, email_id, parsed, message, delivery_links)
        result = await self._webhook.deliver(
            payload,
            idempotency_key=email_id,
            mailbox=mailbox,
            email_id=email_id,
            processed_keys=[email_id] if key is None else [email_id, key],
            # Kept with the outcome if the app refuses the mail for good (a 4xx answer).
            dead_letter=DeadLetter(
                email_id, mailbox, uidvalidity, uid, "", "webhook_rejected", self._clock()
            ),
            facts=facts,
        )
        if result.outcome == "failed":
            return ProcessOutcome(uid, "failed", result.error, "webhook_unavailable", facts)
        await self._forget_attempts(email_id)
        if result.outcome == "dead_lettered":
            self._log.error(
                "email.dead_lettered",
                email_id=email_id,
                mailbox=mailbox,
                uid=uid,
                reason=result.error,
                error_type="webhook_rejected",
            )
            return ProcessOutcome(uid, "dead_lettered", result.error, "webhook_rejected")
        if message.internal_date is not None and not redrive:
            # A re-drive's lag would measure the operator's fix, not the pipeline.
            lag = max(0.0, self._clock() - message.internal_date)
            self._instruments.delivery_lag.record(lag, {"imap.mailbox": mailbox})
        return ProcessOutcome(uid, "delivered")

    async def _parse(self, message: FetchedMessage) -> ParsedEmail:
        limits = self._settings.parse
        started = time.perf_counter()
        with self._tracer.start_as_current_span("email.parse") as span:
            data = message.take_data()
            # Counted up to max_html_bytes: the HTML tree, not the raw size, is what costs.
            async with self._parse_budget.hold(min(len(data), limits.max_html_bytes)):
                parsed = await asyncio.to_thread(
                    parse_email, data, limits, partial=message.partial, links=self._links
                )
            del data
            span.set_attribute("email.parts", parsed.parts_seen)
            span.set_attribute("email.html.bytes", parsed.html_bytes)
            span.set_attribute("email.html.truncated", parsed.html_truncated)
            if parsed.limits_hit:
                span.set_attribute("email.limits_hit", list(parsed.limits_hit))
        self._instruments.parse_duration.record(time.perf_counter() - started)
        if parsed.html_truncated:
            self._instruments.html_truncations.add(1)
            self._log.warning(
                "email.html_truncated",
                html_bytes=parsed.html_bytes,
                max_html_bytes=limits.max_html_bytes,
                uid=message.uid,
            )
        if parsed.limits_hit:
            self._log.warning(
                "email.limits_hit",
                limits=list(parsed.limits_hit),
                uid=message.uid,
                size=message.size,
            )
        return parsed

    async def _done(self, email_id: str, key: str | None, record: DeliveryRecord) -> None:
        keys = [email_id] if key is None else [email_id, key]
        await self._store.record_outcome(keys, self._settings.store.processed_ttl, record)
        await self._forget_attempts(email_id)

    def _logged(
        self, mailbox: str, email_id: str, outcome: Outcome, facts: MailFacts, error: str = ""
    ) -> DeliveryRecord:
        """A delivery log record of a mail that needed no webhook."""
        return facts.record(
            at=self._clock(),
            outcome=outcome,
            mailbox=mailbox,
            email_id=email_id,
            error=error,
            attempts=0,
        )

    async def _forget_attempts(self, email_id: str) -> None:
        # A count left by an earlier process is harmless (a processed id is never retried) and
        # expires with processed_ttl; skipping the clear saves a store round trip per message.
        if email_id in self._counted:
            await self._store.clear_attempts(email_id)
            self._counted.discard(email_id)

    async def _count_failure(
        self, mailbox: str, uidvalidity: int, email_id: str, outcome: ProcessOutcome
    ) -> ProcessOutcome:
        """After imap.max_attempts failed attempts the message is dead-lettered with its reason."""
        ttl = self._settings.store.processed_ttl
        error_type = outcome.error_type or "processing_error"
        try:
            attempts = await self._store.incr_attempts(email_id, ttl)
            self._counted.add(email_id)
            if attempts < self._settings.imap.max_attempts:
                return outcome
            reason = f"gave up after {attempts} attempts: {outcome.reason}"
            at = self._clock()
            facts = outcome.facts or MailFacts()
            record = facts.record(
                at=at,
                outcome="dead_lettered",
                mailbox=mailbox,
                email_id=email_id,
                error=reason,
                attempts=attempts,
            )
            letter = DeadLetter(
                email_id, mailbox, uidvalidity, outcome.uid, reason, error_type, at, attempts
            )
            await self._store.record_dead_letter([email_id], ttl, record, letter)
            await self._forget_attempts(email_id)
        except StoreError:
            return outcome
        self._log.error(
            "email.dead_lettered",
            email_id=email_id,
            mailbox=mailbox,
            uid=outcome.uid,
            reason=reason,
            error_type=error_type,
        )
        return ProcessOutcome(outcome.uid, "dead_lettered", reason, error_type)

    def _payload(
        self,
        mailbox: str,
        email_id: str,
        parsed: ParsedEmail,
        message: FetchedMessage,
        delivery_links: list[dict[str, Any]],
    ) -> dict[str, Any]:
        received = parsed.date or datetime.fromtimestamp(self._clock(), UTC).isoformat()
        return {
            "email_id": email_id,
            "message_id": parsed.message_id,
            "mailbox": mailbox,
            "subject": parsed.subject,
            "from": parsed.from_,
            "to": list(parsed.to),
            "received_at": received,
            "text_excerpt": parsed.excerpt(self._settings.parse.excerpt_chars),
            "html_truncated": parsed.html_truncated,
            "message_truncated": message.partial,
            "delivery_links": delivery_links,
        }
