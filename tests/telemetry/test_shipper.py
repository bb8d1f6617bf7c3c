"""Spans and log records leave through the shipper process: delivered, masked, bounded."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import psutil
import pytest
from opentelemetry._logs import LogRecord
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import ReadWriteLogRecord
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from agent.config import ConfigError, Settings, settings_from_mapping
from agent.telemetry.logs import configure_logging, get_logger
from agent.telemetry.setup import Telemetry, setup_telemetry
from agent.telemetry.shipper import ShippingSpanProcessor
from agent.telemetry.shipper_main import DRAIN_SECONDS
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.collector import TelemetryStack
from tests.support.components import ROOT
from tests.support.net import free_port

SECRET = "whsec-shipper-0123456789"


class _Collector(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps every request body by path and answers 200."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[Any]:
        with self.lock:
            bodies = list(self.bodies.get("/v1/traces", []))
        return [
            span
            for body in bodies
            for resource in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def raw(self) -> bytes:
        with self.lock:
            return b"".join(b for bodies in self.bodies.values() for b in bodies)


class _Handler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.bodies.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _telemetry(endpoint: str, settings: Settings | None = None, **env: str) -> Telemetry:
    return setup_telemetry(
        settings or Settings(),
        {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_METRICS_EXPORTER": "none", **env},
        metric_reader_interval=3600.0,
    )


def _span(telemetry: Telemetry, name: str, **attributes: Any) -> None:
    with telemetry.tracer("shipper-test").start_as_current_span(name, attributes=attributes):
        pass


def _running_shipper(telemetry: Telemetry) -> int:
    """The pid of the telemetry's shipper, once a first span has gone through it."""
    _span(telemetry, "start")
    telemetry.force_flush(10.0)
    assert telemetry.shipper is not None
    pid = telemetry.shipper.pid
    assert pid is not None
    return pid


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_spans_and_log_records_reach_jaeger_and_the_collector_from_another_process(
    telemetry_stack: TelemetryStack,
) -> None:
    service = f"shipper-{uuid.uuid4().hex[:8]}"
    telemetry = _telemetry(telemetry_stack.otlp_http_endpoint, OTEL_SERVICE_NAME=service)
    configure_logging(telemetry, stream=open(os.devnull, "w"))  # noqa: SIM115
    marker = f"shipped-{uuid.uuid4().hex[:8]}"
    with telemetry.tracer("shipper-test").start_as_current_span("shipped") as span:
        get_logger("app").info(marker, detail="through the shipper")
        trace_id = format(span.get_span_context().trace_id, "032x")
    telemetry.force_flush(10.0)
    shipper = telemetry.shipper
    assert shipper is not None
    pid = shipper.pid
    assert pid is not None
    assert pid != os.getpid()
    status = telemetry.exports.status()
    assert status["traces"]["last_success"] is not None
    assert status["logs"]["last_success"] is not None
    deadline = time.monotonic() + 20
    while not [t for t in telemetry_stack.traces(service) if t["traceID"] == trace_id]:
        assert time.monotonic() < deadline, "the span did not reach Jaeger"
        time.sleep(0.3)
    while marker not in telemetry_stack.debug_output():
        assert time.monotonic() < deadline, "the log record did not reach the collector"
        time.sleep(0.3)
    output = telemetry_stack.debug_output()
    at = output.index(marker)
    assert trace_id in output[max(0, at - 3000) : at + 3000]
    telemetry.shutdown(5.0)
    assert _gone(pid, 10.0)


def test_the_shipper_masks_secrets_before_spans_leave_it(collector: _Collector) -> None:
    settings = settings_from_mapping({"webhook": {"secret": SECRET}})
    telemetry = _telemetry(collector.url, settings)
    _span(telemetry, "masked", url=f"https://app.example/hook?note={SECRET}", plain="kept")
    telemetry.force_flush(10.0)
    telemetry.shutdown(5.0)
    (span,) = collector.spans()
    values = {kv.key: kv.value.string_value for kv in span.attributes}
    assert values["plain"] == "kept"
    assert SECRET not in values["url"]
    assert "***" in values["url"]
    assert SECRET.encode() not in collector.raw()


def test_log_records_are_delivered_with_their_trace_ids(collector: _Collector) -> None:
    telemetry = _telemetry(collector.url)
    configure_logging(telemetry, stream=open(os.devnull, "w"))  # noqa: SIM115
    with telemetry.tracer("t").start_as_current_span("around") as span:
        for index in range(3):
            get_logger("webhook").info("webhook.delivery", index=index)
        span_id = span.get_span_context().span_id
    telemetry.force_flush(10.0)
    telemetry.shutdown(5.0)
    with collector.lock:
        bodies = list(collector.bodies["/v1/logs"])
    records = [
        record
        for body in bodies
        for resource in ExportLogsServiceRequest.FromString(body).resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
    ]
    assert [r.body.string_value for r in records] == ["webhook.delivery"] * 3
    assert {int.from_bytes(r.span_id, "big") for r in records} == {span_id}


def test_a_killed_shipper_is_reported_as_a_failed_export_and_started_again(
    collector: _Collector,
) -> None:
    telemetry = _telemetry(collector.url)
    first = _running_shipper(telemetry)
    shipper = telemetry.shipper
    assert shipper is not None
    assert telemetry.exports.status()["traces"]["failures"] == 0
    os.kill(first, signal.SIGKILL)
    assert _gone(first, 10.0)
    deadline = time.monotonic() + 15
    while "after" not in {span.name for span in collector.spans()}:
        assert time.monotonic() < deadline, "the shipper was not started again"
        _span(telemetry, "after")
        telemetry.force_flush(5.0)
    traces = telemetry.exports.status()["traces"]
    assert traces["failures"] >= 1
    assert traces["last_error"].startswith("telemetry shipper")
    assert shipper.pid not in (None, first)
    telemetry.shutdown(5.0)


def test_a_stalled_shipper_never_blocks_a_span_and_drops_over_the_queue(
    collector: _Collector,
) -> None:
    telemetry = _telemetry(
        collector.url, OTEL_BSP_MAX_QUEUE_SIZE="50", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10"
    )
    pid = _running_shipper(telemetry)
    os.kill(pid, signal.SIGSTOP)
    try:
        # 20,000 spans of 400 bytes: far more than the pipe to a stopped process holds.
        for index in range(20_000):
            _span(telemetry, "while stopped", index=index, padding="x" * 400)
        processor = telemetry.tracer_provider._active_span_processor._span_processors[0]  # type: ignore[attr-defined]
        assert isinstance(processor, ShippingSpanProcessor)
        assert processor._batcher.dropped > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    telemetry.shutdown(5.0)


def _doomed_sidecar(
    endpoint: str, *, spans: int, flush: float, timeout_ms: int
) -> tuple[subprocess.Popen[bytes], int]:
    """A process that sets telemetry up, sends spans (flushing after each), and waits to be killed.

    Returns it and its shipper's pid.
    """
    script = textwrap.dedent(f"""
        import time
        from agent.config import Settings
        from agent.telemetry.setup import setup_telemetry
        telemetry = setup_telemetry(Settings(), {{"OTEL_EXPORTER_OTLP_ENDPOINT": "{endpoint}",
                                                  "OTEL_EXPORTER_OTLP_TIMEOUT": "{timeout_ms}",
                                                  "OTEL_METRICS_EXPORTER": "none"}})
        for index in range({spans}):
            with telemetry.tracer("t").start_as_current_span(f"from a doomed process {{index}}"):
                pass
            telemetry.force_flush({flush})
        print(telemetry.shipper.pid, flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def test_the_shipper_ends_when_the_sidecar_is_killed(collector: _Collector) -> None:
    process, child = _doomed_sidecar(collector.url, spans=1, flush=10.0, timeout_ms=10_000)
    try:
        assert psutil.pid_exists(child)
        process.kill()
        process.wait(10)
        assert _gone(child, 10.0), "the shipper outlived the sidecar"
    finally:
        process.kill()
    assert [span.name for span in collector.spans()] == ["from a doomed process 0"]


def test_batch_settings_that_are_not_positive_integers_name_the_variable() -> None:
    for variable in ("OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BLRP_SCHEDULE_DELAY"):
        with pytest.raises(ConfigError, match=variable):
            _telemetry(f"http://127.0.0.1:{free_port()}", **{variable: "lots"})


def test_export_process_false_keeps_the_sdk_batch_processor_and_no_child() -> None:
    settings = Settings()
    settings = dataclasses.replace(
        settings, telemetry=dataclasses.replace(settings.telemetry, export_process=False)
    )
    telemetry = _telemetry(f"http://127.0.0.1:{free_port()}", settings)
    provider = telemetry.tracer_provider
    assert isinstance(provider, SdkTracerProvider)
    processors = provider._active_span_processor._span_processors
    assert [type(p) for p in processors] == [BatchSpanProcessor]
    assert telemetry.shipper is None
    telemetry.shutdown(2.0)


class _Odd:
    def __str__(self) -> str:
        return "odd"


def test_a_record_holding_a_value_marshal_cannot_write_is_delivered_as_text(
    collector: _Collector,
) -> None:
    telemetry = _telemetry(collector.url)
    provider = telemetry.logger_provider
    assert provider is not None
    writable = ReadWriteLogRecord(LogRecord(body="odd values", attributes={"c": 2}),
                                  resource=telemetry.resource)  # fmt: skip
    # Past the SDK's cleaning, as a processor or an extension could leave it.
    cast(Any, writable.log_record.attributes)._dict["a"] = _Odd()
    provider._multi_log_record_processor.on_emit(writable)
    telemetry.force_flush(10.0)
    telemetry.shutdown(5.0)
    with collector.lock:
        (body,) = collector.bodies["/v1/logs"]
    record = ExportLogsServiceRequest.FromString(body).resource_logs[0].scope_logs[0].log_records[0]
    values = {kv.key: kv.value for kv in record.attributes}
    assert values["a"].string_value == "odd"
    assert values["c"].int_value == 2
    assert telemetry.exports.status()["logs"]["failures"] == 0


def test_spans_ended_after_shutdown_are_ignored_without_growing_the_queue(
    collector: _Collector,
) -> None:
    telemetry = _telemetry(collector.url)
    processor = cast(Any, telemetry.tracer_provider)._active_span_processor._span_processors[0]
    telemetry.shutdown(5.0)
    for index in range(10):
        _span(telemetry, "late", index=index)
    assert not processor._batcher._queue
    assert processor._batcher.dropped == 0


def test_shutdown_is_bounded_when_the_shipper_hangs_with_a_full_pipe(
    collector: _Collector,
) -> None:
    telemetry = _telemetry(collector.url, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10")
    pid = _running_shipper(telemetry)
    os.kill(pid, signal.SIGSTOP)  # alive but never reading: the sender blocks on the pipe
    try:
        for index in range(5_000):
            _span(telemetry, "while hung", index=index, padding="x" * 400)
        time.sleep(0.5)
        started = time.monotonic()
        telemetry.shutdown(2.0)
        assert time.monotonic() - started <= 4.0
        assert _gone(pid, 5.0), "the hung shipper was left running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_shipper_stuck_on_a_silent_collector_ends_soon_after_the_sidecar_is_killed(
    blackhole: BlackHole,
) -> None:
    # Each batch waits on the silent server for 60 s; the flushes give up after 0.5 s.
    process, child = _doomed_sidecar(blackhole.url, spans=3, flush=0.5, timeout_ms=60_000)
    try:
        assert blackhole.accepted >= 1  # the export really is stuck
        process.kill()
        process.wait(10)
        assert _gone(child, DRAIN_SECONDS + 5.0), "the shipper outlived the sidecar"
    finally:
        process.kill()
