"""OTLP log records handed to the SDK's processors with less work, one per structured log line.

`Logger.emit(...)` of SDK 1.45 builds an API LogRecord, then a ReadWriteLogRecord that copies
its attributes into BoundedAttributes by cleaning every value recursively. `emit` below makes
the same two objects directly (plain attribute values stored as they are, the others cleaned by
the SDK) and gives them to the same processors. Anything else (an exception to attach, a record
object, a disabled logger) takes the SDK's own path. tests/telemetry/test_log_records.py
compares what both paths export.

When the telemetry shipper is the logger's only processor, a record is built as the row the
shipper sends (agent/telemetry/rows.py), with no SDK objects at all: the row is what the
sender thread would have made of them, and it costs less on the thread that logs.
"""

from __future__ import annotations

import warnings
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context, get_current
from opentelemetry.sdk._logs import (
    Logger,
    LogRecordDroppedAttributesWarning,
    ReadWriteLogRecord,
)
from opentelemetry.util import types

from agent.telemetry.tracing import PLAIN_TYPES, bounded_attributes

_NO_ATTRIBUTES: dict[str, types.AnyValue] = {}
# Attribute values a log record stores as they are (no length limit applies by default).
PLAIN_VALUES = PLAIN_TYPES | {str}


def emit(
    logger: Any,
    *,
    timestamp: int,
    context: Context,
    severity_number: SeverityNumber,
    severity_text: str,
    body: types.AnyValue,
    attributes: dict[str, types.AnyValue],
) -> None:
    """What logger.emit(...) with these arguments does, for an SDK Logger; others are asked."""
    if type(logger) is not Logger or not logger._is_enabled():
        logger.emit(
            timestamp=timestamp,
            context=context,
            severity_number=severity_number,
            severity_text=severity_text,
            body=body,
            attributes=attributes,
        )
        return
    if not context:
        context = get_current()
    span_context = trace.get_current_span(context).get_span_context()
    limits = logger._log_record_limits
    ship_row = _row_sink(logger)
    if ship_row is not None and body.__class__ is str and _row_ready(limits, attributes):
        logger._logger_metrics.emit_log()
        ship_row(
            (
                logger._resource,
                logger._instrumentation_scope,
                timestamp,
                time_ns(),
                span_context.trace_id,
                span_context.span_id,
                int(span_context.trace_flags),
                severity_number.value,
                severity_text,
                body,
                attributes or None,
                0,
                None,
            )
        )
        return
    record = LogRecord.__new__(LogRecord)
    record.timestamp = timestamp
    record.observed_timestamp = time_ns()
    record.context = context
    record.trace_id = span_context.trace_id
    record.span_id = span_context.span_id
    record.trace_flags = span_context.trace_flags
    record.severity_text = severity_text
    record.severity_number = severity_number
    record.body = body
    record.attributes = bounded_attributes(
        limits.max_log_record_attributes,
        limits.max_log_record_attribute_length,
        attributes or _NO_ATTRIBUTES,
    )
    record.event_name = None
    record.exception = None
    writable = ReadWriteLogRecord.__new__(ReadWriteLogRecord)
    writable.log_record = record
    writable.resource = logger._resource
    writable.instrumentation_scope = logger._instrumentation_scope
    writable.limits = limits
    if writable.dropped_attributes > 0:
        warnings.warn(
            "Log record attributes were dropped due to limits",
            LogRecordDroppedAttributesWarning,
            stacklevel=2,
        )
    logger._logger_metrics.emit_log()
    logger._multi_log_record_processor.on_emit(writable)


def _row_sink(logger: Logger) -> Any:
    """The shipper's row intake when it is the logger's only processor; None otherwise."""
    processors: tuple[Any, ...] = getattr(
        logger._multi_log_record_processor, "_log_record_processors", ()
    )
    if len(processors) != 1:
        return None
    return getattr(processors[0], "ship_row", None)


def _row_ready(limits: Any, attributes: dict[str, types.AnyValue]) -> bool:
    """True when the SDK would store these attributes unchanged (so the row is its result)."""
    if limits.max_log_record_attribute_length is not None:
        return False
    maximum = limits.max_log_record_attributes
    if maximum is not None and len(attributes) > maximum:
        return False
    for key, value in attributes.items():
        if value.__class__ not in PLAIN_VALUES or key.__class__ is not str or not key:
            return False
    return True
