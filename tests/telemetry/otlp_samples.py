"""Spans and log records of every shape the OTLP encoders and rows must carry."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry._logs import SeverityNumber
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

REMOTE = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True,
                     trace_flags=TraceFlags(TraceFlags.SAMPLED),
                     trace_state=TraceState([("vendor", "v1"), ("other", "x")]))  # fmt: skip
VALUES: dict[str, Any] = {
    "text": "délivré ✓",
    "empty": "",
    "yes": True,
    "no": False,
    "zero": 0,
    "negative": -42,
    "huge": 2**62,
    "ratio": 0.25,
    "float_zero": 0.0,
    "words": ("a", "", "ü"),
    "numbers": (1, -2, 0),
    "flags": (True, False),
    "floats": (1.5, -0.0),
    "nothing": (),
}
LIMITS = SpanLimits(max_span_attributes=20, max_events=2, max_links=1, max_event_attributes=1)


def varied_spans(provider_class: type[TracerProvider]) -> list[ReadableSpan]:
    """Spans of two resources and three scopes, with every kind, status, limit and link shape."""
    exporter = InMemorySpanExporter()
    provider = provider_class(
        resource=Resource.create({"service.name": "wire", "deployment": "test"}, "https://s/1"),
        span_limits=LIMITS,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    second = provider_class(resource=Resource.create({"service.name": "second"}))
    second.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope", "1.2.3", schema_url="https://s/2",
                                 attributes={"scope.attr": "x"})  # fmt: skip
    other = provider.get_tracer("other-scope")
    wide = {**VALUES, "too_big": 2**64, "minus_zero": -0.0}
    for kind in SpanKind:
        with tracer.start_as_current_span(f"kind {kind.name}", kind=kind, attributes=wide):
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
    with tracer.start_as_current_span("error without text") as span:
        span.set_status(StatusCode.ERROR)
    with tracer.start_as_current_span("many", attributes={f"k{i}": i for i in range(25)}):
        pass
    with tracer.start_as_current_span("", links=[Link(REMOTE), Link(REMOTE)]):
        pass
    with second.get_tracer("t").start_as_current_span("of the second resource"):
        pass
    provider.shutdown()
    second.shutdown()
    return list(exporter.get_finished_spans())


def varied_log_records() -> list[ReadableLogRecord]:
    """Records of two scopes: inside a span, over the attribute limit, without a body, nested.

    (Emitting one over the limit warns LogRecordDroppedAttributesWarning.)
    """
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "wire-logs"}, "https://s/3"),
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
                 attributes=dict(list(VALUES.items())[:6]))  # fmt: skip
    webhook.emit(body=None, event_name="sidecar.event")
    webhook.emit(body={"nested": [1, "two"], "raw": b"\x00\x01"}, severity_text="")
    provider.force_flush()
    records = list(exporter.get_finished_logs())
    provider.shutdown()
    tracer_provider.shutdown()
    return records
