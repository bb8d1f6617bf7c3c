"""log_records.emit hands the SDK's processors what the SDK Logger.emit hands them."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordLimits,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from agent.telemetry import log_records, rows
from agent.telemetry.shipper import frame

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


class _Intake(LogRecordProcessor):
    """What reaches a processor that takes SDK records only."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        self.items.append(log_record)

    def shutdown(self) -> None:
        """Nothing to stop."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _RowIntake(_Intake):
    """What reaches a processor that also takes rows, as the shipper's does."""

    def ship_row(self, row: tuple[Any, ...]) -> None:
        self.items.append(row)


def _emit_all(
    processor: LogRecordProcessor, limits: LogRecordLimits, lean: bool, attributes: dict[str, Any]
) -> None:
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "logs"}),
        shutdown_on_exit=False,
        log_record_limits=limits,
    )
    provider.add_log_record_processor(processor)
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


def _export(
    limits: LogRecordLimits, lean: bool, attributes: dict[str, Any]
) -> list[dict[str, Any]]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    _emit_all(SimpleLogRecordProcessor(exporter), limits, lean, attributes)
    return [_fields(item) for item in exporter.get_finished_logs()]


def _shipped(intake: _Intake, limits: LogRecordLimits, attributes: dict[str, Any]) -> Any:
    """The batch the shipper would send, observed times zeroed, attribute order kept."""
    _emit_all(intake, limits, lean=True, attributes=attributes)
    resources, scopes, batch = rows.log_batch(intake.items)
    frame(("logs", (resources, scopes, batch)))  # marshal can write it
    return (
        resources,
        scopes,
        [(*row[:3], 0, *row[4:10], list((row[10] or {}).items()), *row[11:]) for row in batch],
    )


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


@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
@pytest.mark.parametrize(
    "attributes",
    [ATTRIBUTES, {"plain": "only", "n": 1, "yes": True, "r": 0.5}, {}],
    ids=["every kind", "plain values", "no attributes"],
)
def test_a_record_made_as_a_row_is_the_row_the_sdk_record_becomes(
    limits: LogRecordLimits, attributes: dict[str, Any]
) -> None:
    expected = _shipped(_Intake(), limits, attributes)
    intake = _RowIntake()
    assert _shipped(intake, limits, attributes) == expected
    made_as_rows = [isinstance(item, tuple) for item in intake.items]
    # Rows only where the SDK would store every value as it is and the body is a string.
    plain = attributes is not ATTRIBUTES and limits.max_attribute_length is None
    assert made_as_rows == [plain, plain, plain, False]


def _emit_info(logger: Any) -> None:
    log_records.emit(
        logger,
        timestamp=1,
        context=otel_context.get_current(),
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        body="b",
        attributes={"k": "v"},
    )


def test_a_processor_beside_the_shipper_gets_sdk_records() -> None:
    shipper, other = _RowIntake(), _Intake()
    provider = LoggerProvider(resource=Resource.create({}), shutdown_on_exit=False)
    provider.add_log_record_processor(shipper)
    provider.add_log_record_processor(other)
    logger = provider.get_logger("signal-sidecar.webhook")
    _emit_info(logger)
    assert shipper.items == other.items
    assert isinstance(other.items[0], ReadWriteLogRecord)


def test_a_logger_that_is_not_the_sdks_is_asked_to_emit_itself() -> None:
    calls: list[dict[str, Any]] = []

    class Other:
        def emit(self, **arguments: Any) -> None:
            calls.append(arguments)

    _emit_info(Other())
    assert calls[0]["attributes"] == {"k": "v"}
