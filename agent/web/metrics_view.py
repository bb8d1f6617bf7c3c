"""The last exported metrics as JSON, plus a short bounded history for the dashboard's charts."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
    Sum,
)

# The series the dashboard charts; everything else is shown as a current value only.
CHARTED = (
    "imap.messages",
    "webhook.error_ratio",
    "r2.transfer.duration",
    "process.memory.usage",
    "process.memory.utilization",
    "webhook.deliveries",
    "email.delivery.lag",
)


def _point_value(point: NumberDataPoint | HistogramDataPoint) -> dict[str, Any]:
    if isinstance(point, HistogramDataPoint):
        mean = point.sum / point.count if point.count else None
        return {
            "count": point.count,
            "sum": point.sum,
            "mean": mean,
            "min": point.min if point.count else None,
            "max": point.max if point.count else None,
            # Cumulative buckets since start: the dashboard reads percentiles from them.
            "bounds": list(point.explicit_bounds),
            "buckets": list(point.bucket_counts),
        }
    return {"value": point.value}


class MetricsView:
    """A metric-exporter listener: keeps what was last exported, and history for CHARTED names."""

    def __init__(self, *, history_seconds: float = 3600.0, max_points: int = 720) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] = {}
        self._exported_at: float | None = None
        self._history_seconds = history_seconds
        self._history: dict[str, deque[tuple[float, ...]]] = {}
        self._max_points = max_points

    def __call__(self, data: MetricsData) -> None:
        """Receives each export (called from the exporter thread)."""
        now = time.time()
        latest: dict[str, dict[str, Any]] = {}
        for resource_metrics in data.resource_metrics:
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    if not isinstance(metric.data, Gauge | Sum | Histogram):
                        continue
                    points = [
                        {"attributes": dict(p.attributes or {}), **_point_value(p)}
                        for p in metric.data.data_points
                    ]
                    latest[metric.name] = {
                        "unit": metric.unit,
                        "description": metric.description,
                        "kind": type(metric.data).__name__.lower(),
                        "points": points,
                    }
        with self._lock:
            self._latest = latest
            self._exported_at = now
            for name in CHARTED:
                if name in latest:
                    self._record(name, now, latest[name])

    def _record(self, name: str, now: float, metric: dict[str, Any]) -> None:
        total = 0.0
        count = 0.0
        for point in metric["points"]:
            total += float(point.get("value", point.get("sum", 0.0)) or 0.0)
            count += float(point.get("count", 0) or 0)
        series = self._history.setdefault(name, deque(maxlen=self._max_points))
        # Histograms also keep their count, so a chart can show the mean per interval.
        series.append((now, total, count) if metric["kind"] == "histogram" else (now, total))
        while series and series[0][0] < now - self._history_seconds:
            series.popleft()

    def snapshot(self) -> dict[str, Any]:
        """The last export and the charted history, JSON-ready."""
        with self._lock:
            return {
                "exported_at": self._exported_at,
                "metrics": dict(self._latest),
                "history": {
                    name: [list(p) for p in points] for name, points in self._history.items()
                },
            }
