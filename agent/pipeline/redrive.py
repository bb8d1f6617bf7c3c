"""Re-drives dead-lettered mail once its cause is fixed: asked for in the store, carried out by the
mailbox's lease holder at a safe point of its cycle, through the normal path, with the same key.

Asking is idempotent by the email id (the webhook's Idempotency-Key): only a dead_lettered letter
becomes redrive_requested, so asking twice is asking once, and a delivered letter is never sent
again. Whichever replica holds the mailbox's lease fetches the UID again (while UIDVALIDITY
still matches; otherwise the letter is `gone`), processes it with a fresh attempt budget, and
settles the request with the outcome. A crash between the app's answer and that record means
one more delivery with the same Idempotency-Key, exactly as for new mail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from opentelemetry.trace import SpanContext

from agent.config import Settings
from agent.pipeline.imap import FetchedMessage
from agent.pipeline.process import ProcessOutcome
from agent.store.base import DeadLetter, DeadLetterStatus, Store
from agent.telemetry.logs import get_logger

# A cycle carries out at most this many re-drives, so new mail is never held up for long.
REDRIVES_PER_CYCLE = 10
# The cycles a re-drive started in without reaching an outcome are counted under this prefix;
# past imap.max_attempts it is abandoned, so it never holds up new mail for good.
_ATTEMPTS_PREFIX = "redrive:"

# Letters an operator still has to act on (the default listing).
AWAITING: tuple[DeadLetterStatus, ...] = ("dead_lettered", "redrive_requested")

RedriveAnswer = Literal[
    "requested", "already_requested", "already_delivered", "gone", "not_found", "not_polled"
]
_ANSWERS: dict[DeadLetterStatus, RedriveAnswer] = {
    "dead_lettered": "requested",
    "redrive_requested": "already_requested",
    "delivered": "already_delivered",
    "gone": "gone",
}


@dataclass(frozen=True)
class RedriveRequest:
    """What asking for a re-drive did, and the dead letter as it is now (None: no such letter)."""

    answer: RedriveAnswer
    letter: DeadLetter | None

    @property
    def accepted(self) -> bool:
        """Whether a re-drive is now pending (asked now or before)."""
        return self.answer in ("requested", "already_requested")

    def describe(self) -> str:
        """One line for people: what happened and what happens next."""
        letter = self.letter
        if letter is None:
            return "no dead letter has this id: never dead-lettered, or kept no longer"
        where = f"mailbox {letter.mailbox}, UID {letter.uid}"
        return {
            "requested": f"re-drive requested ({where}); the mailbox's poller delivers it at "
            "its next cycle",
            "already_requested": f"a re-drive is already pending ({where})",
            "already_delivered": f"already delivered by an earlier re-drive ({where})",
            "gone": f"cannot be re-driven: {letter.note or 'the message is gone'} ({where})",
            "not_found": "no dead letter has this id",
            "not_polled": f"mailbox {letter.mailbox} is not configured here, so nobody would "
            "carry the re-drive out",
        }[self.answer]


async def request_redrive(
    store: Store,
    email_id: str,
    *,
    mailboxes: Collection[str] | None = None,
    now: float | None = None,
) -> RedriveRequest:
    """Asks for a re-drive of the dead letter with that email id; asking again changes nothing.

    With `mailboxes` (the configured names), a letter of a mailbox nobody polls is refused.
    """
    if mailboxes is not None:
        letter = await store.dead_letter(email_id)
        if letter is not None and letter.mailbox not in mailboxes:
            return RedriveRequest("not_polled", letter)
    before = await store.request_redrive(email_id, time.time() if now is None else now)
    if before is None:
        return RedriveRequest("not_found", None)
    return RedriveRequest(_ANSWERS[before.status], await store.dead_letter(email_id) or before)


async def wait_for_outcome(
    store: Store, email_id: str, *, seconds: float, every: float = 0.5
) -> DeadLetter | None:
    """The letter once its pending re-drive is settled, or as it is when `seconds` ran out."""
    deadline = time.monotonic() + seconds
    while True:
        letter = await store.dead_letter(email_id)
        if letter is None or letter.status != "redrive_requested":
            return letter
        if time.monotonic() >= deadline:
            return letter
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))


class MessageSource(Protocol):
    """Fetches messages by UID from the selected folder (the IMAP client has this shape)."""

    async def fetch(self, uids: Sequence[int], *, max_bytes: int) -> list[FetchedMessage]:
        """The messages that still exist, each cut at max_bytes."""


class Redrivable(Protocol):
    """Processes one message end to end (the email processor has this shape)."""

    async def process(
        self,
        mailbox: str,
        uidvalidity: int,
        message: FetchedMessage,
        poll: SpanContext | None = None,
        *,
        redrive: bool = False,
    ) -> ProcessOutcome:
        """One recorded outcome for the message."""


async def carry_out_redrives(
    mailbox: str,
    uidvalidity: int,
    *,
    client: MessageSource,
    store: Store,
    processor: Redrivable,
    settings: Settings,
    poll: SpanContext | None = None,
    renew: Callable[[], Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Carries out the mailbox's pending re-drives, oldest request first; returns how many ran.

    Called by the lease holder with the folder selected. `renew` keeps the lease after each one.
    """
    pending = await store.pending_redrives(mailbox, REDRIVES_PER_CYCLE)
    done = 0
    for letter in pending:
        if stop is not None and stop.is_set():
            break
        await _carry_out(letter, uidvalidity, client, store, processor, settings, poll)
        done += 1
        if renew is not None:
            await renew()
    return done


async def _carry_out(
    letter: DeadLetter,
    uidvalidity: int,
    client: MessageSource,
    store: Store,
    processor: Redrivable,
    settings: Settings,
    poll: SpanContext | None,
) -> None:
    log = get_logger("imap")
    fields = {"email_id": letter.email_id, "mailbox": letter.mailbox, "uid": letter.uid}
    tries = _ATTEMPTS_PREFIX + letter.email_id
    started = await store.incr_attempts(tries, settings.store.processed_ttl)
    if started > settings.imap.max_attempts:
        note = f"abandoned: {started - 1} cycles ended before it did (see poller.cycle_failed)"
        await store.finish_redrive(letter.email_id, "dead_lettered", time.time(), note)
        await store.clear_attempts(tries)
        log.error("email.redrive", outcome="abandoned", note=note, **fields)
        return
    await _redrive(letter, uidvalidity, client, store, processor, settings, poll)
    await store.clear_attempts(tries)


async def _redrive(
    letter: DeadLetter,
    uidvalidity: int,
    client: MessageSource,
    store: Store,
    processor: Redrivable,
    settings: Settings,
    poll: SpanContext | None,
) -> None:
    log = get_logger("imap")
    fields = {"email_id": letter.email_id, "mailbox": letter.mailbox, "uid": letter.uid}
    if letter.uidvalidity != uidvalidity:
        note = (
            f"UIDVALIDITY changed from {letter.uidvalidity} to {uidvalidity}: the UID no "
            "longer names this message"
        )
        await store.finish_redrive(letter.email_id, "gone", time.time(), note)
        log.warning("email.redrive", outcome="gone", note=note, **fields)
        return
    messages = await client.fetch([letter.uid], max_bytes=settings.parse.max_message_bytes)
    if not messages:
        note = "the message is no longer in the folder (expunged or moved)"
        await store.finish_redrive(letter.email_id, "gone", time.time(), note)
        log.warning("email.redrive", outcome="gone", note=note, **fields)
        return
    outcome = await processor.process(letter.mailbox, uidvalidity, messages[0], poll, redrive=True)
    if outcome.outcome == "delivered":
        await store.finish_redrive(letter.email_id, "delivered", time.time(), "delivered")
        log.info("email.redrive", outcome="delivered", **fields)
    elif outcome.outcome == "failed":
        # Still pending: the next cycle tries again until imap.max_attempts dead-letters it.
        log.warning("email.redrive", outcome="failed", reason=outcome.reason, **fields)
    elif outcome.outcome == "dead_lettered":
        # Recording the dead letter again settled the request, with the new reason.
        log.error("email.redrive", outcome="dead_lettered", reason=outcome.reason, **fields)
    else:
        note = f"not delivered: {outcome.reason or outcome.outcome}"
        await store.finish_redrive(letter.email_id, "dead_lettered", time.time(), note)
        log.warning("email.redrive", outcome=outcome.outcome, note=note, **fields)
