"""Re-drive of dead-lettered mail through a real poller, Dovecot, store and receiver."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import Settings, settings_from_mapping
from agent.pipeline.links import LinkRegistry
from agent.pipeline.poller import MailboxPoller
from agent.pipeline.process import EmailProcessor, email_id_for
from agent.pipeline.redrive import REDRIVES_PER_CYCLE, request_redrive
from agent.pipeline.replicas import ReplicaIdentity, Replicas
from agent.store.base import DeadLetter
from agent.store.local import LocalStore
from agent.telemetry.setup import Telemetry
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.telemetry import telemetry_for_tests


@dataclass
class Mailbox:
    """A leading poller of alice's INBOX with its store; the receiver plays the app."""

    poller: MailboxPoller
    store: LocalStore
    dovecot: Dovecot

    @property
    def name(self) -> str:
        return self.poller.mailbox.name

    def email_id(self, uid: int) -> str:
        return email_id_for(self.name, self.dovecot.uidvalidity("alice"), uid)

    async def letter(self, uid: int) -> DeadLetter:
        letter = await self.store.dead_letter(self.email_id(uid))
        assert letter is not None, f"no dead letter for UID {uid}"
        return letter


@pytest.fixture
async def make_mailbox(
    tmp_path: Path, receiver: Receiver, dovecot: Dovecot
) -> AsyncIterator[Callable[..., Awaitable[Mailbox]]]:
    """make_mailbox(max_attempts=1, wrap=None) -> a Mailbox whose poller holds the lease; `wrap`
    may put something around the real processor."""
    opened: list[tuple[Telemetry, aiohttp.ClientSession, LocalStore]] = []

    async def make(
        max_attempts: int = 1, wrap: Callable[[EmailProcessor], Any] | None = None
    ) -> Mailbox:
        settings: Settings = settings_from_mapping(
            {
                "imap": {"timeout": "5s", "max_attempts": max_attempts, "batch_size": 20},
                "webhook": {"url": receiver.url + "/hook", "max_attempts": 1,
                            "retry_budget": "1s", "backoff_initial": "10ms"},
            }
        )  # fmt: skip
        telemetry, _spans, _reader, _logs = telemetry_for_tests(settings)
        store = LocalStore(tmp_path / "state.sqlite3")
        await store.start()
        session = aiohttp.ClientSession()
        opened.append((telemetry, session, store))
        tracer = telemetry.tracer("test")
        from agent.pipeline.webhook import WebhookClient

        webhook = WebhookClient(settings.webhook, session=session, tracer=tracer,
                                instruments=telemetry.instruments, store=store,
                                masker=telemetry.masker)  # fmt: skip
        processor = EmailProcessor(settings, store=store, tracer=tracer,
                                   instruments=telemetry.instruments, webhook=webhook,
                                   links=LinkRegistry(settings.links))  # fmt: skip
        replicas = Replicas(store, ReplicaIdentity("replica-a"), mailboxes=1, interval=1.0,
                            lease_ttl=settings.imap.lease_ttl)  # fmt: skip
        poller = MailboxPoller(dovecot.settings("alice"), settings, replicas=replicas,
                               store=store, tracer=tracer, instruments=telemetry.instruments,
                               processor=wrap(processor) if wrap else processor)  # fmt: skip
        assert await poller._hold_lease()
        return Mailbox(poller, store, dovecot)

    yield make
    for telemetry, session, store in opened:
        await session.close()
        await store.close()
        telemetry.shutdown(2.0)


@pytest.fixture
async def mailbox(make_mailbox: Callable[..., Awaitable[Mailbox]]) -> Mailbox:
    return await make_mailbox()


def _mails(count: int, start: int = 1) -> list[bytes]:
    return [
        make_message(subject=f"mail {n}", message_id=f"<redrive-{n}@test.example>")
        for n in range(start, start + count)
    ]


def _answers(receiver: Receiver, key: str) -> list[Any]:
    """The Idempotency-Key's requests as the receiver saw them, in order."""
    return [r for r in receiver.requests if r.headers.get("Idempotency-Key") == key]


async def _dead_letter_one(mailbox: Mailbox, receiver: Receiver) -> str:
    """Appends one mail the app refuses (400) and polls it: it is dead-lettered."""
    mailbox.dovecot.append("alice", _mails(1)[0])
    receiver.answers = [400]
    await mailbox.poller.cycle()
    letter = await mailbox.letter(1)
    assert letter.status == "dead_lettered"
    return letter.email_id


async def test_a_requested_redrive_is_delivered_at_the_next_cycle_with_the_same_key(
    mailbox: Mailbox, receiver: Receiver
) -> None:
    key = await _dead_letter_one(mailbox, receiver)
    request = await request_redrive(mailbox.store, key)
    assert (request.answer, request.accepted) == ("requested", True)
    await mailbox.poller.cycle()
    first, second = _answers(receiver, key)
    assert second.body == first.body
    letter = await mailbox.letter(1)
    assert (letter.status, letter.redrives, letter.note) == ("delivered", 1, "delivered")
    assert [r.outcome for r in await mailbox.store.recent_deliveries(5)] == [
        "delivered",
        "dead_lettered",
    ]


async def test_asking_twice_delivers_once_and_asking_after_delivery_delivers_nothing(
    mailbox: Mailbox, receiver: Receiver
) -> None:
    key = await _dead_letter_one(mailbox, receiver)
    assert (await request_redrive(mailbox.store, key)).answer == "requested"
    assert (await request_redrive(mailbox.store, key)).answer == "already_requested"
    await mailbox.poller.cycle()
    again = await request_redrive(mailbox.store, key)
    assert (again.answer, again.accepted) == ("already_delivered", False)
    await mailbox.poller.cycle()
    assert len(_answers(receiver, key)) == 2, "one refused delivery, then exactly one re-drive"


async def test_a_redrive_of_a_mail_that_was_delivered_delivers_nothing(
    mailbox: Mailbox, receiver: Receiver
) -> None:
    mailbox.dovecot.append("alice", _mails(1)[0])
    await mailbox.poller.cycle()
    key = mailbox.email_id(1)
    request = await request_redrive(mailbox.store, key)
    assert (request.answer, request.letter) == ("not_found", None)
    await mailbox.poller.cycle()
    assert len(_answers(receiver, key)) == 1


async def test_a_redrive_the_app_still_refuses_is_dead_lettered_again_and_can_be_asked_again(
    mailbox: Mailbox, receiver: Receiver
) -> None:
    key = await _dead_letter_one(mailbox, receiver)
    await request_redrive(mailbox.store, key)
    receiver.answers = [422]
    await mailbox.poller.cycle()
    letter = await mailbox.letter(1)
    assert (letter.status, letter.redrives, letter.reason) == (
        "dead_lettered",
        1,
        "HTTP 422: permanent failure",
    )
    assert (await request_redrive(mailbox.store, key)).answer == "requested"
    await mailbox.poller.cycle()
    assert (await mailbox.letter(1)).status == "delivered"
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == [key] * 3


async def test_a_redrive_that_fails_stays_pending_until_max_attempts_dead_letters_it_again(
    make_mailbox: Callable[..., Awaitable[Mailbox]], receiver: Receiver
) -> None:
    mailbox = await make_mailbox(max_attempts=2)
    key = await _dead_letter_one(mailbox, receiver)
    await request_redrive(mailbox.store, key)
    receiver.default = 503
    await mailbox.poller.cycle()
    assert (await mailbox.letter(1)).status == "redrive_requested"
    await mailbox.poller.cycle()
    letter = await mailbox.letter(1)
    assert (letter.status, letter.error_type) == ("dead_lettered", "webhook_unavailable")
    assert letter.reason.startswith("gave up after 2 attempts")
    await mailbox.poller.cycle()
    assert len(_answers(receiver, key)) == 3, "the refusal, then a fresh budget of 2 attempts"


async def test_a_redrive_after_a_uidvalidity_change_is_gone_and_sends_nothing(
    mailbox: Mailbox, receiver: Receiver, dovecot: Dovecot
) -> None:
    key = await _dead_letter_one(mailbox, receiver)
    old = dovecot.uidvalidity("alice")
    dovecot.recreate_folder("alice")
    dovecot.append("alice", _mails(1, start=2)[0])
    await request_redrive(mailbox.store, key)
    await mailbox.poller.cycle()
    letter = await mailbox.store.dead_letter(key)
    assert letter is not None
    assert letter.status == "gone"
    assert letter.note.startswith(f"UIDVALIDITY changed from {old} to ")
    assert len(_answers(receiver, key)) == 1


async def test_a_redrive_of_an_expunged_message_is_gone_and_sends_nothing(
    mailbox: Mailbox, receiver: Receiver, dovecot: Dovecot
) -> None:
    key = await _dead_letter_one(mailbox, receiver)
    dovecot.expunge("alice", 1)
    await request_redrive(mailbox.store, key)
    await mailbox.poller.cycle()
    letter = await mailbox.letter(1)
    assert (letter.status, letter.note) == (
        "gone",
        "the message is no longer in the folder (expunged or moved)",
    )
    assert len(_answers(receiver, key)) == 1


async def test_a_redrive_of_a_mailbox_nobody_polls_is_refused(
    mailbox: Mailbox, receiver: Receiver
) -> None:
    key = await _dead_letter_one(mailbox, receiver)
    request = await request_redrive(mailbox.store, key, mailboxes=["another"])
    assert (request.answer, request.accepted) == ("not_polled", False)
    assert (await mailbox.letter(1)).status == "dead_lettered"


async def test_a_cycle_carries_out_a_bounded_number_of_redrives(
    mailbox: Mailbox, receiver: Receiver
) -> None:
    count = REDRIVES_PER_CYCLE + 2
    mailbox.dovecot.append_many("alice", _mails(count))
    receiver.default = 400
    await mailbox.poller.cycle()
    receiver.default = 200
    for uid in range(1, count + 1):
        assert (await request_redrive(mailbox.store, mailbox.email_id(uid))).accepted
    await mailbox.poller.cycle()
    assert len(await mailbox.store.pending_redrives(mailbox.name, 100)) == 2
    await mailbox.poller.cycle()
    assert await mailbox.store.pending_redrives(mailbox.name, 100) == []
    assert len(receiver.requests) == 2 * count


class FailingRedrives:
    """The real processor, except that a re-drive raises, as a bug in processing would."""

    def __init__(self, inner: EmailProcessor) -> None:
        self.inner = inner

    async def process(self, *args: Any, redrive: bool = False, **kwargs: Any) -> Any:
        if redrive:
            raise RuntimeError("re-drive bug")
        return await self.inner.process(*args, **kwargs)


async def test_a_redrive_that_keeps_failing_its_cycle_is_abandoned_and_new_mail_flows_again(
    make_mailbox: Callable[..., Awaitable[Mailbox]], receiver: Receiver
) -> None:
    mailbox = await make_mailbox(max_attempts=3, wrap=FailingRedrives)
    key = await _dead_letter_one(mailbox, receiver)
    await request_redrive(mailbox.store, key)
    mailbox.dovecot.append("alice", _mails(1, start=2)[0])
    for _ in range(3):
        with contextlib.suppress(RuntimeError):
            await mailbox.poller.cycle()
        assert (await mailbox.letter(1)).status == "redrive_requested"
    assert len(receiver.requests) == 1, "the new mail waits behind the failing re-drive"
    await mailbox.poller.cycle()
    letter = await mailbox.letter(1)
    assert (letter.status, letter.note) == (
        "dead_lettered",
        "abandoned: 3 cycles ended before it did (see poller.cycle_failed)",
    )
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == [key, mailbox.email_id(2)]
    assert (await request_redrive(mailbox.store, key)).answer == "requested"
