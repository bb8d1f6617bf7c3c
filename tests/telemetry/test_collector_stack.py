"""End to end against the real collector and Jaeger: all three signals arrive, secrets do not."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
from opentelemetry.metrics import Observation

from agent.config import settings_from_mapping
from agent.telemetry.logs import configure_logging, get_logger
from agent.telemetry.setup import Telemetry, setup_telemetry
from tests.fixtures.collector import TelemetryStack

SECRET = "r2-fetch-token-5f1e9a"
T = TypeVar("T")


def _eventually(probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout}s")
        time.sleep(0.2)


def _scrape_with(stack: TelemetryStack, service: str) -> str | None:
    text = stack.prometheus_text()
    return text if f'job="{service}"' in text else None


def _debug_with(stack: TelemetryStack, trace_id: str) -> str | None:
    output = stack.debug_output()
    return output if f"Trace ID: {trace_id}" in output else None


@pytest.fixture
def telemetry_in(
    monkeypatch: pytest.MonkeyPatch, telemetry_stack: TelemetryStack
) -> Callable[..., Telemetry]:
    """Telemetry of this process exporting to the stack (the SDK reads OTEL_* from os.environ)."""

    def make(service: str, protocol: str = "http/protobuf") -> Telemetry:
        stack = telemetry_stack
        endpoint = stack.otlp_grpc_endpoint if protocol == "grpc" else stack.otlp_http_endpoint
        monkeypatch.setenv("OTEL_SERVICE_NAME", service)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5000")
        settings = settings_from_mapping({"r2": {"fetch_token": SECRET}})
        return setup_telemetry(settings, metric_interval=0.5)

    return make


def _emit(telemetry: Telemetry) -> str:
    configure_logging(telemetry, stream=io.StringIO())
    with telemetry.tracer("test").start_as_current_span("r2.transfer") as span:
        span.set_attribute("r2.note", f"token {SECRET}")
        get_logger("r2_transfer").info("transfer stored", token=SECRET, marker="stack-log")
    telemetry.instruments.publish("probe.up", lambda: [Observation(1, {"probe": "redis"})])
    telemetry.instruments.publish("process.memory.usage", lambda: [Observation(4096)])
    telemetry.instruments.r2_transfers.add(1, {"r2.provider": "dropbox", "outcome": "stored"})
    return f"{span.get_span_context().trace_id:032x}"


def test_span_reaches_jaegers_query_api(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    service = f"sidecar-{uuid.uuid4().hex[:8]}"
    telemetry = telemetry_in(service)
    trace_id = _emit(telemetry)
    telemetry.shutdown(5.0)
    traces = _eventually(lambda: telemetry_stack.traces(service))
    assert traces[0]["traceID"] == trace_id
    assert [s["operationName"] for s in traces[0]["spans"]] == ["r2.transfer"]


def test_span_reaches_jaeger_over_grpc(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    service = f"sidecar-grpc-{uuid.uuid4().hex[:8]}"
    telemetry = telemetry_in(service, protocol="grpc")
    trace_id = _emit(telemetry)
    telemetry.shutdown(5.0)
    traces = _eventually(lambda: telemetry_stack.traces(service))
    assert traces[0]["traceID"] == trace_id


def test_metrics_appear_on_the_collectors_prometheus_endpoint(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    service = f"sidecar-{uuid.uuid4().hex[:8]}"
    telemetry = telemetry_in(service)
    _emit(telemetry)
    try:
        text = _eventually(lambda: _scrape_with(telemetry_stack, service))
    finally:
        telemetry.shutdown(5.0)
    ours = [line for line in text.splitlines() if f'job="{service}"' in line]
    names = {line.split("{", 1)[0] for line in ours}
    # Prometheus translation: units become suffixes ("1" -> _ratio, By -> _bytes), counters _total.
    assert {"probe_up_ratio", "process_memory_usage_bytes", "r2_transfers_total"} <= names
    assert any('probe="redis"' in line for line in ours if line.startswith("probe_up_ratio"))


def test_log_record_with_its_trace_id_reaches_the_debug_exporter(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    telemetry = telemetry_in(f"sidecar-{uuid.uuid4().hex[:8]}")
    trace_id = _emit(telemetry)
    telemetry.shutdown(5.0)
    output = _eventually(lambda: _debug_with(telemetry_stack, trace_id))
    # The debug exporter prints body, attributes, then the ids of each record.
    end = output.index(f"Trace ID: {trace_id}")
    record = output[output.rindex("LogRecord #", 0, end) : end]
    assert "Body: Str(transfer stored)" in record
    assert "marker: Str(stack-log)" in record


def test_configured_secret_reaches_no_backend(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    service = f"sidecar-{uuid.uuid4().hex[:8]}"
    telemetry = telemetry_in(service)
    trace_id = _emit(telemetry)
    try:
        traces = _eventually(lambda: telemetry_stack.traces(service))
        prometheus = _eventually(lambda: _scrape_with(telemetry_stack, service))
        telemetry.force_flush(5.0)
        debug = _eventually(lambda: _debug_with(telemetry_stack, trace_id))
    finally:
        telemetry.shutdown(5.0)
    assert "token ***" in str(traces)
    for backend in (str(traces), prometheus, debug):
        assert SECRET not in backend


def test_shutdown_flushes_queued_spans_when_the_collector_is_up(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    service = f"sidecar-{uuid.uuid4().hex[:8]}"
    telemetry = telemetry_in(service)
    tracer = telemetry.tracer("test")
    for index in range(20):
        with tracer.start_as_current_span(f"queued-{index}"):
            pass
    # The batch processor holds these for 5 s; only the shutdown's flush sends them now.
    telemetry.shutdown(5.0)
    assert telemetry.exports.status()["traces"]["last_success"] is not None
    traces = _eventually(lambda: telemetry_stack.traces(service))
    assert len(traces) == 20


def test_export_failure_is_tracked_while_the_collector_is_down_and_recovers(
    telemetry_stack: TelemetryStack, telemetry_in: Callable[..., Telemetry]
) -> None:
    telemetry = telemetry_in(f"sidecar-{uuid.uuid4().hex[:8]}")
    tracer = telemetry.tracer("test")
    telemetry_stack.stop_collector()
    try:
        with tracer.start_as_current_span("while-down"):
            pass
        telemetry.force_flush(7.0)
        down = telemetry.exports.status()["traces"]
    finally:
        telemetry_stack.start_collector()
    with tracer.start_as_current_span("after-restart"):
        pass
    telemetry.force_flush(7.0)
    up = telemetry.exports.status()["traces"]
    telemetry.shutdown(5.0)
    assert down["consecutive_failures"] >= 1
    assert down["last_error"]
    assert up["consecutive_failures"] == 0
    assert up["last_success"] is not None
