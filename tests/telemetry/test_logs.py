"""structlog JSON lines, their OTLP log records, sinks, masking, and the SDK's own logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import Settings, settings_from_mapping
from agent.telemetry.logs import add_log_sink, configure_logging, get_logger, remove_log_sink
from agent.telemetry.setup import Telemetry, setup_telemetry
from tests.support.telemetry import telemetry_for_tests

SECRET = "imap-pass-98765"


@pytest.fixture
def logged() -> Iterator[
    tuple[Telemetry, InMemorySpanExporter, InMemoryLogRecordExporter, io.StringIO]
]:
    settings = settings_from_mapping({"webhook": {"secret": SECRET}})
    telemetry, spans, _reader, logs = telemetry_for_tests(settings)
    stream = io.StringIO()
    configure_logging(telemetry, stream=stream)
    yield telemetry, spans, logs, stream
    telemetry.shutdown(2.0)
    configure_logging(None, stream=io.StringIO())


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_has_timestamp_level_logger_and_event(logged: Any) -> None:
    _telemetry, _spans, _logs, stream = logged
    get_logger("imap").info("mailbox selected", mailbox="INBOX")
    (line,) = _lines(stream)
    assert line["event"] == "mailbox selected"
    assert line["level"] == "info"
    assert line["logger"] == "imap"
    assert line["timestamp"].endswith("Z")
    assert line["mailbox"] == "INBOX"
    assert "trace_id" not in line


def test_json_line_inside_a_span_carries_its_trace_and_span_ids(logged: Any) -> None:
    telemetry, _spans, _logs, stream = logged
    with telemetry.tracer("t").start_as_current_span("email.process") as span:
        get_logger("webhook").info("delivered")
    context = span.get_span_context()
    (line,) = _lines(stream)
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_each_event_becomes_exactly_one_otlp_log_record(logged: Any) -> None:
    telemetry, _spans, logs, _stream = logged
    log = get_logger("alerts")
    with telemetry.tracer("t").start_as_current_span("alert.notify") as span:
        log.warning("alert firing", alertname="HighMemory", labels={"severity": "warning"})
    log.info("alert resolved")
    records = [r.log_record for r in logs.get_finished_logs()]
    assert [r.body for r in records] == ["alert firing", "alert resolved"]
    first = records[0]
    assert first.severity_text == "WARNING"
    assert first.trace_id == span.get_span_context().trace_id
    assert first.attributes is not None
    assert first.attributes["alertname"] == "HighMemory"
    assert first.attributes["labels.severity"] == "warning"


def test_levels_below_the_configured_one_are_dropped(logged: Any) -> None:
    _telemetry, _spans, logs, stream = logged
    get_logger("app").debug("noise")
    assert stream.getvalue() == ""
    assert logs.get_finished_logs() == ()


def test_secrets_are_masked_in_the_line_the_record_and_the_sink(logged: Any) -> None:
    _telemetry, _spans, logs, stream = logged
    events: list[dict[str, Any]] = []
    add_log_sink(events.append)
    try:
        get_logger("imap").error(f"login failed with {SECRET}", url="imaps://u:pw@mail.example")
    finally:
        remove_log_sink(events.append)
    (record,) = logs.get_finished_logs()
    exported = str(record.log_record.body) + json.dumps(dict(record.log_record.attributes or {}))
    for text in (stream.getvalue(), exported, json.dumps(events)):
        assert SECRET not in text
        assert "u:pw@" not in text
    assert events[0]["event"] == "login failed with ***"


def test_removed_sink_receives_nothing_more(logged: Any) -> None:
    events: list[dict[str, Any]] = []
    add_log_sink(events.append)
    get_logger("app").info("one")
    remove_log_sink(events.append)
    get_logger("app").info("two")
    assert [event["event"] for event in events] == ["one"]


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_sdk_stdlib_logs_are_never_exported_even_with_an_otel_handler_on_root(
    logged: Any,
) -> None:
    telemetry, _spans, logs, _stream = logged
    # An application or instrumentation may bridge stdlib logging to OTLP at the root logger;
    # the SDK's own warnings (export failures) must still not become records to export.
    bridge = LoggingHandler(logger_provider=telemetry.logger_provider)
    root = logging.getLogger()
    root.addHandler(bridge)
    try:
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").error("sdk export failed")
        logging.getLogger("opentelemetry.sdk.trace").warning("sdk internal warning")
    finally:
        root.removeHandler(bridge)
    assert logs.get_finished_logs() == ()


def test_sdk_warnings_become_json_events_of_the_telemetry_logger(logged: Any) -> None:
    _telemetry, _spans, _logs, stream = logged
    events: list[dict[str, Any]] = []
    add_log_sink(events.append)
    try:
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").error(
            "Failed to export %s batch code: %s, reason: %s", "spans", 401, f"token {SECRET}"
        )
    finally:
        remove_log_sink(events.append)
    (line,) = _lines(stream)
    assert line["logger"] == "telemetry"
    assert line["level"] == "error"
    assert line["event"] == "otel.sdk"
    assert line["message"] == "Failed to export spans batch code: 401, reason: token ***"
    assert line["sdk_logger"] == "opentelemetry.exporter.otlp.proto.http"
    assert events == [line]


def test_a_repeated_sdk_warning_is_printed_once_a_minute(logged: Any) -> None:
    _telemetry, _spans, _logs, stream = logged
    for attempt in range(5):
        logging.getLogger("opentelemetry.sdk.x").warning("Queue full, dropping %s.", attempt)
    assert [line["message"] for line in _lines(stream)] == ["Queue full, dropping 0."]


def test_an_exporter_that_logs_while_exporting_gets_one_line_and_no_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class LoudFailure(InMemoryLogRecordExporter):
        def export(self, batch: Any) -> LogRecordExportResult:
            super().export(batch)
            logging.getLogger("opentelemetry.exporter.x").warning("collector down %s", len(batch))
            return LogRecordExportResult.FAILURE

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    exporter = LoudFailure()  # type: ignore[no-untyped-call]
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry(Settings(), log_exporter=exporter, span_exporter=spans)
    stream = io.StringIO()
    configure_logging(telemetry, stream=stream)
    try:
        get_logger("app").info("delivered")
    finally:
        telemetry.shutdown(2.0)
        configure_logging(None, stream=io.StringIO())
    lines = _lines(stream)
    assert [(line["event"], line.get("message")) for line in lines] == [
        ("otel.sdk", "collector down 1"),
        ("delivered", None),
    ]
    assert [r.log_record.body for r in exporter.get_finished_logs()] == ["delivered"]


def test_exception_is_logged_with_its_traceback(logged: Any) -> None:
    _telemetry, _spans, logs, stream = logged
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        get_logger("app").exception("crashed")
    (line,) = _lines(stream)
    assert "ValueError: bad ***" in line["exception"]
    (record,) = logs.get_finished_logs()
    assert record.log_record.attributes is not None
    assert "ValueError" in str(record.log_record.attributes["exception.stacktrace"])
