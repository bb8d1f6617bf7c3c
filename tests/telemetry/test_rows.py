"""Spans and log records survive the trip through rows and marshal exactly as OTLP sees them."""

from __future__ import annotations

import io
from typing import cast

import pytest
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from agent.telemetry import rows
from agent.telemetry.otlp_wire import encode_logs, encode_spans
from agent.telemetry.setup import _span_texts
from agent.telemetry.shipper import frame, read_frame, write_frame
from agent.telemetry.tracing import LeanTracerProvider
from tests.telemetry.otlp_samples import varied_log_records, varied_spans


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
    spans = varied_spans(provider_class)
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
    spans = varied_spans(LeanTracerProvider)
    resources, scopes, span_rows = rows.span_batch(spans)
    assert len(resources) == 2
    assert len(scopes) == 3
    assert len(span_rows) == len(spans)


@pytest.mark.filterwarnings("ignore::opentelemetry.sdk._logs.LogRecordDroppedAttributesWarning")
def test_log_records_rebuilt_from_rows_encode_as_the_sdk_encodes_the_originals() -> None:
    batch = varied_log_records()
    rebuilt = rows.logs_from(_through_rows(rows.log_batch(batch)))
    expected = sdk_encode_logs(batch)
    assert ExportLogsServiceRequest.FromString(encode_logs(rebuilt)) == expected
    first = expected.resource_logs[0].scope_logs[0].log_records[0]
    assert first.trace_id  # not vacuous
    assert first.dropped_attributes_count == 1


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
    spans = varied_spans(LeanTracerProvider)
    expected: list[str] = []
    for span in spans:
        _span_texts(expected, span)
    texts = rows.span_texts(_through_rows(rows.span_batch(spans)))
    assert sorted(texts) == sorted(expected)
    assert "it broke: ✗" in texts  # not vacuous: status, event and link strings are in it
    assert "batch" in texts
