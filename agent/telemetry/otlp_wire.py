"""OTLP span and log batches written straight to protobuf wire bytes, without message objects.

The SDK's encoders build a Python protobuf object per span or record, attribute and value,
then serialise them: about 35-60 µs per span here, paid on the export thread under the GIL that
the pipeline needs. This module writes the same export requests (same fields, same presence
rules) directly, from the rows of agent/telemetry/rows.py: the telemetry shipper process
receives rows and encodes them without rebuilding SDK objects, and spans and records in this
process become rows first. The tests decode the output with the official classes and compare it
with the SDK's encoding of the same data.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from agent.telemetry import rows

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

# Encoded attribute keys and key-value pairs repeat in every batch; the caches are bounded.
_CACHE_LIMIT = 4096
_keys: dict[str, bytes] = {}
# Encoded attributes by (key, class, value), for values that compare exactly: not floats, since
# -0.0 == 0.0 encode differently, and not containers. Long strings are not worth keeping.
_pairs: dict[tuple[str, type, Any], bytes] = {}
_CACHED_KINDS = frozenset({str, int, bool})
_CACHED_TEXT = 256


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An ExportTraceServiceRequest holding the spans, grouped by resource, then by scope."""
    return encode_span_rows(rows.span_batch(spans))


def encode_logs(batch: Sequence[ReadableLogRecord]) -> bytes:
    """An ExportLogsServiceRequest holding the records, grouped by resource, then by scope."""
    return encode_log_rows(rows.log_batch(batch))


def encode_span_rows(batch: rows.Batch) -> bytes:
    """encode_spans of the spans a row batch (agent/telemetry/rows.py) was made of."""
    return _grouped(batch, _span)


def encode_log_rows(batch: rows.Batch) -> bytes:
    """encode_logs of the records a row batch was made of.

    (ResourceLogs and ScopeLogs number their fields as ResourceSpans and ScopeSpans do.)
    """
    return _grouped(batch, _log)


def _grouped(batch: rows.Batch, encode: Callable[[tuple[Any, ...]], bytes]) -> bytes:
    """Resource -> scope -> encoded items, as the export requests of spans and logs nest them."""
    resources, scopes, items = batch
    groups: dict[int, dict[int, list[bytes]]] = {}
    for row in items:
        encoded = encode(row)
        groups.setdefault(row[0], {}).setdefault(row[1], []).append(
            b"\x12" + _varint(len(encoded)) + encoded
        )
    out: list[bytes] = []
    for resource_index, by_scope in groups.items():
        attributes, resource_schema = resources[resource_index]
        parts = [_field(b"\x0a", _attributes(b"\x0a", attributes) if attributes else b"")]
        for scope_index, encoded_items in by_scope.items():
            scope = scopes[scope_index]
            scope_parts = [_field(b"\x0a", _scope(scope)), *encoded_items]
            if scope is not None and scope[2]:
                scope_parts.append(_string(b"\x1a", scope[2]))
            parts.append(_field(b"\x12", b"".join(scope_parts)))
        if resource_schema:
            parts.append(_string(b"\x1a", resource_schema))
        out.append(_field(b"\x0a", b"".join(parts)))
    return b"".join(out)


def _log(row: tuple[Any, ...]) -> bytes:
    (_, _, timestamp, observed, trace_id, span_id, flags, severity, severity_text, body,
     attributes, dropped, event_name) = row  # fmt: skip
    parts: list[bytes] = []
    if timestamp:
        parts.append(b"\x09" + _pack_fixed64(timestamp))
    if severity:
        parts.append(b"\x10" + _varint(severity))
    if severity_text:
        parts.append(_string(b"\x1a", severity_text))
    parts.append(_field(b"\x2a", _any_value(body)))
    if attributes:
        parts.append(_attributes(b"\x32", attributes))
    if dropped:
        parts.append(b"\x38" + _varint(dropped))
    if flags:
        parts.append(b"\x45" + _pack_fixed32(flags))
    if trace_id:
        parts.append(b"\x4a\x10" + trace_id.to_bytes(16, "big"))
    if span_id:
        parts.append(b"\x52\x08" + span_id.to_bytes(8, "big"))
    if observed:
        parts.append(b"\x59" + _pack_fixed64(observed))
    if event_name:
        parts.append(_string(b"\x62", event_name))
    return b"".join(parts)


def _span(row: tuple[Any, ...]) -> bytes:
    (_, _, name, context, parent, kind, start, end, code, description, attributes,
     dropped_attributes, events, dropped_events, links, dropped_links) = row  # fmt: skip
    trace_id, span_id, _, _, state = context
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big"), b"\x12\x08" + span_id.to_bytes(8, "big")]
    if state:
        parts.append(_string(b"\x1a", ",".join(f"{k}={v}" for k, v in state)))
    if parent is not None:
        parts.append(b"\x22\x08" + parent[1].to_bytes(8, "big"))
    if name:
        parts.append(_string(b"\x2a", name))
    parts.append(_KINDS[kind])
    if start:
        parts.append(b"\x39" + _pack_fixed64(start))
    if end:
        parts.append(b"\x41" + _pack_fixed64(end))
    if attributes:
        parts.append(_attributes(b"\x4a", attributes))
    if dropped_attributes:
        parts.append(b"\x50" + _varint(dropped_attributes))
    for event in events or ():
        parts.append(_field(b"\x5a", _event(event)))
    if dropped_events:
        parts.append(b"\x60" + _varint(dropped_events))
    for link in links or ():
        parts.append(_field(b"\x6a", _link(link)))
    if dropped_links:
        parts.append(b"\x70" + _varint(dropped_links))
    if description:
        parts.append(_field(b"\x7a", _string(b"\x12", description) + _STATUS_CODES[code]))
    else:
        parts.append(_STATUSES[code])  # present even when empty, as the SDK has it
    parts.append(_SPAN_FLAGS_REMOTE if parent is not None and parent[2] else _SPAN_FLAGS)
    return b"".join(parts)


def _event(row: tuple[Any, ...]) -> bytes:
    name, timestamp, attributes, dropped = row
    parts = [b"\x09" + _pack_fixed64(timestamp)] if timestamp else []
    if name:
        parts.append(_string(b"\x12", name))
    if attributes:
        parts.append(_attributes(b"\x1a", attributes))
    if dropped:
        parts.append(b"\x20" + _varint(dropped))
    return b"".join(parts)


def _link(row: tuple[Any, ...]) -> bytes:
    (trace_id, span_id, is_remote, _, _), attributes, dropped = row
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big"), b"\x12\x08" + span_id.to_bytes(8, "big")]
    if attributes:
        parts.append(_attributes(b"\x22", attributes))
    if dropped:
        parts.append(b"\x28" + _varint(dropped))
    parts.append(
        b"\x35" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE if is_remote else _HAS_IS_REMOTE)
    )
    return b"".join(parts)


def _scope(scope: tuple[Any, ...] | None) -> bytes:
    if scope is None:
        return b""
    name, version, _, attributes = scope
    parts: list[bytes] = []
    if name:
        parts.append(_string(b"\x0a", name))
    if version:
        parts.append(_string(b"\x12", version))
    if attributes:
        parts.append(_attributes(b"\x1a", attributes))
    return b"".join(parts)


def _attributes(tag: bytes, attributes: Mapping[str, Any]) -> bytes:
    """Repeated KeyValue under tag; an attribute that cannot be encoded is left out."""
    parts: list[bytes] = []
    for key, value in attributes.items():
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
_LINK_FLAGS = b"\x35" + _pack_fixed32(_HAS_IS_REMOTE)
_LINK_FLAGS_REMOTE = b"\x35" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


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
        return self.export_rows(rows.span_batch(spans))

    def export_rows(self, batch: rows.Batch) -> SpanExportResult:
        """Posts the spans of a row batch."""
        if _post(self, "span", lambda: encode_span_rows(batch), len(batch[2])):
            return SpanExportResult.SUCCESS
        return SpanExportResult.FAILURE


class WireLogExporter(OTLPLogExporter):
    """OTLP/HTTP log export with encode_logs above; transport, retries, timeouts are the SDK's."""

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Encodes the batch and posts it, as the SDK exporter does."""
        return self.export_rows(rows.log_batch(batch))

    def export_rows(self, batch: rows.Batch) -> LogRecordExportResult:
        """Posts the records of a row batch."""
        if _post(self, "log", lambda: encode_log_rows(batch), len(batch[2])):
            return LogRecordExportResult.SUCCESS
        return LogRecordExportResult.FAILURE
