"""Exported OTel metrics as flat samples, and the bounded recent history alert rules read."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    Gauge,
    Histogram,
    MetricsData,
    Sum,
)

SeriesKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One exported point: gauges and sums as their value; histograms as .count and .sum."""

    metric: str
    attributes: Mapping[str, str]
    value: float
    time: float
    counter: bool = False
    delta: bool = False

    @property
    def key(self) -> SeriesKey:
        """The attributes as a hashable, ordered key."""
        return tuple(sorted(self.attributes.items()))


def _attr(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_attr(v) for v in value)
    return str(value)


def to_samples(data: MetricsData, *, at: float | None = None) -> list[Sample]:
    """Flattens MetricsData; `at` stamps every sample (else each point's own time)."""
    out: list[Sample] = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                body = metric.data
                for point in body.data_points:
                    attrs = {str(k): _attr(v) for k, v in (point.attributes or {}).items()}
                    when = at if at is not None else point.time_unix_nano / 1e9
                    if isinstance(body, Gauge):
                        out.append(Sample(metric.name, attrs, float(point.value), when))  # type: ignore[union-attr]
                    elif isinstance(body, Sum):
                        delta = body.aggregation_temporality == AggregationTemporality.DELTA
                        out.append(
                            Sample(
                                metric.name,
                                attrs,
                                float(point.value),  # type: ignore[union-attr]
                                when,
                                counter=body.is_monotonic,
                                delta=delta,
                            )
                        )
                    elif isinstance(body, Histogram | ExponentialHistogram):
                        delta = body.aggregation_temporality == AggregationTemporality.DELTA
                        count = float(point.count)  # type: ignore[union-attr]
                        total = float(point.sum)  # type: ignore[union-attr]
                        out.append(Sample(f"{metric.name}.count", attrs, count, when, True, delta))
                        out.append(Sample(f"{metric.name}.sum", attrs, total, when, True, delta))
    return out


def _matches(key: SeriesKey, match: Mapping[str, str], exclude: Mapping[str, str]) -> bool:
    if not match and not exclude:
        return True
    attrs = dict(key)
    return all(attrs.get(name) == want for name, want in match.items()) and not any(
        attrs.get(name) == unwanted for name, unwanted in exclude.items()
    )


def _increase(points: Iterable[tuple[float, float]]) -> tuple[float, float, float] | None:
    """(increase, first time, last time); a drop is a counter reset from zero, as in Prometheus."""
    total = 0.0
    first: tuple[float, float] | None = None
    prev: tuple[float, float] | None = None
    for point in points:
        if prev is None:
            first = point
        else:
            total += point[1] - prev[1] if point[1] >= prev[1] else point[1]
        prev = point
    if first is None or prev is None or prev is first:
        return None
    return total, first[0], prev[0]


class SeriesStore:
    """Keeps per series only the points its rules' windows need; safe to feed from any thread.

    Memory is bounded three ways: points older than the metric's longest window (plus one
    staleness period) are dropped, each series holds at most `max_points` (closer points are
    merged, never across a counter reset), and at most `max_series` series are tracked.
    Metrics no rule reads are not kept at all.
    """

    def __init__(
        self,
        windows: Mapping[str, float],
        *,
        staleness: float,
        max_points: int = 720,
        max_series: int = 10_000,
    ) -> None:
        self._windows = dict(windows)
        self._staleness = staleness
        self._max_points = max(4, max_points)
        self._max_series = max_series
        self._lock = threading.Lock()
        self._series: dict[tuple[str, SeriesKey], deque[tuple[float, float]]] = {}
        self.dropped_series = 0

    def record(self, samples: Iterable[Sample]) -> None:
        """Adds samples of the metrics the rules read; ignores the rest."""
        with self._lock:
            latest = 0.0
            for sample in samples:
                window = self._windows.get(sample.metric)
                if window is None:
                    continue
                latest = max(latest, sample.time)
                self._add(sample, window)
            if latest:
                self._expire(latest)

    def _add(self, sample: Sample, window: float) -> None:
        ident = (sample.metric, sample.key)
        points = self._series.get(ident)
        if points is None:
            if len(self._series) >= self._max_series:
                self.dropped_series += 1
                return
            points = self._series[ident] = deque(maxlen=self._max_points)
        value = sample.value
        if sample.delta and points:
            value += points[-1][1]
        if points and sample.time < points[-1][0]:
            return
        if window <= 0:
            points.clear()
        # Kept points end up at least spacing/2 apart, so max_points always cover the window.
        spacing = 2 * (window + self._staleness) / self._max_points
        if (
            window > 0
            and len(points) >= 2
            and sample.time - points[-2][0] < spacing
            and (not sample.counter or value >= points[-1][1])
        ):
            points[-1] = (sample.time, value)
        else:
            points.append((sample.time, value))
        horizon = sample.time - window - self._staleness
        while len(points) > 1 and points[0][0] < horizon:
            points.popleft()

    def _expire(self, now: float) -> None:
        gone = [
            ident
            for ident, points in self._series.items()
            if not points or points[-1][0] < now - self._windows[ident[0]] - self._staleness
        ]
        for ident in gone:
            del self._series[ident]

    def _select(
        self, metric: str, match: Mapping[str, str], exclude: Mapping[str, str] | None
    ) -> list[tuple[SeriesKey, list[tuple[float, float]]]]:
        unwanted = exclude or {}
        with self._lock:
            return [
                (key, list(points))
                for (name, key), points in self._series.items()
                if name == metric and points and _matches(key, match, unwanted)
            ]

    def value(
        self,
        metric: str,
        match: Mapping[str, str],
        now: float,
        *,
        exclude: Mapping[str, str] | None = None,
    ) -> dict[SeriesKey, float]:
        """The newest value of each matching series that is not stale."""
        return {
            key: points[-1][1]
            for key, points in self._select(metric, match, exclude)
            if points[-1][0] >= now - self._staleness
        }

    def increase(
        self,
        metric: str,
        match: Mapping[str, str],
        window: float,
        now: float,
        *,
        exclude: Mapping[str, str] | None = None,
    ) -> dict[SeriesKey, float]:
        """Per series, the counter's increase over the samples inside (now - window, now].

        No extrapolation: the exact growth between the first and last sample in the window,
        resets counted from zero. A series with fewer than two samples there has no data.
        """
        out: dict[SeriesKey, float] = {}
        for key, points in self._select(metric, match, exclude):
            found = _increase(p for p in points if now - window <= p[0] <= now)
            if found is not None:
                out[key] = found[0]
        return out

    def rate(
        self,
        metric: str,
        match: Mapping[str, str],
        window: float,
        now: float,
        *,
        exclude: Mapping[str, str] | None = None,
    ) -> dict[SeriesKey, float]:
        """Per series, the increase per second between the first and last sample in the window."""
        out: dict[SeriesKey, float] = {}
        for key, points in self._select(metric, match, exclude):
            found = _increase(p for p in points if now - window <= p[0] <= now)
            if found is not None and found[2] > found[1]:
                out[key] = found[0] / (found[2] - found[1])
        return out

    def ratio(
        self,
        numerator: tuple[str, Mapping[str, str]],
        denominator: tuple[str, Mapping[str, str]],
        window: float,
        now: float,
        *,
        numerator_exclude: Mapping[str, str] | None = None,
        denominator_exclude: Mapping[str, str] | None = None,
        min_denominator: float = 0.0,
    ) -> float | None:
        """Summed increase of the numerator over that of the denominator.

        0/0 is no data, and so is a denominator that grew by less than min_denominator.
        """
        top = self.increase(numerator[0], numerator[1], window, now, exclude=numerator_exclude)
        bottom = self.increase(
            denominator[0], denominator[1], window, now, exclude=denominator_exclude
        )
        below = sum(bottom.values())
        if not bottom or below <= 0 or below < min_denominator:
            return None
        return sum(top.values()) / below

    def size(self) -> int:
        """Points held across all series (for tests and the dashboard)."""
        with self._lock:
            return sum(len(p) for p in self._series.values())
