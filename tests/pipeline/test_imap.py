"""The IMAP client against a real Dovecot: results, telemetry, timeouts and reconnects."""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agent.config import Duration, ImapSettings, MailboxSettings, TlsMode
from agent.pipeline.imap import (
    ImapAuthError,
    ImapClient,
    ImapConnectionError,
    ImapTimeoutError,
    ReconnectingSession,
)
from agent.retry import Backoff
from agent.telemetry.catalogue import Instruments
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.dovecot import Dovecot


@dataclass
class Telemetry:
    """In-memory trace and metric pipelines."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    instruments: Instruments

    def finished(self, name: str) -> list[ReadableSpan]:
        """Finished spans called `name`."""
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def durations(self) -> list[dict[str, Any]]:
        """Attributes of every imap.client.operation.duration point, with its count."""
        data = self.reader.get_metrics_data()
        points: list[dict[str, Any]] = []
        if data is None:
            return points
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "imap.client.operation.duration":
                        for point in metric.data.data_points:
                            assert isinstance(point, HistogramDataPoint)
                            points.append(dict(point.attributes or {}) | {"count": point.count})
        return points


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """Providers that keep spans and metrics in memory."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(
        spans=exporter,
        reader=reader,
        tracer_provider=tracer_provider,
        instruments=Instruments(meter_provider.get_meter("test")),
    )
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _client(settings: MailboxSettings, telemetry: Telemetry, timeout: float = 5.0) -> ImapClient:
    return ImapClient(
        settings,
        timeout=timeout,
        tracer=telemetry.tracer_provider.get_tracer("test"),
        instruments=telemetry.instruments,
    )


def _session(
    settings: MailboxSettings, telemetry: Telemetry, *, initial: float = 0.05, cap: float = 60.0
) -> ReconnectingSession:
    return ReconnectingSession(
        settings,
        ImapSettings(timeout=Duration(2.0), reconnect_max_backoff=Duration(cap)),
        tracer=telemetry.tracer_provider.get_tracer("test"),
        instruments=telemetry.instruments,
        backoff=Backoff(initial=initial, maximum=10.0),
    )


def _message(subject: str, body: str = "hello") -> bytes:
    return (
        f"From: sender@example.com\r\nTo: alice@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.com>\r\n\r\n{body}\r\n"
    ).encode()


@pytest.fixture
async def client(dovecot: Dovecot, telemetry: Telemetry) -> AsyncIterator[ImapClient]:
    """A client of alice's INBOX, connected and logged in."""
    imap = _client(dovecot.settings("alice"), telemetry)
    await imap.connect()
    await imap.login()
    yield imap
    await imap.close()


async def test_select_reports_uidvalidity_and_message_count(
    dovecot: Dovecot, client: ImapClient
) -> None:
    dovecot.append_many("alice", [_message("one"), _message("two")])

    status = await client.select()

    assert status.uidvalidity == dovecot.uidvalidity("alice", "INBOX")
    assert status.exists == 2
    assert status.uidnext == 3


async def test_search_above_watermark_returns_only_newer_uids(
    dovecot: Dovecot, client: ImapClient
) -> None:
    dovecot.append_many("alice", [_message(f"m{i}") for i in range(5)])
    await client.select()

    assert await client.search_uids_above(2) == [3, 4, 5]


async def test_search_at_the_highest_uid_returns_nothing(
    dovecot: Dovecot, client: ImapClient
) -> None:
    dovecot.append_many("alice", [_message("a"), _message("b"), _message("c")])
    await client.select()

    assert await client.search_uids_above(3) == []


async def test_fetch_returns_the_exact_bytes_of_each_message(
    dovecot: Dovecot, client: ImapClient
) -> None:
    raws = [_message("first", "body one"), _message("second", "x" * 3000)]
    dovecot.append_many("alice", raws)
    await client.select()

    fetched = await client.fetch([1, 2], max_bytes=1_000_000)

    assert [(m.uid, m.data, m.size, m.partial) for m in fetched] == [
        (1, raws[0], len(raws[0]), False),
        (2, raws[1], len(raws[1]), False),
    ]


async def test_message_above_max_bytes_is_fetched_partially_and_flagged(
    dovecot: Dovecot, client: ImapClient
) -> None:
    small, large = _message("small"), _message("large", "y" * 20_000)
    dovecot.append_many("alice", [small, large])
    await client.select()

    fetched = {m.uid: m for m in await client.fetch([1, 2], max_bytes=1024)}

    assert fetched[1].partial is False
    assert fetched[1].data == small
    assert fetched[2].partial is True
    assert fetched[2].data == large[:1024]
    assert fetched[2].size == len(large)


async def test_fetch_in_small_batches_returns_every_message(
    dovecot: Dovecot, client: ImapClient
) -> None:
    raws = [_message(f"batch{i}") for i in range(7)]
    dovecot.append_many("alice", raws)
    await client.select()

    fetched = await client.fetch(list(range(1, 8)), max_bytes=10_000, batch_size=3)

    assert [m.data for m in fetched] == raws


async def test_fetch_of_only_expunged_uids_returns_nothing(
    dovecot: Dovecot, client: ImapClient
) -> None:
    dovecot.append_many("alice", [_message("kept"), _message("gone")])
    dovecot.expunge("alice", 2)
    await client.select()

    assert await client.fetch([2], max_bytes=10_000) == []
    assert [m.uid for m in await client.fetch([1, 2], max_bytes=10_000)] == [1]


async def test_fetch_leaves_messages_unseen(dovecot: Dovecot, client: ImapClient) -> None:
    dovecot.append("alice", _message("unread"))
    await client.select()

    await client.fetch([1], max_bytes=10_000)

    conn = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=5)
    conn.login("alice", dovecot.users["alice"])
    conn.select("INBOX", readonly=True)
    _, data = conn.uid("FETCH", "1", "(FLAGS)")
    conn.logout()
    assert b"\\Seen" not in data[0]


async def test_wrong_password_raises_auth_error_without_the_password(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    wrong = "Wr0ng-" + dovecot.users["alice"]
    settings = dataclasses.replace(dovecot.settings("alice"), password=wrong)
    imap = _client(settings, telemetry)
    await imap.connect()

    with pytest.raises(ImapAuthError) as caught:
        await imap.login()
    await imap.close()

    assert caught.value.error_type == "auth"
    assert wrong not in str(caught.value)
    assert dovecot.users["alice"] not in str(caught.value)


async def test_each_command_is_a_span_with_server_folder_and_command(
    dovecot: Dovecot, client: ImapClient, telemetry: Telemetry
) -> None:
    dovecot.append("alice", _message("traced"))
    await client.select()
    await client.search_uids_above(0)
    await client.fetch([1], max_bytes=10_000)
    await client.noop()
    await client.logout()

    names = [s.name for s in telemetry.spans.get_finished_spans()]
    for name in ("connect", "login", "select", "search", "fetch", "noop", "logout"):
        assert f"imap.{name}" in names
    span = telemetry.finished("imap.search")[0]
    assert span.attributes is not None
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == dovecot.port
    assert span.attributes["imap.mailbox"] == "INBOX"
    assert span.attributes["imap.command"] == "search"


async def test_command_durations_are_recorded_with_command_and_outcome(
    dovecot: Dovecot, client: ImapClient, telemetry: Telemetry
) -> None:
    await client.select()
    await client.noop()

    points = telemetry.durations()

    assert {"imap.command": "select", "outcome": "ok", "count": 1} in points
    assert {"imap.command": "noop", "outcome": "ok", "count": 1} in points


async def test_failed_command_sets_error_status_and_error_type(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    settings = dataclasses.replace(dovecot.settings("alice"), password="not-it")
    imap = _client(settings, telemetry)
    await imap.connect()
    with pytest.raises(ImapAuthError):
        await imap.login()
    await imap.close()

    span = telemetry.finished("imap.login")[0]
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "auth"
    assert [e.name for e in span.events] == ["exception"]
    assert {
        "imap.command": "login",
        "outcome": "error",
        "error.type": "auth",
        "count": 1,
    } in telemetry.durations()


async def test_connect_to_a_silent_server_times_out_within_the_timeout(
    blackhole: BlackHole, telemetry: Telemetry
) -> None:
    settings = MailboxSettings(host="127.0.0.1", port=blackhole.port, tls="none")
    imap = _client(settings, telemetry, timeout=1.0)

    started = time.monotonic()
    with pytest.raises(ImapTimeoutError):
        await imap.connect()
    elapsed = time.monotonic() - started

    assert 0.9 <= elapsed <= 3.0
    assert not imap.connected
    assert (telemetry.finished("imap.connect")[0].attributes or {})["error.type"] == "timeout"


async def test_command_to_a_frozen_server_times_out_and_drops_the_connection(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    imap = _client(dovecot.settings("alice"), telemetry, timeout=1.0)
    await imap.connect()
    await imap.login()
    await imap.select()
    dovecot.pause()
    try:
        started = time.monotonic()
        with pytest.raises(ImapTimeoutError):
            await imap.noop()
        elapsed = time.monotonic() - started
    finally:
        dovecot.resume()
        await imap.close()

    assert elapsed <= 3.0
    assert not imap.connected


async def test_cancelling_a_command_that_waits_on_the_server_does_not_block_the_event_loop(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    """Shutdown cancels a command whose thread is still reading: dropping the connection must
    wake that read, not wait on it for the whole command timeout with the event loop held."""
    imap = _client(dovecot.settings("alice"), telemetry, timeout=10.0)
    await imap.connect()
    await imap.login()
    await imap.select()
    dovecot.pause()
    try:
        command = asyncio.ensure_future(imap.noop())
        await asyncio.sleep(0.5)  # the worker thread now blocks reading the answer
        started = time.monotonic()
        command.cancel()
        await asyncio.wait({command})
        elapsed = time.monotonic() - started
    finally:
        dovecot.resume()
        await imap.close()

    assert command.cancelled()
    assert elapsed < 2.0, f"the event loop was held {elapsed:.1f}s by dropping the connection"
    assert not imap.connected


async def test_command_before_connect_raises_a_clear_error(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    imap = _client(dovecot.settings("alice"), telemetry)

    with pytest.raises(RuntimeError, match=r"before connect\(\)"):
        await imap.login()


async def test_close_is_safe_before_connect_and_twice(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    imap = _client(dovecot.settings("alice"), telemetry)
    await imap.close()
    await imap.connect()
    await imap.close()
    await imap.close()

    assert not imap.connected


async def test_stopped_server_raises_connection_error(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    dovecot.stop()
    imap = _client(dovecot.settings("alice"), telemetry)

    with pytest.raises(ImapConnectionError):
        await imap.connect()


async def test_session_reconnects_once_the_server_is_back(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    session = _session(dovecot.settings("alice"), telemetry)
    first = await session.ensure()
    dovecot.stop()

    with pytest.raises(ImapConnectionError):
        await first.noop()
    session.mark_broken()
    with pytest.raises(ImapConnectionError):
        await session.ensure()
    dovecot.start()
    second = await session.ensure()

    assert second is not first
    assert second.connected
    assert session.status is not None
    assert session.status.uidvalidity == dovecot.uidvalidity("alice")
    await second.noop()
    await session.close()


async def test_session_backoff_grows_between_failed_attempts(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    dovecot.stop()
    session = _session(dovecot.settings("alice"), telemetry, initial=0.1)
    waits: list[float] = []

    for _ in range(4):
        started = time.monotonic()
        with pytest.raises(ImapConnectionError):
            await session.ensure()
        waits.append(time.monotonic() - started)
    await session.close()

    assert session.failures == 4
    assert waits[1] < waits[2] < waits[3]
    assert waits[3] >= 0.3


async def test_session_backoff_is_capped_by_reconnect_max_backoff(
    dovecot: Dovecot, telemetry: Telemetry
) -> None:
    dovecot.stop()
    session = _session(dovecot.settings("alice"), telemetry, initial=0.1, cap=0.15)
    delays: list[float] = []

    for _ in range(5):
        with pytest.raises(ImapConnectionError):
            await session.ensure()
        delays.append(session.last_delay)
    await session.close()

    assert max(delays) <= 0.15


@pytest.mark.parametrize("mode", ["ssl", "starttls"])
async def test_tls_modes_reach_the_folder(
    dovecot_tls: Dovecot, telemetry: Telemetry, mode: TlsMode
) -> None:
    dovecot_tls.append("alice", _message("secure"))
    imap = ImapClient(
        dovecot_tls.settings("alice", tls=mode),
        timeout=5.0,
        tracer=telemetry.tracer_provider.get_tracer("test"),
        instruments=telemetry.instruments,
        ssl_context=dovecot_tls.ssl_context(),
    )
    await imap.connect()
    await imap.login()
    status = await imap.select()
    await imap.logout()

    assert status.exists == 1


async def test_untrusted_certificate_is_a_connection_error(
    dovecot_tls: Dovecot, telemetry: Telemetry
) -> None:
    imap = _client(dovecot_tls.settings("alice", tls="ssl"), telemetry)

    with pytest.raises(ImapConnectionError, match="TLS"):
        await imap.connect()
