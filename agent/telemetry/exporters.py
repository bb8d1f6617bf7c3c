"""Exporter wrappers that record export health per signal and tee metrics to in-process readers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
from agent.telemetry.masking import Masker

MetricListener = Callable[[MetricsData], None]

SIGNALS: tuple[str, ...] = ("traces", "metrics", "logs")

_ERROR_CHARS = 200
_logger = logging.getLogger(__name__)
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


class TrackedSpanExporter(SpanExporter):
    """Wraps a span exporter; records each outcome in the tracker."""

    def __init__(self, inner: SpanExporter, tracker: ExportTracker) -> None:
        self._inner = inner
        self._tracker = tracker

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Exports and records the outcome."""
        ok = _run_export(
            self._tracker,
            "traces",
            lambda: self._inner.export(spans) == SpanExportResult.SUCCESS,
        )
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        """Shuts the wrapped exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flushes the wrapped exporter."""
        return bool(self._inner.force_flush(timeout_millis))


class TrackedLogExporter(LogRecordExporter):
    """Wraps a log record exporter; records each outcome in the tracker."""

    def __init__(self, inner: LogRecordExporter, tracker: ExportTracker) -> None:
        self._inner = inner
        self._tracker = tracker

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Exports and records the outcome."""
        ok = _run_export(
            self._tracker,
            "logs",
            lambda: self._inner.export(batch) == LogRecordExportResult.SUCCESS,
        )
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        """Shuts the wrapped exporter down."""
        self._inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flushes the wrapped exporter."""
        return bool(self._inner.force_flush(timeout_millis))


class TrackedMetricExporter(MetricExporter):
    """Feeds metric listeners (the tee) with every export, then hands the data to a sender thread.

    The reader's thread only runs the listeners: a dead collector (whose exporter retries for
    seconds) never delays what the alert engine sees. The sender keeps at most `backlog`
    batches; with cumulative temporality (the SDK's default, which the reader takes from this
    wrapper) the newest batch supersedes older ones, so dropping the oldest loses no totals.
    With `inner=None` (OTEL_METRICS_EXPORTER=none) only the listeners run.
    """

    def __init__(
        self, inner: MetricExporter | None, tracker: ExportTracker, *, backlog: int = 2
    ) -> None:
        super().__init__()
        self._inner = inner
        self._tracker = tracker
        self._listeners: list[MetricListener] = []
        self._listeners_lock = threading.Lock()
        self._backlog = backlog
        self._queue: list[tuple[MetricsData, float]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._sender: threading.Thread | None = None

    def add_listener(self, listener: MetricListener) -> None:
        """Calls listener(metrics_data) at every export, before the data leaves the process."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: MetricListener) -> None:
        """Stops calling a listener added with add_listener."""
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Tees to the listeners, then queues the data for the sender thread."""
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(metrics_data)
            except Exception:  # a broken listener must never stop the export
                _logger.exception("metric listener %r failed", listener)
        if self._inner is None:
            return MetricExportResult.SUCCESS
        with self._cond:
            if self._closed:
                return MetricExportResult.FAILURE
            if len(self._queue) >= self._backlog:
                self._queue.pop(0)
                self._tracker.failure("metrics", "export backlog full: oldest batch dropped")
            self._queue.append((metrics_data, timeout_millis))
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._send_loop, name="metric-sender", daemon=True
                )
                self._sender.start()
            self._cond.notify_all()
        return MetricExportResult.SUCCESS

    def _send_loop(self) -> None:
        inner = self._inner
        if inner is None:  # the sender thread only starts when there is an exporter
            return
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                data, timeout_millis = self._queue.pop(0)
                self._busy = True
            try:
                _run_export(
                    self._tracker,
                    "metrics",
                    lambda d=data, t=timeout_millis: (  # type: ignore[misc]
                        inner.export(d, timeout_millis=t) == MetricExportResult.SUCCESS
                    ),
                )
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Waits (bounded) until queued batches are sent, then flushes the wrapped exporter."""
        if self._inner is None:
            return True
        return self._drain(timeout_millis / 1000) and bool(self._inner.force_flush(timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Sends what is queued within the timeout, then shuts the wrapped exporter down."""
        if self._inner is None:
            return
        self._drain(timeout_millis / 1000)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
