"""Builds the trace, metric and log providers from settings and OTEL_*, with a bounded shutdown."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    InMemoryLogRecordExporter,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Tracer, TracerProvider
from opentelemetry.trace.status import Status
from opentelemetry.util.re import parse_env_headers

from agent import __version__
from agent.config import ConfigError, Settings
from agent.telemetry.catalogue import Instruments
from agent.telemetry.exporters import (
    ExportTracker,
    MetricListener,
    TrackedLogExporter,
    TrackedMetricExporter,
    TrackedSpanExporter,
)
from agent.telemetry.masking import Masker, strings_in
from agent.telemetry.resource import build_resource
from agent.telemetry.shipper import Shipper, ShippingLogRecordProcessor, ShippingSpanProcessor
from agent.telemetry.tracing import LeanTracerProvider, attribute_dict, own_attributes

_logger = logging.getLogger(__name__)

_DEFAULT_TIMEOUT_MS = 10_000.0
_DEFAULT_METRIC_EXPORT_TIMEOUT_MS = 10_000.0
_DEFAULT_ENDPOINTS = {"http/protobuf": "http://localhost:4318", "grpc": "http://localhost:4317"}
_METER_NAME = "signal-sidecar"


@dataclass
class Telemetry:
    """The providers, instruments, masker and export health of this process."""

    resource: Resource
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider | None
    instruments: Instruments
    masker: Masker
    exports: ExportTracker
    _metric_tee: TrackedMetricExporter = field(repr=False)
    export_interval: float = 15.0
    shipper: Shipper | None = None
    _closed: bool = field(default=False, repr=False)

    def tracer(self, name: str) -> Tracer:
        """A tracer of this process's provider (never the global one)."""
        return self.tracer_provider.get_tracer(name, __version__)

    def add_metric_listener(self, listener: MetricListener) -> None:
        """listener(metrics_data) runs at every metric export, also with no collector."""
        self._metric_tee.add_listener(listener)

    def remove_metric_listener(self, listener: MetricListener) -> None:
        """Stops calling a listener added with add_metric_listener."""
        self._metric_tee.remove_listener(listener)

    def force_flush(self, timeout: float) -> None:
        """Exports everything queued; returns after at most `timeout` seconds."""
        millis = int(timeout * 1000)
        _run_bounded(self._providers("force_flush", millis), timeout)

    def shutdown(self, timeout: float) -> None:
        """Flushes and stops every provider; returns after at most `timeout` seconds.

        The providers shut down in daemon threads, so a dead or silent collector costs at most
        `timeout`: whatever is still in flight then is abandoned with the process.
        """
        if self._closed:
            return
        self._closed = True
        millis = int(timeout * 1000)
        finished = _run_bounded(self._providers("shutdown", millis), timeout)
        if self.shipper is not None:
            self.shipper.close(0.0)  # still exporting after the bound: abandoned, as threads are
        self.exports.remove_error_capture()
        if not finished:
            _logger.warning(
                "telemetry shutdown did not finish within %.1fs; dropped the rest", timeout
            )

    def _providers(self, method: str, millis: int) -> list[Callable[[], object]]:
        calls: list[Callable[[], object]] = []
        tracer_provider = self.tracer_provider
        if isinstance(tracer_provider, SdkTracerProvider):
            if method == "shutdown":
                calls.append(tracer_provider.shutdown)
            else:
                calls.append(lambda: tracer_provider.force_flush(millis))
        calls.append(lambda: getattr(self.meter_provider, method)(timeout_millis=millis))
        logger_provider = self.logger_provider
        if logger_provider is not None:
            if method == "shutdown":
                calls.append(logger_provider.shutdown)
            else:
                calls.append(lambda: logger_provider.force_flush(millis))
        return calls


def _run_bounded(calls: Sequence[Callable[[], object]], timeout: float) -> bool:
    """Runs each call in its own daemon thread; True when all ended within timeout seconds."""
    threads = [
        threading.Thread(target=_quietly(call), name="telemetry-shutdown", daemon=True)
        for call in calls
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def _quietly(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            call()
        except Exception:  # shutdown must finish the other providers whatever one of them does
            _logger.exception("telemetry provider failed to shut down")

    return run


class MaskingSpanExporter(SpanExporter):
    """Masks secrets in span attributes, events (exception messages) and status before export."""

    def __init__(self, inner: SpanExporter, masker: Masker) -> None:
        self._inner = inner
        self._masker = masker

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        """Exports the spans, masked copies of those that carry something to mask."""
        texts: list[str] = []
        for span in spans:
            _span_texts(texts, span)
        # One search over the whole batch: almost every batch has nothing to mask.
        if not self._masker.finds("\x00".join(texts)):
            return self._inner.export(spans)
        return self._inner.export([self._mask(span) for span in spans])

    def shutdown(self) -> None:
        """Shuts the wrapped exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flushes the wrapped exporter."""
        return bool(self._inner.force_flush(timeout_millis))

    def _mask(self, span: ReadableSpan) -> ReadableSpan:
        mask = self._masker
        if not self._dirty(span):
            # Most spans carry nothing to mask: export them as they are, without a copy.
            return span
        status = span.status
        if status.description:
            status = Status(status.status_code, mask.mask(status.description))
        return ReadableSpan(
            name=mask.mask(span.name),
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=mask.mask_attributes(span.attributes or {}),
            events=[
                Event(event.name, mask.mask_attributes(event.attributes or {}), event.timestamp)
                for event in span.events
            ],
            links=[
                Link(link.context, mask.mask_attributes(link.attributes or {}))
                for link in span.links
            ],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _dirty(self, span: ReadableSpan) -> bool:
        texts: list[str] = []
        _span_texts(texts, span)
        return self._masker.finds("\x00".join(texts))


def _span_texts(out: list[str], span: ReadableSpan) -> None:
    """Every string of a span that masking reads: name, status, attributes, events, links."""
    out.append(span.name)
    out.append(span.status.description or "")
    strings_in(out, attribute_dict(own_attributes(span)))
    for event in span.events:
        out.append(event.name)
        strings_in(out, event.attributes)
    for link in span.links:
        strings_in(out, link.attributes)


def setup_telemetry(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    metric_exporter: MetricExporter | None = None,
    log_exporter: LogRecordExporter | None = None,
    metric_reader_interval: float | None = None,
    metric_readers: Sequence[MetricReader] = (),
    install_global: bool = False,
) -> Telemetry:
    """Providers from settings and the standard OTEL_* variables of `env` (default os.environ).

    Injected exporters replace OTLP and export synchronously (tests read them at once);
    `metric_readers` are extra readers (e.g. InMemoryMetricReader). Only with install_global
    do the providers become the global ones (instrumentation libraries read those).
    """
    env = os.environ if env is None else env
    masker = Masker(settings.secrets())
    exports = ExportTracker(masker)
    resource = build_resource(env, version=__version__)
    sdk_disabled = _flag(env.get("OTEL_SDK_DISABLED"))

    tracer_provider: TracerProvider
    logger_provider: LoggerProvider | None = None
    shipper: Shipper | None = None
    if sdk_disabled:
        tracer_provider = trace.NoOpTracerProvider()
        for signal in ("traces", "metrics", "logs"):
            exports.set_disabled(signal)
        metric_inner: MetricExporter | None = None
    else:
        shipper = _shipper(settings, env, span_exporter, log_exporter, exports, masker)
        tracer_provider = _tracer_provider(env, resource, span_exporter, exports, masker, shipper)
        logger_provider = _logger_provider(env, resource, log_exporter, exports, shipper)
        metric_inner = (
            metric_exporter if metric_exporter is not None else _metric_exporter(env, exports)
        )

    tee = TrackedMetricExporter(metric_inner, exports)
    interval = _metric_interval(env, settings, metric_reader_interval)
    reader = PeriodicExportingMetricReader(
        tee,
        export_interval_millis=interval * 1000,
        export_timeout_millis=_millis(env, "OTEL_METRIC_EXPORT_TIMEOUT")
        or _DEFAULT_METRIC_EXPORT_TIMEOUT_MS,
    )
    meter_provider = MeterProvider(
        metric_readers=[reader, *metric_readers],
        resource=resource,
        exemplar_filter=_exemplar_filter(env),
        shutdown_on_exit=False,
    )
    # The SDK turns a MeterProvider into a no-op when os.environ has OTEL_SDK_DISABLED=true; the
    # alert engine reads metrics through the tee even then, so this provider stays enabled.
    meter_provider._disabled = False
    instruments = Instruments(meter_provider.get_meter(_METER_NAME, __version__))
    exports.attach(instruments)
    exports.install_error_capture()

    if install_global:
        _install_global(tracer_provider, meter_provider, logger_provider)
    return Telemetry(
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        instruments=instruments,
        masker=masker,
        exports=exports,
        _metric_tee=tee,
        export_interval=interval,
        shipper=shipper,
    )


def telemetry_for_tests(
    settings: Settings | None = None, *, metric_reader_interval: float = 3600.0
) -> tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader, InMemoryLogRecordExporter]:
    """Telemetry that exports to memory only: spans, a metric reader, and log records.

    Metric listeners run at `telemetry.force_flush(...)` (or every `metric_reader_interval`).
    """
    spans = InMemorySpanExporter()
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(
        settings or Settings(),
        {"OTEL_METRICS_EXPORTER": "none"},
        span_exporter=spans,
        log_exporter=logs,
        metric_reader_interval=metric_reader_interval,
        metric_readers=[reader],
    )
    return telemetry, spans, reader, logs


def _install_global(
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    logger_provider: LoggerProvider | None,
) -> None:
    from opentelemetry import metrics
    from opentelemetry._logs import set_logger_provider

    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    if logger_provider is not None:
        set_logger_provider(logger_provider)


def _shipper(
    settings: Settings,
    env: Mapping[str, str],
    span_exporter: SpanExporter | None,
    log_exporter: LogRecordExporter | None,
    exports: ExportTracker,
    masker: Masker,
) -> Shipper | None:
    """The export process, when spans or log records go to OTLP from one (the default)."""
    if not settings.telemetry.export_process:
        return None
    shipped = [
        signal
        for signal, injected in (("traces", span_exporter), ("logs", log_exporter))
        if injected is None and _exporter_kind(env, signal) == "otlp"
    ]
    for signal in shipped:
        _check_otlp(env, signal)
    return Shipper(env, masker.secrets, exports) if shipped else None


def _check_otlp(env: Mapping[str, str], signal: str) -> None:
    """The configuration errors otlp_exporter would raise, found here rather than in the child."""
    _protocol(env, signal)
    otlp_timeout(env, signal)
    _headers(env, signal)


def _tracer_provider(
    env: Mapping[str, str],
    resource: Resource,
    injected: SpanExporter | None,
    exports: ExportTracker,
    masker: Masker,
    shipper: Shipper | None,
) -> SdkTracerProvider:
    provider = LeanTracerProvider(resource=resource, sampler=_sampler(env), shutdown_on_exit=False)
    processor: SpanProcessor | None = None
    if injected is not None:
        processor = SimpleSpanProcessor(
            TrackedSpanExporter(MaskingSpanExporter(injected, masker), exports)
        )
    else:
        kind = _exporter_kind(env, "traces")
        if kind == "none":
            exports.set_disabled("traces")
        elif kind == "otlp" and shipper is not None:
            processor = ShippingSpanProcessor(shipper, env)
        else:
            exporter: SpanExporter = (
                ConsoleSpanExporter() if kind == "console" else otlp_exporter(env, "traces")
            )
            processor = BatchSpanProcessor(
                TrackedSpanExporter(MaskingSpanExporter(exporter, masker), exports)
            )
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


def _logger_provider(
    env: Mapping[str, str],
    resource: Resource,
    injected: LogRecordExporter | None,
    exports: ExportTracker,
    shipper: Shipper | None,
) -> LoggerProvider | None:
    processor: LogRecordProcessor
    if injected is not None:
        processor = SimpleLogRecordProcessor(TrackedLogExporter(injected, exports))
    else:
        kind = _exporter_kind(env, "logs")
        if kind == "none":
            exports.set_disabled("logs")
            return None
        if kind == "otlp" and shipper is not None:
            processor = ShippingLogRecordProcessor(shipper, env)
        else:
            exporter: LogRecordExporter = (
                ConsoleLogRecordExporter() if kind == "console" else otlp_exporter(env, "logs")
            )
            processor = BatchLogRecordProcessor(TrackedLogExporter(exporter, exports))
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_log_record_processor(processor)
    return provider


def _metric_exporter(env: Mapping[str, str], exports: ExportTracker) -> MetricExporter | None:
    kind = _exporter_kind(env, "metrics")
    if kind == "none":
        exports.set_disabled("metrics")
        return None
    if kind == "console":
        return ConsoleMetricExporter()
    exporter: MetricExporter = otlp_exporter(env, "metrics")
    return exporter


def _exporter_kind(env: Mapping[str, str], signal: str) -> str:
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    names = [n.strip().lower() for n in env.get(variable, "otlp").split(",") if n.strip()]
    for name in names or ["otlp"]:
        if name not in {"otlp", "none", "console"}:
            raise ConfigError(
                f"environment: {variable}: expected otlp, console or none, got {name!r}"
            )
    if "otlp" in names or not names:
        return "otlp"
    return "console" if "console" in names else "none"


def _protocol(env: Mapping[str, str], signal: str) -> str:
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    value = env.get(variable) or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    value = value.strip().lower()
    if value not in _DEFAULT_ENDPOINTS:
        raise ConfigError(
            f"environment: {variable} / OTEL_EXPORTER_OTLP_PROTOCOL: "
            f"expected http/protobuf or grpc, got {value!r}"
        )
    return value


def otlp_endpoint(env: Mapping[str, str], signal: str) -> str:
    """The OTLP endpoint of a signal as the spec resolves it (per-signal URL, or base + /v1/...)."""
    protocol = _protocol(env, signal)
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or _DEFAULT_ENDPOINTS[protocol]
    if protocol == "grpc":
        return base
    return f"{base.rstrip('/')}/v1/{signal}"


def otlp_timeout(env: Mapping[str, str], signal: str) -> float:
    """Export timeout in seconds from OTEL_EXPORTER_OTLP_[SIGNAL_]TIMEOUT, which are milliseconds.

    The spec says milliseconds; SDK 1.45 reads the same variables as seconds (10000 would mean
    almost three hours), so the value is converted here and passed to the exporter explicitly.
    """
    millis = _millis(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT") or _millis(
        env, "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    return (millis or _DEFAULT_TIMEOUT_MS) / 1000.0


def _headers(env: Mapping[str, str], signal: str) -> dict[str, str]:
    raw = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS") or env.get(
        "OTEL_EXPORTER_OTLP_HEADERS", ""
    )
    return dict(parse_env_headers(raw, liberal=True)) if raw else {}


def otlp_exporter(env: Mapping[str, str], signal: str) -> Any:
    """The OTLP exporter of a signal, configured from `env` only (not from os.environ)."""
    protocol = _protocol(env, signal)
    endpoint = otlp_endpoint(env, signal)
    timeout = otlp_timeout(env, signal)
    headers = _headers(env, signal)
    if protocol == "grpc":
        insecure_raw = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_INSECURE") or env.get(
            "OTEL_EXPORTER_OTLP_INSECURE"
        )
        insecure = _flag(insecure_raw) if insecure_raw else urlparse(endpoint).scheme != "https"
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )

            return GrpcSpanExporter(
                endpoint=endpoint, insecure=insecure, headers=headers, timeout=timeout
            )
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )

            return GrpcMetricExporter(
                endpoint=endpoint, insecure=insecure, headers=headers, timeout=timeout
            )
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcLogExporter,
        )

        return GrpcLogExporter(
            endpoint=endpoint, insecure=insecure, headers=headers, timeout=timeout
        )
    if signal == "traces":
        from agent.telemetry.otlp_wire import WireSpanExporter

        return WireSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout)
    if signal == "metrics":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=endpoint, headers=headers, timeout=timeout)
    from agent.telemetry.otlp_wire import WireLogExporter

    return WireLogExporter(endpoint=endpoint, headers=headers, timeout=timeout)


def _exemplar_filter(env: Mapping[str, str]) -> ExemplarFilter:
    """OTEL_METRICS_EXEMPLAR_FILTER, off unless asked for.

    The specification's default is trace_based, but an exemplar costs a reservoir offer on every
    measurement made inside a sampled span (about 0.1-0.2 ms of CPU per mail in the pipeline
    benchmark), and the collector configuration shipped here does not forward exemplars.
    """
    raw = env.get("OTEL_METRICS_EXEMPLAR_FILTER", "always_off").strip().lower()
    filters: dict[str, Callable[[], ExemplarFilter]] = {
        "always_off": AlwaysOffExemplarFilter,
        "always_on": AlwaysOnExemplarFilter,
        "trace_based": TraceBasedExemplarFilter,
    }
    if raw not in filters:
        raise ConfigError(
            "environment: OTEL_METRICS_EXEMPLAR_FILTER: expected always_off, always_on or "
            f"trace_based, got {raw!r}"
        )
    return filters[raw]()


def _sampler(env: Mapping[str, str]) -> Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    raw_arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    try:
        ratio = float(raw_arg) if raw_arg else 1.0
    except ValueError as exc:
        raise ConfigError(
            f"environment: OTEL_TRACES_SAMPLER_ARG: expected a ratio 0..1, got {raw_arg!r}"
        ) from exc
    samplers: dict[str, Callable[[], Sampler]] = {
        "always_on": lambda: ALWAYS_ON,
        "always_off": lambda: ALWAYS_OFF,
        "traceidratio": lambda: TraceIdRatioBased(ratio),
        "parentbased_always_on": lambda: ParentBased(ALWAYS_ON),
        "parentbased_always_off": lambda: ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": lambda: ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        raise ConfigError(
            f"environment: OTEL_TRACES_SAMPLER: expected one of {', '.join(samplers)}, got {name!r}"
        )
    return samplers[name]()


def _metric_interval(env: Mapping[str, str], settings: Settings, override: float | None) -> float:
    if override is not None:
        return override
    millis = _millis(env, "OTEL_METRIC_EXPORT_INTERVAL")
    if millis:
        return millis / 1000.0
    return float(settings.telemetry.export_interval)


def _millis(env: Mapping[str, str], variable: str) -> float | None:
    raw = env.get(variable, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"environment: {variable}: expected milliseconds, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"environment: {variable}: expected a positive number, got {raw!r}")
    return value


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"
