"""Spans and log records survive the trip through rows and marshal exactly as OTLP sees them."""

from __future__ import annotations

import io
import time
from typing import Any, cast

import pytest
from opentelemetry import context as otel_context
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from agent.telemetry import rows
from agent.telemetry.otlp_wire import encode_logs, encode_spans
from agent.telemetry.setup import _span_texts
from agent.telemetry.shipper import frame, read_frame, write_frame
from agent.telemetry.tracing import LeanTracerProvider

REMOTE = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True,
                     trace_flags=TraceFlags(TraceFlags.SAMPLED),
                     trace_state=TraceState([("vendor", "v1"), ("other", "x")]))  # fmt: skip
VALUES: dict[str, Any] = {
    "text": "délivré ✓", "empty": "", "yes": True, "no": False, "zero": 0, "negative": -42,
    "huge": 2**62, "too_big": 2**64, "ratio": 0.25, "minus_zero": -0.0, "words": ("a", "", "ü"),
    "numbers": (1, -2, 0), "flags": (True, False), "floats": (1.5, -0.0), "nothing": (),
}  # fmt: skip
LIMITS = SpanLimits(max_span_attributes=20, max_events=2, max_links=1, max_event_attributes=1)


def _spans(provider_class: type[TracerProvider]) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = provider_class(
        resource=Resource.create({"service.name": "rows", "deployment": "test"}, "https://s/1"),
        span_limits=LIMITS,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    second = provider_class(resource=Resource.create({"service.name": "second"}))
    second.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope", "1.2.3", schema_url="https://s/2",
                                 attributes={"scope.attr": "x"})  # fmt: skip
    other = provider.get_tracer("other-scope")
    for kind in SpanKind:
        with tracer.start_as_current_span(f"kind {kind.name}", kind=kind, attributes=VALUES):
            pass
    with tracer.start_as_current_span(
        "child of remote", context=set_span_in_context(NonRecordingSpan(REMOTE))
    ) as span:
        span.set_status(StatusCode.ERROR, "it broke: ✗")
        span.add_event("first", {"n": 1, "dropped": "over the event limit"})
        span.add_event("second", timestamp=123)
        span.add_event("third")  # over max_events: counted as dropped
        with other.start_as_current_span("local child", links=[Link(REMOTE, {"why": "batch"})]):
            pass
    with tracer.start_as_current_span("ok") as span:
        span.set_status(StatusCode.OK)
    with tracer.start_as_current_span("many", attributes={f"k{i}": i for i in range(25)}):
        pass
    with tracer.start_as_current_span("", links=[Link(REMOTE), Link(REMOTE)]):
        pass
    with second.get_tracer("t").start_as_current_span("of the second resource"):
        pass
    provider.shutdown()
    second.shutdown()
    return list(exporter.get_finished_spans())


def _through_rows(batch: rows.Batch) -> rows.Batch:
    """The batch written as one frame to the shipper and read back."""
    stream = io.BytesIO()
    write_frame(stream, ("spans", batch))
    stream.seek(0)
    kind, loaded = read_frame(stream)
    assert kind == "spans"
    assert read_frame(stream) is None
    return cast(rows.Batch, loaded)


@pytest.mark.parametrize("copy", [False, True], ids=["shared", "copied"])
@pytest.mark.parametrize("provider_class", [TracerProvider, LeanTracerProvider])
def test_spans_rebuilt_from_rows_encode_as_the_sdk_encodes_the_originals(
    provider_class: type[TracerProvider], copy: bool
) -> None:
    spans = _spans(provider_class)
    rebuilt = rows.spans_from(_through_rows(rows.span_batch(spans, copy=copy)))
    expected = sdk_encode(spans)
    assert ExportTraceServiceRequest.FromString(encode_spans(rebuilt)) == expected
    assert sdk_encode(rebuilt) == expected
    decoded = expected.resource_spans[0].scope_spans[0].spans
    # Not vacuous: the batch has dropped counts, events, links, trace state and a remote parent.
    assert any(s.dropped_events_count for s in decoded)
    assert any(s.dropped_attributes_count for s in decoded)
    assert any(s.links and s.dropped_links_count for s in decoded)
    assert len(expected.resource_spans) == 2


def test_a_batch_holds_each_resource_and_scope_once() -> None:
    spans = _spans(LeanTracerProvider)
    resources, scopes, span_rows = rows.span_batch(spans)
    assert len(resources) == 2
    assert len(scopes) == 3
    assert len(span_rows) == len(spans)


@pytest.mark.filterwarnings("ignore::opentelemetry.sdk._logs.LogRecordDroppedAttributesWarning")
def test_log_records_rebuilt_from_rows_encode_as_the_sdk_encodes_the_originals() -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "rows-logs"}, "https://s/3"),
        log_record_limits=LogRecordLimits(max_attributes=3),
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    tracer_provider = TracerProvider()
    imap = provider.get_logger("signal-sidecar.imap")
    webhook = provider.get_logger("signal-sidecar.webhook", "1.0")
    with tracer_provider.get_tracer("t").start_as_current_span("inside"):
        imap.emit(
            timestamp=time.time_ns(),
            context=otel_context.get_current(),
            severity_number=SeverityNumber.WARN,
            severity_text="WARNING",
            body="poller.cycle_failed",
            attributes={"mailbox": "INBOX", "attempt": 3, "fatal": False, "over": "limit"},
        )
    webhook.emit(severity_number=SeverityNumber.INFO, body="webhook.delivery",
                 attributes={"words": ("a", "ü"), "ratio": 0.5})  # fmt: skip
    webhook.emit(body=None, event_name="sidecar.event")
    webhook.emit(body={"nested": [1, "two"], "raw": b"\x00\x01"}, severity_text="")
    provider.force_flush()
    batch = list(exporter.get_finished_logs())
    rebuilt = rows.logs_from(_through_rows(rows.log_batch(batch)))
    expected = sdk_encode_logs(batch)
    assert ExportLogsServiceRequest.FromString(encode_logs(rebuilt)) == expected
    first = expected.resource_logs[0].scope_logs[0].log_records[0]
    assert first.trace_id  # not vacuous
    assert first.dropped_attributes_count == 1
    provider.shutdown()
    tracer_provider.shutdown()


class _Odd:
    def __str__(self) -> str:
        return "odd"


def test_a_value_marshal_cannot_write_is_sent_as_its_text_in_a_copied_batch() -> None:
    record = LogRecord(body="odd values", attributes={"a": _Odd(), "b": [1, _Odd()], "c": 2})
    readable = ReadableLogRecord(log_record=record, resource=Resource.create({}))
    with pytest.raises(ValueError, match="unmarshallable"):
        frame(("logs", rows.log_batch([readable])))
    sent = frame(("logs", rows.log_batch([readable], copy=True)))
    _, batch = read_frame(io.BytesIO(sent))
    (rebuilt,) = rows.logs_from(batch)
    assert dict(rebuilt.log_record.attributes or {}) == {"a": "odd", "b": (1, "odd"), "c": 2}


def test_a_batch_offers_masking_every_string_its_spans_offer() -> None:
    spans = _spans(LeanTracerProvider)
    expected: list[str] = []
    for span in spans:
        _span_texts(expected, span)
    texts = rows.span_texts(_through_rows(rows.span_batch(spans)))
    assert sorted(texts) == sorted(expected)
    assert "it broke: ✗" in texts  # not vacuous: status, event and link strings are in it
    assert "batch" in texts
