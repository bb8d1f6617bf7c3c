"""Telemetry for tests: the sidecar's own setup, exporting spans, metrics and logs to memory."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import Settings
from agent.telemetry.setup import Telemetry, setup_telemetry


def metric_points(data: MetricsData | None, name: str) -> list[Any]:
    """The data points of the metric called `name` in one collection (none when data is None)."""
    found: list[Any] = []
    for resource_metrics in data.resource_metrics if data else []:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


class _Discard(MetricExporter):
    """Behind the tee: the listeners see every export, nothing leaves the process."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def telemetry_for_tests(
    settings: Settings | None = None, *, metric_interval: float = 3600.0
) -> tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader, InMemoryLogRecordExporter]:
    """Telemetry that exports to memory only: spans, a metric reader, and log records.

    Spans and log records are exported as they end (masked and tracked as in production).
    Metric listeners run at `telemetry.force_flush(...)` (or every `metric_interval` seconds);
    the periodic reader exports nowhere else.
    """
    spans = InMemorySpanExporter()
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(
        settings or Settings(),
        span_exporter=spans,
        log_exporter=logs,
        metric_exporter=_Discard(),
        metric_readers=[reader],
        metric_interval=metric_interval,
    )
    return telemetry, spans, reader, logs
