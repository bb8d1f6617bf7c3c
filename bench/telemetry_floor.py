"""The floor of telemetry's cost: one mail's spans, log record and metric points, and nothing else.

A bare loop, with no sidecar around it, makes per mail what the pipeline makes (measured on
bench/pipeline.py's mail: spans `email.process` with a link to the poll span and 5 attributes,
`email.parse` 3, `webhook.deliver` 4, the client span `POST` 3 with `traceparent` injected; one
OTLP log record with 8 attributes inside the span; five metric points; and per 100 mails an
`imap.poll` span with two `imap.fetch` children and their two operation metrics), through the
SDK's public configuration as the sidecar builds it: TracerProvider with the sampler from
OTEL_TRACES_SAMPLER, BatchSpanProcessor, LoggerProvider with BatchLogRecordProcessor,
MeterProvider with PeriodicExportingMetricReader, the OTLP/HTTP exporters, to the same collector.

Each measurement is a fresh child process that emits the mails at a given rate (the pipeline's
own throughput, so export threads keep pace as they do there) and reports the process's CPU
time over the loop; the same loop with OTEL_SDK_DISABLED=true is its baseline.

    .venv/bin/python -m bench.telemetry_floor          # against a collector it starts
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAILS = int(os.environ.get("BENCH_MAILS", "1500"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
_BATCH = 100  # IMAP fetch batch of bench/pipeline.py: one poll span per batch


def _child(mails: int, rate: float) -> None:
    """Emits `mails` mails' telemetry at `rate` mails/s; prints the CPU seconds it took."""
    from opentelemetry import context, propagate, trace
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=10)))
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(timeout=10)))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(timeout=10),
                                           export_interval_millis=15_000)  # fmt: skip
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource,
                                   exemplar_filter=AlwaysOffExemplarFilter(),
                                   shutdown_on_exit=False)  # fmt: skip
    tracer = tracer_provider.get_tracer("agent.pipeline", "0.1.0")
    if os.environ.get("BENCH_FLOOR_SPANS") == "none":  # no span work at all: the spans' baseline
        tracer = trace.NoOpTracer()
    log = logger_provider.get_logger("signal-sidecar.webhook")
    meter = meter_provider.get_meter("signal-sidecar", "0.1.0")
    messages = meter.create_counter("imap.messages", "{message}")
    sizes = meter.create_histogram("imap.message.size", "By")
    parse = meter.create_histogram("email.parse.duration", "s")
    deliveries = meter.create_counter("webhook.deliveries", "{delivery}")
    delivery = meter.create_histogram("webhook.delivery.duration", "s")
    operations = meter.create_histogram("imap.client.operation.duration", "s")
    mailbox = {"imap.mailbox": "default"}
    delivered = {"imap.mailbox": "default", "outcome": "delivered"}

    started = time.monotonic()
    cpu = time.process_time()
    poll = trace.INVALID_SPAN_CONTEXT
    for index in range(mails):
        while time.monotonic() < started + index / rate:
            time.sleep(0.002)
        if index % _BATCH == 0:
            with tracer.start_as_current_span("imap.poll", attributes={
                "imap.mailbox": "default", "server.address": "127.0.0.1"}) as span:  # fmt: skip
                for _ in range(2):
                    with tracer.start_as_current_span("imap.fetch", kind=trace.SpanKind.CLIENT,
                                                      attributes={
                        "server.address": "127.0.0.1", "server.port": 143, "imap.mailbox": "INBOX",
                        "imap.command": "fetch", "imap.fetch.items": "RFC822",
                        "imap.message.count": 50}):  # fmt: skip
                        operations.record(0.01, {"imap.command": "fetch", "outcome": "ok"})
                span.set_attribute("imap.messages", _BATCH)
                poll = span.get_span_context()
        sizes.record(420, mailbox)
        with tracer.start_as_current_span("email.process", context=context.Context(),
                                          links=[trace.Link(poll)], attributes={
            "imap.mailbox": "default", "imap.uid": index + 1, "email.id": f"{index:032x}",
            "imap.message.size": 420}) as root:  # fmt: skip
            with tracer.start_as_current_span("email.parse") as span:
                span.set_attribute("email.parts", 2)
                span.set_attribute("email.html.bytes", 64)
                span.set_attribute("email.html.truncated", False)
            parse.record(0.0004)
            with tracer.start_as_current_span("webhook.deliver", attributes={
                "webhook.idempotency_key": f"{index:032x}"}) as span:  # fmt: skip
                with tracer.start_as_current_span("POST", kind=trace.SpanKind.CLIENT, attributes={
                    "http.request.method": "POST",
                    "url.full": "http://127.0.0.1/hook"}) as post:  # fmt: skip
                    propagate.inject({})
                    post.set_attribute("http.response.status_code", 200)
                span.set_attribute("webhook.attempts", 1)
                span.set_attribute("outcome", "delivered")
                span.set_attribute("http.response.status_code", 200)
            deliveries.add(1, {"outcome": "delivered"})
            delivery.record(0.0025, {"outcome": "delivered"})
            log.emit(timestamp=time.time_ns(), severity_number=SeverityNumber.INFO,
                     severity_text="INFO", body="webhook.delivery", attributes={
                "logger": "webhook", "outcome": "delivered", "attempts": 1, "status_code": 200,
                "error": "", "email_id": f"{index:032x}", "mailbox": "default",
                "duration_ms": 2.5})  # fmt: skip
            root.set_attribute("outcome", "delivered")
            messages.add(1, delivered)
    cpu = time.process_time() - cpu
    print(json.dumps({"cpu_s": cpu, "mails": mails, "wall_s": time.monotonic() - started}))
    sys.stdout.flush()
    os._exit(0)  # queued telemetry is not part of the measured window, as in the pipeline


def measure(env: dict[str, str], mails: int, rate: float) -> float:
    """CPU milliseconds per mail of one child run with `env` (OTEL_* of the mode)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.telemetry_floor", "--child", str(mails), str(rate)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return float(result["cpu_s"]) * 1000 / mails


def main() -> dict[str, float]:
    """Floor rounds against a collector of their own; the medians of each mode."""
    import statistics

    from tests.fixtures.collector import JAEGER_BINARY, TelemetryStack

    workdir = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    stack = TelemetryStack(workdir=workdir, binary=JAEGER_BINARY)
    stack.start()
    rate = float(os.environ.get("BENCH_FLOOR_RATE", "350"))
    try:
        modes = floor_modes(stack.otlp_http_endpoint)
        runs: dict[str, list[float]] = {mode: [] for mode in modes}
        for index in range(ROUNDS):
            for mode, env in modes.items():
                runs[mode].append(measure(env, MAILS, rate))
            last = ", ".join(f"{mode} {values[-1]:.3f}" for mode, values in runs.items())
            print(f"  round {index + 1}: {last} CPU ms per mail")
    finally:
        stack.stop()
    medians = {mode: statistics.median(values) for mode, values in runs.items()}
    print(f"floor at {rate:g} mails/s, {MAILS} mails, median of {ROUNDS} rounds (CPU ms per mail): "
          + ", ".join(f"{mode} {value:.3f}" for mode, value in medians.items()))  # fmt: skip
    print(f"  telemetry's floor: {medians['on'] - medians['off']:.3f} ms per mail at 100 %, "
          f"{medians['sampled'] - medians['off']:.3f} at 10 %")  # fmt: skip
    return medians


def telemetry_modes(endpoint: str, service: str) -> dict[str, dict[str, str]]:
    """The modes the floor and the pipeline share, as OTEL_* variables."""
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
          "OTEL_SERVICE_NAME": service}  # fmt: skip
    ratio = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    return {
        "off": {"OTEL_SDK_DISABLED": "true"},
        "on": on,
        "sampled": {**on, **ratio},
        "spans_off": {**on, "OTEL_TRACES_SAMPLER": "always_off"},
    }


def floor_modes(endpoint: str) -> dict[str, dict[str, str]]:
    """The shared modes, and a no-op tracer with logs and metrics on: no span work at all."""
    modes = telemetry_modes(endpoint, "telemetry-floor")
    return {**modes, "no_spans": {**modes["on"], "BENCH_FLOOR_SPANS": "none"}}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
