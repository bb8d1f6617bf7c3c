"""EmailProcessor with a real store and receiver: one trace per email, dedupe, links, hostile."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from agent.config import Settings, settings_from_mapping
from agent.pipeline import process as process_module
from agent.pipeline.imap import FetchedMessage
from agent.pipeline.links import LinkRegistry
from agent.pipeline.parse import ParsedEmail
from agent.pipeline.process import EmailProcessor, ProcessOutcome, email_id_for
from agent.pipeline.webhook import WebhookClient
from agent.store.base import DeliveryQuery
from agent.store.local import LocalStore
from agent.telemetry.logs import configure_logging
from agent.telemetry.setup import Telemetry
from tests.fixtures.receiver import Receiver
from tests.pipeline import hostile
from tests.support.telemetry import telemetry_for_tests

POLL = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False,
                   trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip
SWISS_URL = "https://www.swisstransfer.com/d/8a7b6c5d-1234"
SMASH_URL = "https://fromsmash.com/AbCdEf-ct"


@dataclass
class Processing:
    """An EmailProcessor over a real store and the receiver, telemetry in memory."""

    processor: EmailProcessor
    store: LocalStore
    spans: InMemorySpanExporter
    settings: Settings
    telemetry: Telemetry
    reader: InMemoryMetricReader

    async def process(
        self, raw: bytes, uid: int = 1, uidvalidity: int = 7, *, redrive: bool = False
    ) -> ProcessOutcome:
        message = FetchedMessage(uid=uid, size=len(raw), data=raw, partial=False)
        return await self.processor.process("box", uidvalidity, message, POLL, redrive=redrive)

    def counted(self, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The metric's points now, by their sorted attributes."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            tuple(sorted((str(k), str(v)) for k, v in (point.attributes or {}).items())): float(
                point.value  # type: ignore[union-attr]
            )
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for found in scope.metrics
            if found.name == metric
            for point in found.data.data_points
        }


@pytest.fixture
async def make_processing(
    tmp_path: Path, receiver: Receiver
) -> AsyncIterator[Callable[..., Awaitable[Processing]]]:
    """make_processing(**sections) -> a Processing whose webhook goes to the receiver."""
    opened: list[tuple[Telemetry, aiohttp.ClientSession, LocalStore]] = []

    async def make(**sections: dict[str, Any]) -> Processing:
        webhook = {"url": receiver.url + "/hook", "secret": "s", "max_attempts": 1,
                   **sections.pop("webhook", {})}  # fmt: skip
        settings = settings_from_mapping({"webhook": webhook, **sections})
        telemetry, spans, reader, _logs = telemetry_for_tests(settings)
        store = LocalStore(tmp_path / f"state-{len(opened)}.sqlite3")
        await store.start()
        session = aiohttp.ClientSession()
        opened.append((telemetry, session, store))
        tracer = telemetry.tracer("test")
        client = WebhookClient(settings.webhook, session=session, tracer=tracer,
                               instruments=telemetry.instruments, store=store,
                               masker=telemetry.masker)  # fmt: skip
        processor = EmailProcessor(settings, store=store, tracer=tracer,
                                   instruments=telemetry.instruments, webhook=client,
                                   links=LinkRegistry(settings.links))  # fmt: skip
        return Processing(processor, store, spans, settings, telemetry, reader)

    yield make
    for telemetry, session, store in opened:
        await session.close()
        await store.close()
        telemetry.shutdown(2.0)


@pytest.fixture
async def processing(make_processing: Callable[..., Awaitable[Processing]]) -> Processing:
    return await make_processing()


async def test_email_process_is_a_new_trace_linked_to_its_poll_span(
    processing: Processing, receiver: Receiver
) -> None:
    await processing.process(hostile.ordinary())
    (root,) = [s for s in processing.spans.get_finished_spans() if s.name == "email.process"]
    assert root.parent is None
    assert root.context is not None
    assert root.context.trace_id != POLL.trace_id
    assert [link.context for link in root.links] == [POLL]


async def test_parse_deliver_and_the_http_span_are_children_in_the_email_trace(
    processing: Processing, receiver: Receiver
) -> None:
    await processing.process(hostile.ordinary())
    spans = {s.name: s for s in processing.spans.get_finished_spans()}
    root = spans["email.process"]
    assert root.context is not None
    for name, parent in (("email.parse", root), ("webhook.deliver", root),
                         ("POST", spans["webhook.deliver"])):  # fmt: skip
        assert spans[name].parent is not None
        assert parent.context is not None
        assert spans[name].parent.span_id == parent.context.span_id, name
        assert spans[name].context.trace_id == root.context.trace_id, name  # type: ignore[union-attr]
    trace_id = receiver.requests[0].headers["traceparent"].split("-")[1]
    assert trace_id == f"{root.context.trace_id:032x}"


async def test_logs_inside_the_email_trace_carry_its_trace_id(
    make_processing: Callable[..., Awaitable[Processing]], receiver: Receiver
) -> None:
    receiver.answers = [400]
    stream = io.StringIO()
    # Loggers bind the configuration current when they are created: configure first.
    configure_logging(None, stream=stream)
    try:
        processing = await make_processing()
        await processing.process(hostile.ordinary())
    finally:
        configure_logging(None, stream=io.StringIO())
    (root,) = [s for s in processing.spans.get_finished_spans() if s.name == "email.process"]
    assert root.context is not None
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    inside = [e for e in events if e["event"] in ("webhook.delivery", "email.dead_lettered")]
    assert len(inside) == 2, events
    assert {e.get("trace_id") for e in inside} == {f"{root.context.trace_id:032x}"}


async def test_payload_names_the_providers_and_links_found(
    processing: Processing, receiver: Receiver
) -> None:
    raw = hostile.make_message(
        links=[hostile.DROPBOX_URL, hostile.WETRANSFER_URL, SWISS_URL, SMASH_URL,
               "https://example.com/not-a-provider"],
        html="<html><body><p>files</p></body></html>",
    )  # fmt: skip
    outcome = await processing.process(raw)
    assert outcome.outcome == "delivered"
    links = receiver.requests[0].json["delivery_links"]
    assert {(link["provider"], link["url"]) for link in links} == {
        ("dropbox", hostile.DROPBOX_URL),
        ("wetransfer", hostile.WETRANSFER_URL),
        ("swisstransfer", SWISS_URL),
        ("fromsmash", SMASH_URL),
    }


async def test_mail_without_links_gets_one_webhook_with_an_empty_delivery_links_list(
    processing: Processing, receiver: Receiver
) -> None:
    outcome = await processing.process(hostile.make_message(text="no links here"))
    assert outcome.outcome == "delivered"
    assert len(receiver.requests) == 1
    assert receiver.requests[0].json["delivery_links"] == []


async def test_only_with_links_skips_mail_without_links_and_records_it_as_processed(
    make_processing: Callable[..., Awaitable[Processing]], receiver: Receiver
) -> None:
    processing = await make_processing(webhook={"only_with_links": True})
    skipped = await processing.process(hostile.make_message(text="nothing"), uid=1)
    sent = await processing.process(
        hostile.make_message(links=[hostile.DROPBOX_URL], message_id="<b@x>"), uid=2
    )
    assert (skipped.outcome, sent.outcome) == ("skipped", "delivered")
    assert skipped.durable
    assert len(receiver.requests) == 1
    assert await processing.store.is_processed(email_id_for("box", 7, 1))


async def test_a_processed_email_id_is_not_delivered_again(
    processing: Processing, receiver: Receiver
) -> None:
    await processing.process(hostile.ordinary(), uid=3)
    again = await processing.process(hostile.ordinary(), uid=3)
    assert again.outcome == "duplicate"
    assert len(receiver.requests) == 1


async def test_the_same_mail_under_a_new_uidvalidity_is_a_duplicate(
    processing: Processing, receiver: Receiver
) -> None:
    await processing.process(hostile.ordinary(), uid=3, uidvalidity=7)
    again = await processing.process(hostile.ordinary(), uid=1, uidvalidity=8)
    assert again.outcome == "duplicate"
    assert len(receiver.requests) == 1


async def test_a_failed_delivery_is_not_durable_and_not_marked_processed(
    processing: Processing, receiver: Receiver
) -> None:
    receiver.answers = [503]
    outcome = await processing.process(hostile.ordinary(), uid=4)
    assert outcome.outcome == "failed"
    assert not outcome.durable
    assert not await processing.store.is_processed(email_id_for("box", 7, 4))


async def test_a_400_dead_letters_the_message_with_the_reason(
    processing: Processing, receiver: Receiver
) -> None:
    receiver.answers = [400]
    outcome = await processing.process(hostile.ordinary())
    assert outcome.outcome == "dead_lettered"
    assert "HTTP 400" in outcome.reason
    assert outcome.durable


async def test_a_mail_the_app_refuses_is_kept_as_a_dead_letter_naming_its_uid_and_reason(
    processing: Processing, receiver: Receiver
) -> None:
    receiver.answers = [400]
    await processing.process(hostile.ordinary(), uid=9, uidvalidity=7)
    letter = await processing.store.dead_letter(email_id_for("box", 7, 9))
    assert letter is not None
    assert (letter.mailbox, letter.uidvalidity, letter.uid, letter.status) == (
        "box",
        7,
        9,
        "dead_lettered",
    )
    assert (letter.reason, letter.error_type, letter.attempts) == (
        "HTTP 400: permanent failure",
        "webhook_rejected",
        1,
    )


async def test_a_mail_failing_every_attempt_is_kept_as_a_dead_letter_of_an_unavailable_app(
    make_processing: Callable[..., Awaitable[Processing]], receiver: Receiver
) -> None:
    processing = await make_processing(imap={"max_attempts": 2})
    receiver.default = 503
    assert (await processing.process(hostile.ordinary(), uid=4)).outcome == "failed"
    assert await processing.store.dead_letter(email_id_for("box", 7, 4)) is None
    outcome = await processing.process(hostile.ordinary(), uid=4)
    assert (outcome.outcome, outcome.error_type) == ("dead_lettered", "webhook_unavailable")
    letter = await processing.store.dead_letter(email_id_for("box", 7, 4))
    assert letter is not None
    assert (letter.uid, letter.error_type, letter.attempts) == (4, "webhook_unavailable", 2)
    assert letter.reason.startswith("gave up after 2 attempts: HTTP 503")
    assert await processing.store.is_processed(email_id_for("box", 7, 4))


async def test_a_dead_lettered_mail_is_counted_with_its_mailbox_and_error_type(
    processing: Processing, receiver: Receiver
) -> None:
    receiver.answers = [400]
    await processing.process(hostile.make_message(subject="one", message_id="<1@x>"), uid=1)
    await processing.process(hostile.make_message(subject="two", message_id="<2@x>"), uid=2)
    counted = processing.counted("imap.messages")
    dead = (
        ("error.type", "webhook_rejected"),
        ("imap.mailbox", "box"),
        ("outcome", "dead_lettered"),
    )
    assert counted[dead] == 1
    assert counted[(("imap.mailbox", "box"), ("outcome", "delivered"))] == 1


async def test_every_mailbox_has_its_dead_letter_series_at_zero_from_the_start(
    make_processing: Callable[..., Awaitable[Processing]],
) -> None:
    boxes = [{"name": n, "host": "imap.example", "username": "u"} for n in ("a", "b")]
    processing = await make_processing(mailboxes=boxes)
    counted = processing.counted("imap.messages")
    for name in ("a", "b"):
        for reason in ("webhook_rejected", "webhook_unavailable", "store_error"):
            key = (("error.type", reason), ("imap.mailbox", name), ("outcome", "dead_lettered"))
            assert counted[key] == 0, key


async def test_a_redrive_delivers_a_dead_lettered_mail_again_with_the_same_key(
    processing: Processing, receiver: Receiver
) -> None:
    receiver.answers = [400]
    await processing.process(hostile.ordinary(), uid=5)
    assert (await processing.process(hostile.ordinary(), uid=5)).outcome == "duplicate"
    outcome = await processing.process(hostile.ordinary(), uid=5, redrive=True)
    assert outcome.outcome == "delivered"
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    assert keys == [email_id_for("box", 7, 5)] * 2
    spans = [s for s in processing.spans.get_finished_spans() if s.name == "email.process"]
    assert [dict(s.attributes or {}).get("email.redrive") for s in spans] == [None, None, True]


@pytest.mark.parametrize(
    ("build", "check"),
    [
        (hostile.html_bomb, lambda body: body["html_truncated"] is True),
        (hostile.many_parts, lambda body: "part 0" in body["text_excerpt"]),
        (hostile.invalid_utf8_headers, lambda body: "Mallory" in body["from"]),
        (hostile.nesting_bomb, lambda body: body["subject"] == "nesting bomb"),
        (hostile.many_links, lambda body: len(body["delivery_links"]) == 1),
    ],
    ids=["html_bomb_10mb", "5000_parts", "invalid_utf8_headers", "nesting_bomb", "10000_links"],
)
async def test_hostile_mail_is_delivered_within_its_bounds(
    processing: Processing,
    receiver: Receiver,
    build: Callable[[], bytes],
    check: Callable[[dict[str, Any]], bool],
) -> None:
    outcome = await processing.process(build())
    assert outcome.outcome == "delivered", outcome.reason
    body = receiver.requests[0].json
    assert check(body), {k: str(v)[:200] for k, v in body.items()}
    assert len(receiver.requests[0].body) < 64 * 1024


async def test_the_processor_takes_the_raw_bytes_so_a_batch_does_not_hold_them(
    processing: Processing,
) -> None:
    raw = hostile.ordinary()
    message = FetchedMessage(uid=1, size=len(raw), data=raw, partial=False)
    outcome = await processing.processor.process("box", 7, message, POLL)
    assert outcome.outcome == "delivered"
    assert message.data == b""


@pytest.mark.parametrize(("in_flight", "most_at_once"), [(25_000, 1), (10_000_000, 4)])
async def test_parses_in_flight_stay_within_the_byte_budget(
    make_processing: Callable[..., Awaitable[Processing]],
    monkeypatch: pytest.MonkeyPatch,
    in_flight: int,
    most_at_once: int,
) -> None:
    raws = [hostile.make_message(html="<p>" + "x" * 20_000 + "</p>", message_id=f"<big{n}@x>")
            for n in range(4)]  # fmt: skip
    assert all(20_000 < len(raw) < 25_000 * 2 for raw in raws)
    processing = await make_processing(parse={"max_bytes_in_flight": in_flight})
    lock = threading.Lock()
    inside = 0
    seen = 0
    real_parse = process_module.parse_email

    def counting_parse(*args: Any, **kwargs: Any) -> ParsedEmail:
        nonlocal inside, seen
        with lock:
            inside += 1
            seen = max(seen, inside)
        time.sleep(0.05)  # long enough for every parse that may run to start
        try:
            return real_parse(*args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(process_module, "parse_email", counting_parse)
    outcomes = await asyncio.gather(
        *(processing.process(raw, uid=uid) for uid, raw in enumerate(raws, 1))
    )
    assert [o.outcome for o in outcomes] == ["delivered"] * 4
    assert seen == most_at_once


async def test_the_delivery_log_keeps_the_mail_its_links_masked_and_its_trace(
    processing: Processing, receiver: Receiver
) -> None:
    signed = hostile.DROPBOX_URL + "?dl=1&sig=abcdef123456"
    raw = hostile.make_message(
        subject="Tuesday files", links=[signed], message_id="<t-1@x.example>"
    )
    await processing.process(raw)
    (root,) = [s for s in processing.spans.get_finished_spans() if s.name == "email.process"]
    page = await processing.store.search_deliveries(DeliveryQuery(q="tuesday"))
    (record,) = page.records
    assert record.outcome == "delivered"
    assert record.email_id == receiver.requests[0].headers["Idempotency-Key"]
    assert (record.message_id, record.subject) == ("<t-1@x.example>", "Tuesday files")
    assert record.sender == receiver.requests[0].json["from"]
    assert record.status_code == 200
    assert record.trace_id == f"{root.context.trace_id:032x}"  # type: ignore[union-attr]
    assert [(link.provider, link.status) for link in record.links] == [("dropbox", "skipped")]
    assert "abcdef123456" not in record.links[0].url
    assert "sig=***" in record.links[0].url
    assert record.received_at is not None


async def test_duplicates_and_skipped_mail_are_in_the_delivery_log_but_not_its_error_ratio(
    make_processing: Callable[..., Awaitable[Processing]], receiver: Receiver
) -> None:
    processing = await make_processing(webhook={"only_with_links": True})
    await processing.process(hostile.make_message(text="nothing", message_id="<s@x>"), uid=1)
    linked = hostile.make_message(links=[hostile.DROPBOX_URL], message_id="<d@x>")
    await processing.process(linked, uid=2)
    await processing.process(linked, uid=2)
    page = await processing.store.search_deliveries(DeliveryQuery())
    assert [(r.outcome, r.message_id) for r in page.records] == [
        ("duplicate", "<d@x>"),
        ("delivered", "<d@x>"),
        ("skipped", "<s@x>"),
    ]
    window = await processing.store.delivery_window(3600)
    assert window.counts == {"delivered": 1}


async def test_a_mail_dead_lettered_after_failed_attempts_is_logged_with_its_headers(
    make_processing: Callable[..., Awaitable[Processing]], receiver: Receiver
) -> None:
    processing = await make_processing(imap={"max_attempts": 2})
    receiver.answers = [503, 503]
    raw = hostile.make_message(subject="Never arrives", message_id="<n@x>")
    await processing.process(raw, uid=5)
    await processing.process(raw, uid=5)
    page = await processing.store.search_deliveries(DeliveryQuery(outcome="dead_lettered"))
    (record,) = page.records
    assert (record.subject, record.message_id, record.attempts) == ("Never arrives", "<n@x>", 2)


async def test_the_delivery_log_masks_secrets_and_bounds_the_senders_headers(
    make_processing: Callable[..., Awaitable[Processing]], receiver: Receiver
) -> None:
    secret = "whsec-in-a-subject-5e1f"
    processing = await make_processing(webhook={"secret": secret})
    subject = f"leaked {secret} " + "x" * 2000
    await processing.process(hostile.make_message(subject=subject, message_id="<sec@x>"))
    (record,) = (await processing.store.search_deliveries(DeliveryQuery(q="<sec@x>"))).records
    assert secret not in record.subject
    assert record.subject.startswith("leaked ***")
    assert len(record.subject) <= 500
