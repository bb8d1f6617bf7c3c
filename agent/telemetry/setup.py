"""The SDK's trace, metric and log providers from settings and OTEL_*, with a bounded shutdown."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Tracer

from agent import __version__
from agent.config import ConfigError, Settings
from agent.telemetry import otlp
from agent.telemetry.catalogue import Instruments
from agent.telemetry.exporters import (
    ExportTracker,
    MetricListener,
    MetricTee,
    TrackedLogExporter,
    TrackedMetricExporter,
    TrackedSpanExporter,
)
from agent.telemetry.logs import get_logger
from agent.telemetry.masking import Masker
from agent.telemetry.masking_exporters import MaskingLogExporter, MaskingSpanExporter
from agent.telemetry.resource import build_resource

_log = get_logger("telemetry")

_METER_NAME = "signal-sidecar"
# The values OTEL_TRACES_SAMPLER takes (the SDK falls back to the default on any other, with a
# warning only); OTEL_TRACES_SAMPLER_ARG is a ratio for the two that take one.
_SAMPLERS = (
    "always_on", "always_off", "traceidratio",
    "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
)  # fmt: skip
_EXEMPLAR_FILTERS = ("always_off", "always_on", "trace_based")
_Exporter = TypeVar("_Exporter", SpanExporter, LogRecordExporter, MetricExporter)


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
    metric_tee: MetricTee = field(repr=False)
    export_interval: float = 15.0
    _closed: bool = field(default=False, repr=False)

    def tracer(self, name: str) -> Tracer:
        """A tracer of this process's provider (never the global one)."""
        return self.tracer_provider.get_tracer(name, __version__)

    def add_metric_listener(self, listener: MetricListener) -> None:
        """listener(metrics_data) runs at every metric export, also with no collector."""
        self.metric_tee.add_listener(listener)

    def remove_metric_listener(self, listener: MetricListener) -> None:
        """Stops calling a listener added with add_metric_listener."""
        self.metric_tee.remove_listener(listener)

    def force_flush(self, timeout: float) -> bool:
        """Exports everything queued; returns after at most `timeout` seconds (True if done)."""
        providers = (self.tracer_provider, self.meter_provider, self.logger_provider)
        millis = int(timeout * 1000)
        calls = [partial(p.force_flush, millis) for p in providers if p is not None]
        return _run_bounded(calls, timeout)

    def shutdown(self, timeout: float) -> None:
        """Flushes and stops every provider; returns after at most `timeout` seconds.

        A dead or silent collector costs at most `timeout`: whatever is still in flight then is
        abandoned with the process.
        """
        if self._closed:
            return
        self._closed = True
        meter_provider = self.meter_provider
        calls: list[Callable[[], object]] = [
            self.tracer_provider.shutdown,
            lambda: meter_provider.shutdown(timeout_millis=timeout * 1000),
        ]
        if self.logger_provider is not None:
            calls.append(self.logger_provider.shutdown)
        if not _run_bounded(calls, timeout):
            _log.warning("telemetry.shutdown_incomplete", timeout_s=timeout)
        self.exports.remove_error_capture()


def _run_bounded(calls: Sequence[Callable[[], object]], timeout: float) -> bool:
    """Runs each call in its own daemon thread; True when all ended within timeout seconds.

    The SDK's batch processors ignore the timeout of force_flush
    (open-telemetry/opentelemetry-python#4568), and TracerProvider/LoggerProvider.shutdown take
    none (each processor waits up to 30 s for an export stuck on a silent collector). This is
    the one place that bounds them: the calls run where they may block, and the caller stops
    waiting at the deadline.
    """
    threads = [
        threading.Thread(target=_quietly(call), name="telemetry-flush", daemon=True)
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
        except Exception:  # one provider failing must not keep the others from finishing
            _log.exception("telemetry.provider_failed")

    return run


def setup_telemetry(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    log_exporter: LogRecordExporter | None = None,
    metric_exporter: MetricExporter | None = None,
    metric_readers: Sequence[MetricReader] = (),
    metric_interval: float | None = None,
    install_global: bool = False,
) -> Telemetry:
    """The SDK's providers, configured by the standard OTEL_* variables of the process.

    Exporters passed in replace the configured ones and export synchronously, behind the same
    masking and export tracking; `metric_readers` are extra readers. Only with install_global
    do the providers become the global ones (instrumentation libraries read those).
    """
    _check_sampler()
    masker = Masker(settings.secrets())
    exports = ExportTracker(masker)
    resource = build_resource(version=__version__)
    disabled = otlp.sdk_disabled()
    if disabled:
        for signal in ("traces", "metrics", "logs"):
            exports.set_disabled(signal)

    # No sampler given: the SDK builds it from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    spans = _chosen("traces", span_exporter, disabled, exports, otlp.span_exporter)
    if spans is not None:
        tracked = TrackedSpanExporter(MaskingSpanExporter(spans, masker), exports)
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(tracked) if span_exporter else BatchSpanProcessor(tracked)
        )

    logger_provider: LoggerProvider | None = None
    records = _chosen("logs", log_exporter, disabled, exports, otlp.log_exporter)
    if records is not None:
        logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        tracked_logs = TrackedLogExporter(MaskingLogExporter(records, masker), exports)
        logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(tracked_logs)
            if log_exporter
            else BatchLogRecordProcessor(tracked_logs)
        )

    # Two readers at one interval: the tee for the alert engine, and the exporter's own.
    interval = _metric_interval(settings, metric_interval)
    tee = MetricTee()
    readers = [PeriodicExportingMetricReader(tee, export_interval_millis=interval * 1000)]
    metrics_out = _chosen("metrics", metric_exporter, disabled, exports, otlp.metric_exporter)
    if metrics_out is not None:
        tracked_metrics = TrackedMetricExporter(metrics_out, exports)
        readers.append(
            PeriodicExportingMetricReader(tracked_metrics, export_interval_millis=interval * 1000)
        )
    meter_provider = MeterProvider(
        metric_readers=[*readers, *metric_readers],
        resource=resource,
        exemplar_filter=_exemplar_filter(),
        shutdown_on_exit=False,
    )
    instruments = Instruments(meter_provider.get_meter(_METER_NAME, __version__))
    exports.attach(instruments)
    exports.install_error_capture()

    if install_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        if logger_provider is not None:
            set_logger_provider(logger_provider)
    return Telemetry(
        resource=resource,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
        instruments=instruments,
        masker=masker,
        exports=exports,
        metric_tee=tee,
        export_interval=interval,
    )


def _chosen(
    signal: otlp.Signal,
    injected: _Exporter | None,
    disabled: bool,
    exports: ExportTracker,
    make: Callable[[otlp.ExporterKind], _Exporter],
) -> _Exporter | None:
    """The injected exporter, else the one OTEL_<SIGNAL>_EXPORTER names; None when off."""
    if injected is not None:
        return injected
    kind = otlp.exporter_kind(signal)
    if kind == "none":
        exports.set_disabled(signal)
    if disabled or kind == "none":
        return None
    return make(kind)


def _check_sampler() -> None:
    """A clear error for a sampler the SDK would replace by its default with only a warning."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if name and name not in _SAMPLERS:
        raise ConfigError(
            f"environment: OTEL_TRACES_SAMPLER: expected one of {', '.join(_SAMPLERS)}, "
            f"got {name!r}"
        )
    raw = os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if name.endswith("traceidratio") and raw:
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"environment: OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {raw!r}"
            )


def _exemplar_filter() -> AlwaysOffExemplarFilter | None:
    """OTEL_METRICS_EXEMPLAR_FILTER, off unless set (then the SDK reads it).

    The specification's default is trace_based, but an exemplar costs a reservoir offer on every
    measurement made inside a sampled span, and the collector configuration shipped here does
    not forward exemplars.
    """
    raw = os.environ.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower()
    if not raw:
        return AlwaysOffExemplarFilter()
    if raw not in _EXEMPLAR_FILTERS:
        raise ConfigError(
            "environment: OTEL_METRICS_EXEMPLAR_FILTER: expected always_off, always_on or "
            f"trace_based, got {raw!r}"
        )
    return None


def _metric_interval(settings: Settings, override: float | None) -> float:
    """Seconds between metric exports: the override, OTEL_METRIC_EXPORT_INTERVAL (ms), settings."""
    if override is not None:
        return override
    millis = otlp.positive_millis("OTEL_METRIC_EXPORT_INTERVAL")
    if millis:
        return millis / 1000.0
    return float(settings.telemetry.export_interval)
