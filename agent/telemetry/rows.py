"""Ended spans and log records as tuples of plain values, so another process can export them.

Encoding OTLP costs about 15 µs per span under the GIL the pipeline needs. A row is a tuple of
ints, strings, dicts and tuples that `marshal` writes in about a microsecond; the shipper process
(agent/telemetry/shipper_main.py) turns rows back into SDK objects and exports those with the
same exporters. tests/telemetry/test_rows.py checks that what the rows rebuild encodes to the
same OTLP request as the original.

Resources and instrumentation scopes repeat in every batch: a batch holds them once, in tables,
and each row names its entries by index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LogRecordLimits, ReadableLogRecord, ReadWriteLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

from agent.telemetry.masking import strings_in
from agent.telemetry.tracing import attribute_dict, bounded_attributes, own_attributes

# A batch: (resources, scopes, rows). A resource is (attributes, schema_url); a scope is
# (name, version, schema_url, attributes) or None.
Batch = tuple[list[Any], list[Any], list[tuple[Any, ...]]]

_KINDS = {kind.value: kind for kind in SpanKind}
_CODES = {code.value: code for code in StatusCode}
_SEVERITIES = {severity.value: severity for severity in SeverityNumber}
_NO_LIMITS = LogRecordLimits()


class Tables:
    """Index of each resource and scope of one batch, by identity (they are shared objects)."""

    __slots__ = ("_resource_index", "_scope_index", "resources", "scopes")

    def __init__(self) -> None:
        self.resources: list[Any] = []
        self.scopes: list[Any] = []
        self._resource_index: dict[int, int] = {}
        self._scope_index: dict[int, int] = {}

    def resource(self, resource: Resource) -> int:
        index = self._resource_index.get(id(resource))
        if index is None:
            index = self._resource_index[id(resource)] = len(self.resources)
            self.resources.append((_plain(resource.attributes), resource.schema_url or ""))
        return index

    def scope(self, scope: InstrumentationScope | None) -> int:
        index = self._scope_index.get(id(scope))
        if index is None:
            index = self._scope_index[id(scope)] = len(self.scopes)
            self.scopes.append(
                None
                if scope is None
                else (scope.name, scope.version, scope.schema_url, _plain(scope.attributes))
            )
        return index


def span_batch(spans: Iterable[ReadableSpan | tuple[Any, ...]], *, copy: bool = False) -> Batch:
    """The rows of ended spans, with their resource and scope tables.

    An ended span's attributes no longer change, so its rows share the span's attribute dict
    unless `copy` asks for plain copies (for values marshal cannot write). A span may already
    be a row whose first two fields are its Resource and scope objects (a RowSpan's).
    """
    tables = Tables()
    rows = [
        _indexed(tables, span, copy) if isinstance(span, tuple) else _span_row(tables, span, copy)
        for span in spans
    ]
    return tables.resources, tables.scopes, rows


def log_batch(
    records: Iterable[ReadWriteLogRecord | ReadableLogRecord | tuple[Any, ...]],
    *,
    copy: bool = False,
) -> Batch:
    """The rows of emitted log records, with their resource and scope tables (as span_batch).

    A record may already be a row whose first two fields are its Resource and scope objects
    (log_records.emit makes those when the shipper is the only processor).
    """
    tables = Tables()
    rows = [_log_row(tables, record, copy) for record in records]
    return tables.resources, tables.scopes, rows


def span_texts(batch: Batch) -> list[str]:
    """Every string of a span batch that masking reads: names, statuses, attribute values."""
    out: list[str] = []
    for row in batch[2]:
        out.append(row[2])
        out.append(row[9] or "")
        if row[10]:
            strings_in(out, row[10])
        for name, _, attributes, _ in row[12] or ():
            out.append(name)
            if attributes:
                strings_in(out, attributes)
        for _, attributes, _ in row[14] or ():
            if attributes:
                strings_in(out, attributes)
    return out


def spans_from(batch: Batch) -> list[ReadableSpan]:
    """The ReadableSpans a span batch was made of."""
    resources, scopes = _rebuild_tables(batch)
    return [_span(resources, scopes, row) for row in batch[2]]


def logs_from(batch: Batch) -> list[ReadableLogRecord]:
    """The ReadableLogRecords a log batch was made of."""
    resources, scopes = _rebuild_tables(batch)
    return [_log(resources, scopes, row) for row in batch[2]]


def _span_row(tables: Tables, span: ReadableSpan, copy: bool) -> tuple[Any, ...]:
    context = span._context
    if context is None:
        raise ValueError("span without a context")
    parent = span._parent
    status = span._status
    attributes = own_attributes(span)
    events = span._events
    links = span._links
    return (
        tables.resource(span._resource),
        tables.scope(span._instrumentation_scope),
        span._name,
        context_row(context),
        None if parent is None else context_row(parent),
        span._kind._value_,
        span._start_time,
        span._end_time,
        status.status_code._value_,
        status.description,
        _attribute_values(attributes, copy),
        getattr(attributes, "dropped", 0),
        tuple(event_row(event) for event in events) if len(events) else None,
        getattr(events, "dropped", 0),
        tuple(link_row(link) for link in links) if len(links) else None,
        getattr(links, "dropped", 0),
    )


def context_row(context: SpanContext) -> tuple[Any, ...]:
    """(trace id, span id, remote, flags, trace state items or None) of a span context."""
    trace_id, span_id, is_remote, flags, state = context[:5]  # a SpanContext is a tuple
    return (
        trace_id,
        span_id,
        is_remote,
        int(flags),
        None if state is DEFAULT_TRACE_STATE or not state else tuple(state.items()),
    )


def event_row(event: Event) -> tuple[Any, ...]:
    """(name, timestamp, plain attributes or None, dropped attributes) of a span event."""
    attributes = event.attributes
    return (
        event.name,
        event.timestamp,
        _plain(attributes) if attributes else None,
        getattr(attributes, "dropped", 0),
    )


def link_row(link: Link) -> tuple[Any, ...]:
    """(context row, plain attributes or None, dropped attributes) of a span link."""
    attributes = link.attributes
    return (
        context_row(link.context),
        _plain(attributes) if attributes else None,
        getattr(attributes, "dropped", 0),
    )


def _log_row(
    tables: Tables, item: ReadWriteLogRecord | ReadableLogRecord | tuple[Any, ...], copy: bool
) -> tuple[Any, ...]:
    if isinstance(item, tuple):  # made as a row by log_records.emit
        return _indexed(tables, item, copy)
    record = item.log_record
    attributes = record.attributes
    severity = record.severity_number
    return (
        tables.resource(item.resource or Resource.get_empty()),
        tables.scope(item.instrumentation_scope),
        record.timestamp,
        record.observed_timestamp,
        record.trace_id,
        record.span_id,
        None if record.trace_flags is None else int(record.trace_flags),
        None if severity is None else severity.value,
        record.severity_text,
        _plain_value(record.body),
        _attribute_values(attributes, copy),
        getattr(attributes, "dropped", 0),
        record.event_name,
    )


def _indexed(tables: Tables, row: tuple[Any, ...], copy: bool) -> tuple[Any, ...]:
    """A row made with its Resource and scope objects, naming their entries in the tables.

    Span and log rows both hold their attribute values at index 10.
    """
    return (tables.resource(row[0]), tables.scope(row[1]), *row[2:10],
            _attribute_values(row[10], copy), *row[11:])  # fmt: skip


def _attribute_values(attributes: Mapping[str, Any] | None, copy: bool) -> Any:
    if not attributes:
        return None
    values = attribute_dict(attributes)
    return _plain(values) if copy else values


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A dict marshal can write: the SDK leaves attribute values plain or as tuples of plain."""
    if not attributes:
        return {}
    return {key: _plain_value(value) for key, value in attributes.items()}


def _plain_value(value: Any) -> Any:
    kind = value.__class__
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, Mapping):
        return {str(key): _plain_value(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_plain_value(item) for item in value)
    return str(value)


def _rebuild_tables(batch: Batch) -> tuple[list[Resource], list[InstrumentationScope | None]]:
    resources = [Resource(attributes, schema_url or None) for attributes, schema_url in batch[0]]
    scopes = [
        None if scope is None else InstrumentationScope(scope[0], scope[1], scope[2], scope[3])
        for scope in batch[1]
    ]
    return resources, scopes


def _context(row: tuple[Any, ...]) -> SpanContext:
    trace_id, span_id, is_remote, flags, state = row
    return SpanContext(
        trace_id,
        span_id,
        is_remote=is_remote,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState(list(state)) if state else None,
    )


def _attributes(values: dict[str, Any] | None, dropped: int) -> Mapping[str, Any] | None:
    """The values as they were cleaned in the sidecar; BoundedAttributes only to carry `dropped`."""
    if not dropped:
        return values
    attributes = bounded_attributes(None, None, values or {})
    attributes.dropped = dropped
    attributes._immutable = True
    return attributes


def _bounded(items: list[Any], dropped: int) -> Sequence[Any]:
    if not dropped:
        return tuple(items)
    bounded: BoundedList[Any] = BoundedList(None)
    bounded.extend(items)
    bounded.dropped = dropped
    return bounded


def _span(
    resources: list[Resource], scopes: list[InstrumentationScope | None], row: tuple[Any, ...]
) -> ReadableSpan:
    (resource, scope, name, context, parent, kind, start, end, code, description, attributes,
     dropped_attributes, events, dropped_events, links, dropped_links) = row  # fmt: skip
    status_code = _CODES[code]
    return ReadableSpan(
        name=name,
        context=_context(context),
        parent=None if parent is None else _context(parent),
        resource=resources[resource],
        attributes=_attributes(attributes, dropped_attributes),
        events=_bounded(
            [
                Event(event_name, _attributes(values, dropped), timestamp)
                for event_name, timestamp, values, dropped in events or ()
            ],
            dropped_events,
        ),
        links=_bounded(
            [
                Link(_context(link_context), _attributes(values, dropped))
                for link_context, values, dropped in links or ()
            ],
            dropped_links,
        ),
        kind=_KINDS[kind],
        status=Status(status_code, description) if description else Status(status_code),
        start_time=start,
        end_time=end,
        instrumentation_scope=scopes[scope],
    )


def _log(
    resources: list[Resource], scopes: list[InstrumentationScope | None], row: tuple[Any, ...]
) -> ReadableLogRecord:
    (resource, scope, timestamp, observed, trace_id, span_id, flags, severity, severity_text,
     body, attributes, dropped, event_name) = row  # fmt: skip
    record = LogRecord.__new__(LogRecord)  # __init__ would read ids from the current context
    record.timestamp = timestamp
    record.observed_timestamp = observed
    record.context = Context()
    record.trace_id = trace_id
    record.span_id = span_id
    record.trace_flags = TraceFlags(flags or 0)
    record.severity_text = severity_text
    record.severity_number = None if severity is None else _SEVERITIES[severity]
    record.body = body
    record.event_name = event_name
    record.exception = None
    record.attributes = _attributes(attributes, dropped)
    return ReadableLogRecord(
        log_record=record,
        resource=resources[resource],
        instrumentation_scope=scopes[scope],
        limits=_NO_LIMITS,
    )
