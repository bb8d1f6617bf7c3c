"""OTLP span and log batches written straight to protobuf wire bytes, without message objects.

The SDK's encoders build a Python protobuf object per span or record, attribute and value,
then serialise them: about 35-60 µs per span here, paid on the export thread under the GIL that
the pipeline needs. This module writes the same export requests (same fields, same presence
rules) directly; the tests decode its output with the official classes and compare it with the
SDK's encoding of the same data.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode

from agent.telemetry.tracing import attribute_dict, own_attributes

# These exporters stand in for the SDK's, so they log where the SDK's exporters log: their errors
# are then attributed to the signal in export health, and rate-limited to stderr, never exported.
_logger = logging.getLogger("opentelemetry.exporter.otlp.wire")

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
_SMALL = [bytes([n]) for n in range(128)]
_INT64 = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# Span.flags: the context has an is_remote bit (always), and whether it is set.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200

# Encoded attribute keys and scopes repeat in every batch; caches are bounded.
_CACHE_LIMIT = 4096
_keys: dict[str, bytes] = {}
# By identity: Resource hashes by dumping its attributes to JSON, on every lookup.
_resources: dict[int, tuple[Resource, bytes]] = {}
# Encoded attributes by (key, class, value), for values that compare exactly: not floats, since
# -0.0 == 0.0 encode differently, and not containers. Long strings are not worth keeping.
_pairs: dict[tuple[str, type, Any], bytes] = {}
_CACHED_KINDS = frozenset({str, int, bool})
_CACHED_TEXT = 256


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest holding the spans, grouped by resource, then by scope."""
    return _grouped((span.resource, span.instrumentation_scope, _span(span)) for span in spans)


def encode_logs(batch: Sequence[ReadableLogRecord]) -> bytes:
    """An ExportLogsServiceRequest holding the records, grouped by resource, then by scope.

    (ResourceLogs and ScopeLogs number their fields as ResourceSpans and ScopeSpans do.)
    """
    return _grouped((item.resource, item.instrumentation_scope, _log(item)) for item in batch)


def _grouped(items: Iterable[tuple[Resource, InstrumentationScope | None, bytes]]) -> bytes:
    """Resource -> scope -> encoded items, as the export requests of spans and logs nest them."""
    # Grouped by identity: the items of one provider share their Resource and scope objects.
    groups: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]]
    groups = {}
    for resource, scope, encoded_item in items:
        scope = scope or None
        scopes = groups.setdefault(id(resource), (resource, {}))[1]
        scopes.setdefault(id(scope), (scope, []))[1].append(_field(b"\x12", encoded_item))
    out: list[bytes] = []
    for resource, scopes in groups.values():
        parts = [_field(b"\x0a", _resource(resource))]
        for scope, encoded in scopes.values():
            scope_parts = [_field(b"\x0a", _scope(scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_parts.append(_string(b"\x1a", scope.schema_url))
            parts.append(_field(b"\x12", b"".join(scope_parts)))
        if resource.schema_url:
            parts.append(_string(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(parts)))
    return b"".join(out)


def _log(item: ReadableLogRecord) -> bytes:
    record = item.log_record
    parts: list[bytes] = []
    if record.timestamp:
        parts.append(b"\x09" + _pack_fixed64(record.timestamp))
    severity = getattr(record.severity_number, "value", None)
    if severity:
        parts.append(b"\x10" + _varint(severity))
    if record.severity_text:
        parts.append(_string(b"\x1a", record.severity_text))
    parts.append(_field(b"\x2a", _any_value(record.body)))
    if record.attributes:
        parts.append(_attributes(b"\x32", record.attributes))
    if item.dropped_attributes:
        parts.append(b"\x38" + _varint(item.dropped_attributes))
    if record.trace_flags:
        parts.append(b"\x45" + _pack_fixed32(int(record.trace_flags)))
    if record.trace_id:
        parts.append(b"\x4a\x10" + record.trace_id.to_bytes(16, "big"))
    if record.span_id:
        parts.append(b"\x52\x08" + record.span_id.to_bytes(8, "big"))
    if record.observed_timestamp:
        parts.append(b"\x59" + _pack_fixed64(record.observed_timestamp))
    if record.event_name:
        parts.append(_string(b"\x62", record.event_name))
    return b"".join(parts)


def _span(span: ReadableSpan) -> bytes:
    context = span.context
    if context is None:
        raise ValueError("span without a context")
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    state = context.trace_state
    if state:
        parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items())))
    parent = span.parent
    if parent:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_string(b"\x2a", span.name))
    parts.append(_KINDS[span.kind._value_])
    if span.start_time:
        parts.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _pack_fixed64(span.end_time))
    # The span's own containers, not the copies its properties make (a proxy, tuples).
    attributes = own_attributes(span)
    if attributes:
        parts.append(_attributes(b"\x4a", attributes))
        dropped = getattr(attributes, "dropped", 0)
        if dropped:
            parts.append(b"\x50" + _varint(dropped))
    events = _own(span, "_events", "events")
    if len(events):
        for event in events:
            parts.append(_field(b"\x5a", _event(event)))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
    links = _own(span, "_links", "links")
    if len(links):
        for link in links:
            parts.append(_field(b"\x6a", _link(link)))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status.description:
        status_body = (
            _string(b"\x12", status.description) + _STATUS_CODES[status.status_code._value_]
        )
        parts.append(_field(b"\x7a", status_body))
    else:
        parts.append(
            _STATUSES[status.status_code._value_]
        )  # present even when empty, as the SDK has it
    parts.append(_SPAN_FLAGS_REMOTE if parent is not None and parent.is_remote else _SPAN_FLAGS)
    return b"".join(parts)


def _own(span: ReadableSpan, field: str, public: str) -> Collection[Any]:
    """A span's own events or links container, or the copy its property makes when it has none."""
    items = getattr(span, field, None)
    if items.__class__ in _SEQUENCES or isinstance(items, Collection):
        return items
    found: Collection[Any] = getattr(span, public)
    return found


def _event(event: Event) -> bytes:
    parts = [b"\x09" + _pack_fixed64(event.timestamp)] if event.timestamp else []
    if event.name:
        parts.append(_string(b"\x12", event.name))
    if event.attributes:
        parts.append(_attributes(b"\x1a", event.attributes))
    if event.dropped_attributes:
        parts.append(b"\x20" + _varint(event.dropped_attributes))
    return b"".join(parts)


def _link(link: Link) -> bytes:
    parts = [
        b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + link.context.span_id.to_bytes(8, "big"),
    ]
    if link.attributes:
        parts.append(_attributes(b"\x22", link.attributes))
    if link.dropped_attributes:
        parts.append(b"\x28" + _varint(link.dropped_attributes))
    parts.append(b"\x35" + _pack_fixed32(_flags(link.context)))
    return b"".join(parts)


def _flags(parent: SpanContext | None) -> int:
    if parent is not None and parent.is_remote:
        return _HAS_IS_REMOTE | _IS_REMOTE
    return _HAS_IS_REMOTE


def _resource(resource: Resource) -> bytes:
    """The encoded Resource message, cached per resource object."""
    cached = _resources.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    encoded = _attributes(b"\x0a", resource.attributes) if resource.attributes else b""
    if len(_resources) >= _CACHE_LIMIT:
        _resources.clear()
    _resources[id(resource)] = (resource, encoded)
    return encoded


def _scope(scope: InstrumentationScope | None) -> bytes:
    parts: list[bytes] = []
    if scope is not None:
        if scope.name:
            parts.append(_string(b"\x0a", scope.name))
        if scope.version:
            parts.append(_string(b"\x12", scope.version))
        if scope.attributes:
            parts.append(_attributes(b"\x1a", scope.attributes))
    return b"".join(parts)


def _attributes(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    """Repeated KeyValue under tag; an attribute that cannot be encoded is left out."""
    parts: list[bytes] = []
    for key, value in attribute_dict(attributes).items():
        kind = value.__class__
        if kind in _CACHED_KINDS and (kind is not str or len(value) <= _CACHED_TEXT):
            # Mailboxes, outcomes, methods, URLs, ports: most values repeat from span to span.
            # The class is part of the key, since True == 1 and their encodings differ.
            cache_key = (key, kind, value)
            body = _pairs.get(cache_key)
            if body is None:
                body = _pair(key, value)
                if len(_pairs) >= _CACHE_LIMIT:
                    _pairs.clear()
                _pairs[cache_key] = body
        else:
            body = _pair(key, value)
        if body:
            parts.append(tag + body)
    return b"".join(parts)


def _pair(key: str, value: Any) -> bytes:
    """A KeyValue with its length prefix; empty when the value cannot be encoded."""
    if value.__class__ is str:
        encoded = _string(b"\x0a", value)  # the common case, ahead of _any_value's checks
    else:
        try:
            encoded = _any_value(value)
        except (TypeError, ValueError) as exc:
            _logger.warning("attribute %s not encoded: %s", key, exc)
            return b""
    pair = _key(key) + b"\x12" + _varint(len(encoded)) + encoded
    return _varint(len(pair)) + pair


def _key(key: str) -> bytes:
    encoded = _keys.get(key)
    if encoded is None:
        encoded = _string(b"\x0a", key)
        if len(_keys) >= _CACHE_LIMIT:
            _keys.clear()
        _keys[key] = encoded
    return encoded


def _any_value(value: Any) -> bytes:
    """An AnyValue; the oneof member is written even when it holds its default."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _string(b"\x0a", value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} does not fit an int64")  # skipped, as the SDK skips it
        return b"\x18" + _varint(value & _INT64)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        pairs = b"".join(
            _field(b"\x0a", _key(str(k)) + _field(b"\x12", _any_value(v))) for k, v in value.items()
        )
        return _field(b"\x32", pairs)
    raise TypeError(f"cannot encode a {type(value).__name__}")


def _string(tag: bytes, text: str) -> bytes:
    data = text.encode("utf-8")
    return tag + _varint(len(data)) + data


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# By the enums' values: Enum.__hash__ is a Python method, the value's hash is not.
_KINDS = {kind.value: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}
_STATUS_CODES = {
    code.value: b"\x18" + _SMALL[code.value] if code.value else b"" for code in StatusCode
}
_STATUSES = {code: _field(b"\x7a", body) for code, body in _STATUS_CODES.items()}
_SPAN_FLAGS = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)
_SPAN_FLAGS_REMOTE = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
# The containers SDK spans keep their events and links in (BoundedList, or LeanSpan's tuple).
_SEQUENCES = frozenset({BoundedList, tuple, list})


def _post(
    exporter: OTLPSpanExporter | OTLPLogExporter,
    signal: str,
    data: Callable[[], bytes],
    count: int,
) -> bool:
    """Encodes and posts one batch as the SDK exporters do; whether it was accepted.

    It reads the SDK exporter's own client, limit and self-metrics (the OpenTelemetry packages
    are pinned to one release; the end-to-end tests against Jaeger and the collector fail if
    that release changes them).
    """
    if exporter._shutdown:
        _logger.warning("%s exporter already shut down, batch ignored", signal)
        return False
    with exporter._metrics.export_operation(count) as result:
        try:
            body = data()
        except Exception as error:  # the SDK's contract: a bad batch fails, never raises
            _logger.error("%s batch not encoded: %s", signal, error)
            result.error = error
            return False
        if 0 < exporter._max_request_size < len(body):
            _logger.warning(
                "%s batch of %d bytes dropped: over max_request_size %d",
                signal,
                len(body),
                exporter._max_request_size,
            )
            return False
        sent = exporter._client.export(body)
        if not sent.success:
            result.error = sent.error
            return False
    return True


class WireSpanExporter(OTLPSpanExporter):
    """OTLP/HTTP span export with encode_spans above; transport, retries, timeouts are the SDK's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encodes the batch and posts it, as the SDK exporter does."""
        if _post(self, "span", lambda: encode_spans(spans), len(spans)):
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE


class WireLogExporter(OTLPLogExporter):
    """OTLP/HTTP log export with encode_logs above; transport, retries, timeouts are the SDK's."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Encodes the batch and posts it, as the SDK exporter does."""
        if _post(self, "log", lambda: encode_logs(batch), len(batch)):
            return LogRecordExportResult.SUCCESS
        return LogRecordExportResult.FAILURE
