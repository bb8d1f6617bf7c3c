"""WebhookClient against a real receiver: signature, headers, retries, outcomes, delivery log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import Settings, settings_from_mapping
from agent.pipeline.webhook import WebhookClient
from agent.store.base import Store, StoreError
from agent.store.local import LocalStore
from agent.store.redis import RedisStore
from agent.telemetry.setup import Telemetry
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.support.net import free_port
from tests.support.telemetry import telemetry_for_tests

SECRET = "hook-secret-7f3a"
PAYLOAD: dict[str, Any] = {"email_id": "e1", "subject": "Grüße", "delivery_links": []}


@dataclass
class Harness:
    """A WebhookClient over a real session and store, with spans kept in memory."""

    telemetry: Telemetry
    spans: InMemorySpanExporter
    store: Store
    session: aiohttp.ClientSession

    def client(self, url: str, **webhook: Any) -> WebhookClient:
        settings = settings_from_mapping(
            {
                "webhook": {
                    "url": url,
                    "secret": SECRET,
                    "backoff_initial": "10ms",
                    "retry_budget": "3s",
                    **webhook,
                }
            }
        )
        return WebhookClient(
            settings.webhook,
            session=self.session,
            tracer=self.telemetry.tracer("test"),
            instruments=self.telemetry.instruments,
            store=self.store,
            masker=self.telemetry.masker,
        )


@pytest.fixture
def telemetry() -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    telemetry, spans, _reader, _logs = telemetry_for_tests(Settings())
    yield telemetry, spans
    telemetry.shutdown(2.0)


@pytest.fixture
async def harness(
    tmp_path: Path, telemetry: tuple[Telemetry, InMemorySpanExporter]
) -> AsyncIterator[Harness]:
    store = LocalStore(tmp_path / "state.sqlite3")
    await store.start()
    session = aiohttp.ClientSession()
    yield Harness(telemetry[0], telemetry[1], store, session)
    await session.close()
    await store.close()


async def _deliver(client: WebhookClient, key: str = "key-1") -> Any:
    return await client.deliver(PAYLOAD, idempotency_key=key, mailbox="box", email_id="e1")


async def test_signature_is_the_hmac_sha256_of_the_exact_body(
    harness: Harness, receiver: Receiver
) -> None:
    await _deliver(harness.client(receiver.url + "/hook"))
    request = receiver.requests[0]
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Signature-256"] == f"sha256={expected}"
    assert json.loads(request.body) == PAYLOAD


async def test_request_carries_idempotency_key_and_traceparent_of_the_http_span(
    harness: Harness, receiver: Receiver
) -> None:
    await _deliver(harness.client(receiver.url + "/hook"), key="stable-key")
    headers = receiver.requests[0].headers
    assert headers["Idempotency-Key"] == "stable-key"
    (post,) = [s for s in harness.spans.get_finished_spans() if s.name == "POST"]
    assert post.context is not None
    trace_id, span_id = headers["traceparent"].split("-")[1:3]
    assert trace_id == f"{post.context.trace_id:032x}"
    assert span_id == f"{post.context.span_id:016x}"


async def test_no_signature_header_without_a_secret(harness: Harness, receiver: Receiver) -> None:
    await _deliver(harness.client(receiver.url + "/hook", secret=""))
    assert "X-Signature-256" not in receiver.requests[0].headers


async def test_500_then_200_is_one_delivery_in_two_attempts_with_the_same_key(
    harness: Harness, receiver: Receiver
) -> None:
    receiver.answers = [500, 200]
    result = await _deliver(harness.client(receiver.url + "/hook"))
    assert (result.outcome, result.attempts, result.status_code) == ("delivered", 2, 200)
    assert [r.headers["Idempotency-Key"] for r in receiver.requests] == ["key-1", "key-1"]


async def test_400_is_dead_lettered_after_one_attempt_with_the_reason(
    harness: Harness, receiver: Receiver
) -> None:
    receiver.answers = [400]
    result = await _deliver(harness.client(receiver.url + "/hook"))
    assert (result.outcome, result.attempts, result.status_code) == ("dead_lettered", 1, 400)
    assert "HTTP 400" in result.error
    assert len(receiver.requests) == 1


async def test_429_waits_at_least_its_retry_after(harness: Harness, receiver: Receiver) -> None:
    receiver.answers = [(429, {"Retry-After": "1"}), 200]
    result = await _deliver(harness.client(receiver.url + "/hook"))
    assert (result.outcome, result.attempts) == ("delivered", 2)
    first, second = receiver.requests
    assert second.time - first.time >= 0.95


async def test_persistent_503_fails_within_max_attempts(
    harness: Harness, receiver: Receiver
) -> None:
    receiver.default = 503
    result = await _deliver(harness.client(receiver.url + "/hook", max_attempts=3))
    assert (result.outcome, result.attempts, result.status_code) == ("failed", 3, 503)
    assert len(receiver.requests) == 3


async def test_connection_refused_is_retried_then_failed_within_the_budget(
    harness: Harness,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    started = time.monotonic()
    result = await _deliver(harness.client(url, retry_budget="1s", max_attempts=50))
    assert result.outcome == "failed"
    assert result.attempts > 1
    assert result.status_code is None
    assert time.monotonic() - started < 3.0


async def test_silent_receiver_times_out_each_attempt_at_the_webhook_timeout(
    harness: Harness, blackhole: BlackHole
) -> None:
    client = harness.client(blackhole.url + "/hook", timeout="300ms", max_attempts=2)
    started = time.monotonic()
    result = await _deliver(client)
    assert (result.outcome, result.attempts) == ("failed", 2)
    assert "timed out" in result.error
    assert time.monotonic() - started < 2.0


async def test_every_outcome_is_written_to_the_delivery_log(
    harness: Harness, receiver: Receiver
) -> None:
    receiver.answers = [200, 400]
    client = harness.client(receiver.url + "/hook")
    await _deliver(client, key="a")
    await _deliver(client, key="b")
    window = await harness.store.delivery_window(3600)
    assert window.counts == {"delivered": 1, "dead_lettered": 1}
    assert window.last is not None
    assert (window.last.outcome, window.last.status_code) == ("dead_lettered", 400)


async def test_failed_delivery_marks_the_deliver_span_as_error_with_the_status(
    harness: Harness, receiver: Receiver
) -> None:
    receiver.answers = [400]
    await _deliver(harness.client(receiver.url + "/hook"))
    (span,) = [s for s in harness.spans.get_finished_spans() if s.name == "webhook.deliver"]
    assert span.status.status_code.name == "ERROR"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "400"


async def test_a_delivery_acknowledged_while_the_store_was_down_is_recorded_not_sent_again(
    telemetry: tuple[Telemetry, InMemorySpanExporter],
    receiver: Receiver,
    durable_redis_server: RedisServer,
) -> None:
    """The app took the mail, then recording that failed: the mail comes back on the next
    cycle, and the process that saw the acknowledgement records it instead of a second POST."""
    store = RedisStore(durable_redis_server.url, timeout=1.0)
    await store.start()
    async with aiohttp.ClientSession() as session:
        client = Harness(telemetry[0], telemetry[1], store, session).client(receiver.url + "/hook")
        receiver.hang = 0.5
        deliver = client.deliver(
            PAYLOAD, idempotency_key="k1", mailbox="box", email_id="e1", processed_keys=["k1"]
        )
        first = asyncio.create_task(deliver)
        await receiver.wait_for(1)
        await asyncio.to_thread(durable_redis_server.kill)
        with pytest.raises(StoreError):
            await first
        await asyncio.to_thread(durable_redis_server.start)
        receiver.hang = 0.0
        again = await client.deliver(
            PAYLOAD, idempotency_key="k1", mailbox="box", email_id="e1", processed_keys=["k1"]
        )
    try:
        assert again.outcome == "delivered"
        assert len(receiver.requests) == 1
        assert await store.any_processed(["k1"])
    finally:
        await store.close()


async def test_answers_the_store_missed_are_recorded_by_record_unrecorded(
    telemetry: tuple[Telemetry, InMemorySpanExporter],
    receiver: Receiver,
    durable_redis_server: RedisServer,
) -> None:
    """What a clean shutdown does with an answer it could not record during a store outage:
    records it once the store is back, so the next process does not send the mail again."""
    store = RedisStore(durable_redis_server.url, timeout=1.0)
    await store.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Harness(telemetry[0], telemetry[1], store, session).client(
                receiver.url + "/hook"
            )
            receiver.hang = 0.5
            deliver = client.deliver(
                PAYLOAD, idempotency_key="k2", mailbox="box", email_id="e2", processed_keys=["k2"]
            )
            first = asyncio.create_task(deliver)
            await receiver.wait_for(1)
            await asyncio.to_thread(durable_redis_server.kill)
            with pytest.raises(StoreError):
                await first
            assert await client.record_unrecorded() == 1  # the store is still down
            await asyncio.to_thread(durable_redis_server.start)
            assert await client.record_unrecorded() == 0
        assert await store.any_processed(["k2"])
        window = await store.delivery_window(3600)
        assert window.counts == {"delivered": 1}
    finally:
        await store.close()


async def test_no_new_attempt_starts_once_stopping_and_nothing_is_recorded(
    harness: Harness, receiver: Receiver
) -> None:
    """A retry due after SIGTERM is not made: the delivery ends as cancelled, the mail stays
    unprocessed for the next process, and no failure is logged against the app."""
    receiver.default = 503
    stopping = asyncio.Event()
    settings = settings_from_mapping(
        {"webhook": {"url": receiver.url + "/hook", "backoff_initial": "1s", "retry_budget": "30s"}}
    )
    client = WebhookClient(
        settings.webhook,
        session=harness.session,
        tracer=harness.telemetry.tracer("test"),
        instruments=harness.telemetry.instruments,
        store=harness.store,
        masker=harness.telemetry.masker,
        stopping=stopping,
    )
    deliver = client.deliver(
        PAYLOAD, idempotency_key="k", mailbox="box", email_id="e1", processed_keys=["k"]
    )
    delivery = asyncio.create_task(deliver)
    await receiver.wait_for(1)
    stopping.set()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await delivery
    assert len(receiver.requests) == 1
    assert not await harness.store.any_processed(["k"])
    assert (await harness.store.delivery_window(3600)).counts == {}
