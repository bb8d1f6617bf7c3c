"""Exporter wrappers that record export health per signal, and the metric tee for in-process use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, Protocol, TypeVar

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger
from agent.telemetry.masking import Masker

MetricListener = Callable[[MetricsData], None]

SIGNALS: tuple[str, ...] = ("traces", "metrics", "logs")

_ERROR_CHARS = 200
_log = get_logger("telemetry")
# The signal whose export runs on this thread, so SDK error logs are attributed to it.
_exporting = threading.local()


@dataclass
class SignalStatus:
    """Export health of one signal."""

    last_success: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    failures: int = 0
    disabled: bool = False


class ExportTracker:
    """Thread-safe record of OTLP export outcomes per signal (for /health and the dashboard)."""

    def __init__(self, masker: Masker | None = None) -> None:
        self._lock = threading.Lock()
        self._masker = masker or Masker()
        self._instruments: Instruments | None = None
        self._signals = {signal: SignalStatus() for signal in SIGNALS}
        self._pending_error: dict[str, str] = {}
        self._capture = _SdkErrorCapture(self)

    def attach(self, instruments: Instruments) -> None:
        """Counts failures on telemetry.export.failures from now on."""
        self._instruments = instruments

    def set_disabled(self, signal: str, disabled: bool = True) -> None:
        """Marks a signal whose exporter is `none` (or the SDK is disabled)."""
        with self._lock:
            self._signals[signal].disabled = disabled

    def success(self, signal: str) -> None:
        """Records a successful export."""
        with self._lock:
            status = self._signals[signal]
            status.last_success = time.time()
            status.consecutive_failures = 0
            self._pending_error.pop(signal, None)

    def failure(self, signal: str, error: str | None = None) -> None:
        """Records a failed export, with the SDK's own error message when it logged one."""
        with self._lock:
            status = self._signals[signal]
            message = error or self._pending_error.pop(signal, None) or "export failed"
            self._pending_error.pop(signal, None)
            status.last_failure = time.time()
            status.last_error = self._masker.mask(message)[:_ERROR_CHARS]
            status.consecutive_failures += 1
            status.failures += 1
        if self._instruments is not None:
            self._instruments.export_failures.add(1, {"signal": signal})

    def status(self) -> dict[str, dict[str, Any]]:
        """A snapshot: {signal: {last_success, last_failure, last_error, ...}}."""
        with self._lock:
            return {signal: asdict(status) for signal, status in self._signals.items()}

    def install_error_capture(self) -> None:
        """Attributes the OTLP exporters' error logs to the signal being exported."""
        logging.getLogger("opentelemetry.exporter").addHandler(self._capture)

    def remove_error_capture(self) -> None:
        """Undoes install_error_capture."""
        logging.getLogger("opentelemetry.exporter").removeHandler(self._capture)

    def _note_error(self, signal: str, message: str) -> None:
        with self._lock:
            self._pending_error[signal] = message


class _SdkErrorCapture(logging.Handler):
    def __init__(self, tracker: ExportTracker) -> None:
        super().__init__(level=logging.WARNING)
        self._tracker = tracker

    def emit(self, record: logging.LogRecord) -> None:
        signal = getattr(_exporting, "signal", None)
        if signal is not None:
            self._tracker._note_error(signal, record.getMessage())


def _run_export(tracker: ExportTracker, signal: str, export: Callable[[], bool]) -> bool:
    _exporting.signal = signal
    try:
        ok = export()
    except Exception as exc:  # an exporter bug must count as a failed export, not kill the worker
        tracker.failure(signal, f"{type(exc).__name__}: {exc}")
        return False
    finally:
        _exporting.signal = None
    if ok:
        tracker.success(signal)
    else:
        tracker.failure(signal)
    return ok


class _Flushable(Protocol):
    def shutdown(self) -> None: ...

    def force_flush(self, timeout_millis: int = 30000) -> bool: ...


_Inner = TypeVar("_Inner", bound=_Flushable)


class Wrapping(Generic[_Inner]):
    """The part every exporter wrapper shares: shutdown and force_flush reach the wrapped one."""

    def __init__(self, inner: _Inner) -> None:
        self._inner = inner

    def shutdown(self) -> None:
        """Shuts the wrapped exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flushes the wrapped exporter."""
        return self._inner.force_flush(timeout_millis)


class TrackedSpanExporter(Wrapping[SpanExporter], SpanExporter):
    """Wraps a span exporter; records each outcome in the tracker."""

    def __init__(self, inner: SpanExporter, tracker: ExportTracker) -> None:
        super().__init__(inner)
        self._tracker = tracker

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Exports and records the outcome."""
        ok = _run_export(
            self._tracker, "traces", lambda: self._inner.export(spans) == SpanExportResult.SUCCESS
        )
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class TrackedLogExporter(Wrapping[LogRecordExporter], LogRecordExporter):
    """Wraps a log record exporter; records each outcome in the tracker."""

    def __init__(self, inner: LogRecordExporter, tracker: ExportTracker) -> None:
        super().__init__(inner)
        self._tracker = tracker

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Exports and records the outcome."""
        ok = _run_export(
            self._tracker,
            "logs",
            lambda: self._inner.export(batch) == LogRecordExportResult.SUCCESS,
        )
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE


class TrackedMetricExporter(MetricExporter):
    """Wraps the metric exporter of the OTLP reader; records each outcome in the tracker.

    The reader asks this wrapper, not the exporter, for the temporality and aggregation it
    prefers: the SDK's defaults (cumulative, explicit buckets).
    """

    def __init__(self, inner: MetricExporter, tracker: ExportTracker) -> None:
        super().__init__()
        self._inner = inner
        self._tracker = tracker

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Exports and records the outcome."""
        ok = _run_export(
            self._tracker,
            "metrics",
            lambda: (
                self._inner.export(metrics_data, timeout_millis, **kwargs)
                == MetricExportResult.SUCCESS
            ),
        )
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flushes the wrapped exporter."""
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shuts the wrapped exporter down."""
        self._inner.shutdown(timeout_millis, **kwargs)


class MetricTee(MetricExporter):
    """The in-process end of a metric reader of its own: each collection goes to the listeners.

    It runs beside the OTLP reader, at the same interval, so a dead or silent collector never
    delays what the alert engine and the dashboard see; with OTEL_METRICS_EXPORTER=none it is
    the only reader.
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[MetricListener] = []
        self._lock = threading.Lock()

    def add_listener(self, listener: MetricListener) -> None:
        """Calls listener(metrics_data) at every collection."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: MetricListener) -> None:
        """Stops calling a listener added with add_listener."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Hands the collection to every listener."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(metrics_data)
            except Exception:  # a broken listener must never stop the others
                _log.exception("telemetry.metric_listener_failed", listener=repr(listener))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is held here."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""
