"""The exporter of each signal from the standard OTEL_* variables: the SDK's own, unmodified."""

from __future__ import annotations

import os
from typing import Literal

from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter, LogRecordExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

from agent.config import ConfigError

Signal = Literal["traces", "metrics", "logs"]
ExporterKind = Literal["otlp", "console", "none"]

_PROTOCOLS = ("http/protobuf", "grpc")
_DEFAULT_TIMEOUT_MS = 10_000.0
# The OTLP metric exporter's preferences are not public, so the tee in front of it (which the
# reader asks) cannot repeat them: only the SDK's defaults are accepted here.
_METRIC_DEFAULTS = {
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "cumulative",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "explicit_bucket_histogram",
}


def sdk_disabled() -> bool:
    """OTEL_SDK_DISABLED=true: the SDK's providers hand out no-op tracers, meters and loggers."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def exporter_kind(signal: Signal) -> ExporterKind:
    """OTEL_{TRACES,METRICS,LOGS}_EXPORTER: otlp (the default), console or none."""
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    names = [n.strip().lower() for n in os.environ.get(variable, "").split(",") if n.strip()]
    for name in names:
        if name not in ("otlp", "console", "none"):
            raise ConfigError(
                f"environment: {variable}: expected otlp, console or none, got {name!r}"
            )
    if not names or "otlp" in names:
        return "otlp"
    return "console" if "console" in names else "none"


def protocol(signal: Signal) -> str:
    """OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL: http/protobuf (the default) or grpc."""
    variable = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    raw = os.environ.get(variable) or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or _PROTOCOLS[0]
    value = raw.strip().lower()
    if value not in _PROTOCOLS:
        raise ConfigError(
            f"environment: {variable} / OTEL_EXPORTER_OTLP_PROTOCOL: "
            f"expected http/protobuf or grpc, got {value!r}"
        )
    return value


def export_timeout(signal: Signal) -> float:
    """Seconds from OTEL_EXPORTER_OTLP_[SIGNAL_]TIMEOUT, which the specification gives in ms.

    The SDK's OTLP exporters (HTTP and gRPC, 1.45) read these variables as seconds, so 10000
    would mean almost three hours: open-telemetry/opentelemetry-python#4044. The sidecar reads
    them as milliseconds here and hands every exporter its timeout explicitly; this is the one
    place that works around it.
    """
    return (
        positive_millis(f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT")
        or positive_millis("OTEL_EXPORTER_OTLP_TIMEOUT")
        or _DEFAULT_TIMEOUT_MS
    ) / 1000.0


def positive_millis(variable: str) -> float | None:
    """A positive number of milliseconds from the environment, or None when unset."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ConfigError(f"environment: {variable}: expected a positive number of ms, got {raw!r}")
    return value


def span_exporter(kind: ExporterKind) -> SpanExporter:
    """The console or OTLP span exporter; endpoint, headers, TLS and compression from OTEL_*."""
    if kind == "console":
        return ConsoleSpanExporter()
    timeout = export_timeout("traces")
    if protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(timeout=timeout)


def metric_exporter(kind: ExporterKind) -> MetricExporter:
    """The console or OTLP metric exporter, with the SDK's default temporality and buckets."""
    for variable, default in _METRIC_DEFAULTS.items():
        value = os.environ.get(variable, default).strip().lower()
        if value != default:
            raise ConfigError(
                f"environment: {variable}: only {default} is supported (the alert engine reads "
                f"the exported points; convert in the collector), got {value!r}"
            )
    if kind == "console":
        return ConsoleMetricExporter()
    timeout = export_timeout("metrics")
    if protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(timeout=timeout)


def log_exporter(kind: ExporterKind) -> LogRecordExporter:
    """The console or OTLP log record exporter (published only under opentelemetry.*._logs)."""
    if kind == "console":
        return ConsoleLogRecordExporter()
    timeout = export_timeout("logs")
    if protocol("logs") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (
        OTLPLogExporter as HttpLogExporter,
    )

    return HttpLogExporter(timeout=timeout)
