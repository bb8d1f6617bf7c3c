"""The wire encoders write what the SDK's encoders write; their exporters reach the real stack."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs as sdk_encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    SpanKind,
    StatusCode,
)

from agent.telemetry.exporters import ExportTracker, TrackedSpanExporter
from agent.telemetry.otlp_wire import WireLogExporter, WireSpanExporter, encode_logs, encode_spans
from tests.fixtures.collector import TelemetryStack
from tests.telemetry.otlp_samples import LIMITS, VALUES, varied_log_records, varied_spans


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "wire", "deployment": "test"}, "https://s/1"),
        span_limits=LIMITS,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _same(spans: list[ReadableSpan]) -> None:
    expected = sdk_encode(spans)
    actual = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert actual == expected


def test_every_attribute_type_encodes_as_the_sdk_encodes_it(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    with tracer_provider.get_tracer("t").start_as_current_span("attrs", attributes=VALUES):
        pass
    _same(list(exporter.get_finished_spans()))


def test_kinds_statuses_events_links_and_parents_encode_as_the_sdk_encodes_them() -> None:
    _same(varied_spans(TracerProvider))


def test_repeated_values_encode_from_the_cache_without_equal_values_of_other_types_mixing(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("t")
    # True == 1 == 1.0 and 0.0 == -0.0 in Python; each encodes differently on the wire.
    for value in (True, 1, 1.0, 1, True, False, 0, 0.0, -0.0, 0, "1", "1", "x" * 300, "x" * 300):
        with tracer.start_as_current_span("repeat", attributes={"same.key": value}):
            pass
        with tracer.start_as_current_span("event") as span:
            span.add_event("e", {"same.key": value})
    _same(list(exporter.get_finished_spans()))


def test_an_attribute_that_fits_no_otlp_value_is_left_out_as_the_sdk_leaves_it_out(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    wide = {"fits": 2**63 - 1, "too_big": 2**64, "too_small": -(2**63) - 1,
            "in_a_list": (1, 2**70), "kept": "yes"}  # fmt: skip
    with tracer_provider.get_tracer("t").start_as_current_span("wide", attributes=wide):
        pass
    spans = list(exporter.get_finished_spans())
    _same(spans)
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    keys = [kv.key for kv in decoded.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["fits", "kept"]


def test_spans_of_two_resources_stay_apart(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    second = TracerProvider(resource=Resource.create({"service.name": "second"}))
    second.add_span_processor(SimpleSpanProcessor(exporter))
    for index in range(3):
        for source in (tracer_provider, second):
            with source.get_tracer("t").start_as_current_span(f"span {index}"):
                pass
    spans = list(exporter.get_finished_spans())
    _same(spans)
    decoded = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert [len(r.scope_spans[0].spans) for r in decoded.resource_spans] == [3, 3]
    second.shutdown()


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode_spans([]) == b""


def test_the_exporter_delivers_every_attribute_type_to_jaeger(
    telemetry_stack: TelemetryStack,
) -> None:
    service = f"wire-{uuid.uuid4().hex[:8]}"
    exporter = WireSpanExporter(endpoint=f"{telemetry_stack.otlp_http_endpoint}/v1/traces",
                                timeout=5)  # fmt: skip
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("wire-test").start_as_current_span("parent") as parent:
        with provider.get_tracer("wire-test").start_as_current_span(
            "child", kind=SpanKind.CLIENT, attributes=VALUES
        ) as child:
            child.set_status(StatusCode.ERROR, "boom")
        trace_id = format(parent.get_span_context().trace_id, "032x")
    provider.shutdown()
    deadline = time.monotonic() + 20
    spans: dict[str, dict[str, Any]] = {}
    while len(spans) < 2:
        assert time.monotonic() < deadline, "the spans did not reach Jaeger"
        traces = [t for t in telemetry_stack.traces(service) if t["traceID"] == trace_id]
        spans = {s["operationName"]: s for t in traces for s in t["spans"]}
        time.sleep(0.3)
    tags = {tag["key"]: tag["value"] for tag in spans["child"]["tags"]}
    assert tags["text"] == "délivré ✓"
    assert tags["yes"] is True
    assert tags["no"] is False
    assert tags["negative"] == -42
    assert tags["ratio"] == 0.25
    assert tags["span.kind"] == "client"
    assert tags["otel.status_description"] == "boom"
    references = spans["child"]["references"]
    assert references[0]["spanID"] == spans["parent"]["spanID"]


@pytest.mark.filterwarnings("ignore::opentelemetry.sdk._logs.LogRecordDroppedAttributesWarning")
def test_log_records_encode_as_the_sdk_encodes_them() -> None:
    batch = varied_log_records()
    assert len(batch) == 4
    expected = sdk_encode_logs(batch)
    actual = ExportLogsServiceRequest.FromString(encode_logs(batch))
    assert actual == expected
    assert actual.resource_logs[0].scope_logs[1].log_records[0].attributes  # not vacuous


def test_the_log_exporter_delivers_records_to_the_collector(
    telemetry_stack: TelemetryStack,
) -> None:
    marker = f"wire-log-{uuid.uuid4().hex[:8]}"
    provider = LoggerProvider(resource=Resource.create({"service.name": marker}))
    exporter = WireLogExporter(endpoint=f"{telemetry_stack.otlp_http_endpoint}/v1/logs", timeout=5)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    provider.get_logger("signal-sidecar.test").emit(
        severity_number=SeverityNumber.ERROR, body=marker, attributes={"count": 7}
    )
    provider.shutdown()
    deadline = time.monotonic() + 20
    while marker not in telemetry_stack.debug_output():
        assert time.monotonic() < deadline, "the record did not reach the collector"
        time.sleep(0.3)
    output = telemetry_stack.debug_output()
    assert f"Body: Str({marker})" in output
    assert "count: Int(7)" in output


def test_a_refused_batch_is_reported_to_the_tracker_with_the_exporters_reason() -> None:
    tracker = ExportTracker()
    tracker.install_error_capture()
    try:
        exporter = TrackedSpanExporter(
            WireSpanExporter(endpoint="http://127.0.0.1:9/v1/traces", max_request_size=16),
            tracker,
        )
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("too big for 16 bytes"):
            pass
        provider.shutdown()
    finally:
        tracker.remove_error_capture()
    status = tracker.status()["traces"]
    assert status["failures"] == 1
    assert "over max_request_size 16" in status["last_error"]
