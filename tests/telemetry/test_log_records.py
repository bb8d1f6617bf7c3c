"""log_records.emit hands the SDK's processors what the SDK Logger.emit hands them."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, LogRecordLimits, ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from agent.telemetry import log_records

ATTRIBUTES: dict[str, Any] = {
    "text": "délivré",
    "flag": True,
    "count": 3,
    "ratio": 0.5,
    "words": ["a", "b"],
    "nested": {"k": 1},
    "raw": b"\x00",
    "nothing": None,
    "opaque": object(),
    "long": "longer than the limit",
    "last": "x",
}
CURRENT = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
LIMITS = {
    "default limits": LogRecordLimits(),
    "tight limits": LogRecordLimits(max_attributes=4, max_attribute_length=6),
}


def _export(
    limits: LogRecordLimits, lean: bool, attributes: dict[str, Any]
) -> list[dict[str, Any]]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "logs"}),
        shutdown_on_exit=False,
        log_record_limits=limits,
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("signal-sidecar.webhook", "1.0")

    def one(context: otel_context.Context, body: Any) -> None:
        arguments: dict[str, Any] = {
            "timestamp": 1_700_000_000_000_000_000,
            "context": context,
            "severity_number": SeverityNumber.WARN,
            "severity_text": "WARNING",
            "body": body,
            "attributes": dict(attributes),
        }
        if lean:
            log_records.emit(logger, **arguments)
        else:
            logger.emit(**arguments)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one(otel_context.get_current(), "outside a span")
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(CURRENT)))
        try:
            one(otel_context.get_current(), "inside a span")
            one(otel_context.Context(), "an empty context means the current one")
        finally:
            otel_context.detach(token)
        one(otel_context.get_current(), {"structured": ["body"]})
    return [_fields(item) for item in exporter.get_finished_logs()]


def _fields(item: ReadableLogRecord) -> dict[str, Any]:
    record = item.log_record
    assert record.observed_timestamp is not None
    return {
        "timestamp": record.timestamp,
        "trace": (record.trace_id, record.span_id, record.trace_flags),
        "severity": (record.severity_number, record.severity_text),
        "body": record.body,
        "attributes": dict(record.attributes or {}),
        "attribute_order": list(record.attributes or {}),
        "dropped": item.dropped_attributes,
        "event_name": record.event_name,
        "resource": item.resource.attributes,
        "scope": item.instrumentation_scope,
    }


@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
@pytest.mark.parametrize(
    "attributes",
    [ATTRIBUTES, {"plain": "only", "n": 1}, {}],
    ids=["every kind", "plain values", "no attributes"],
)
def test_the_lean_path_exports_what_the_sdk_path_exports(
    limits: LogRecordLimits, attributes: dict[str, Any]
) -> None:
    expected = _export(limits, lean=False, attributes=attributes)
    assert [item["trace"][0] for item in expected] == [0, 0x1234, 0x1234, 0]
    assert _export(limits, lean=True, attributes=attributes) == expected


def test_a_logger_that_is_not_the_sdks_is_asked_to_emit_itself() -> None:
    calls: list[dict[str, Any]] = []

    class Other:
        def emit(self, **arguments: Any) -> None:
            calls.append(arguments)

    log_records.emit(
        Other(),
        timestamp=1,
        context=otel_context.get_current(),
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        body="b",
        attributes={"k": "v"},
    )
    assert calls[0]["attributes"] == {"k": "v"}
