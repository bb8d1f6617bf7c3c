"""The shipper process: rows in on stdin, OTLP out to the collector, outcomes back to the sidecar.

Started by agent/telemetry/shipper.py as `python -m agent.telemetry.shipper_main REPORT_FD`. The
first frame carries the OTEL_EXPORTER_* variables and the secrets to mask (so neither appears in
this process's arguments or environment). Each signal has its own export thread and a bounded
backlog, so a slow trace export never holds log records back; a batch over the backlog is
dropped and reported as a failed export. It runs at a lower CPU priority (nice 10) than the
sidecar: on a busy node, mail comes first and export catches up when a CPU is free. At the end
of input what is left is exported for at most DRAIN_SECONDS, and the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from agent.telemetry import rows
from agent.telemetry.logs import route_sdk_logs
from agent.telemetry.masking import Masker
from agent.telemetry.shipper import read_frame, write_frame

BACKLOG_BATCHES = 16
DRAIN_SECONDS = 5.0
NICENESS = 10
_STOP = ("stop",)


class _Outcome(logging.Handler):
    """The exporters' own warning or error text of the export running on this thread."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.local, "active", False):
            self.local.message = record.getMessage()


class _Reports:
    """Frames back to the sidecar, one writer at a time."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        # When the sidecar is gone, this process ends with its input.
        with self._lock, contextlib.suppress(OSError, ValueError):
            write_frame(self._stream, message)


class _Signal:
    """One signal's backlog and export thread."""

    def __init__(
        self,
        name: str,
        export: Callable[[rows.Batch], bool],
        reports: _Reports,
        outcome: _Outcome,
    ) -> None:
        self.name = name
        self._export = export
        self._reports = reports
        self._outcome = outcome
        self._backlog: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._batches = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"shipper-{name}", daemon=True)
        self.thread.start()

    def put(self, message: tuple[Any, ...]) -> None:
        if message[0] == "batch":
            with self._lock:
                if self._batches >= BACKLOG_BATCHES:
                    count = len(message[1][2])
                    self._reports.send(("result", self.name, False,
                                        f"export backlog full: {count} items dropped"))  # fmt: skip
                    return
                self._batches += 1
        self._backlog.put(message)

    def _run(self) -> None:
        while True:
            message = self._backlog.get()
            kind = message[0]
            if kind == "stop":
                return
            if kind == "flush":
                self._reports.send(("flushed", self.name, message[1]))
                continue
            with self._lock:
                self._batches -= 1
            self._reports.send(("result", self.name, *self._run_export(message[1])))

    def _run_export(self, batch: rows.Batch) -> tuple[bool, str]:
        local = self._outcome.local
        local.active, local.message = True, ""
        try:
            ok = self._export(batch)
        except Exception as exc:  # an exporter bug counts as a failed export, never ends the thread
            ok, local.message = False, f"{type(exc).__name__}: {exc}"
        finally:
            local.active = False
        return ok, "" if ok else str(local.message)


def _exporters(env: dict[str, str], masker: Masker) -> dict[str, Callable[[rows.Batch], bool]]:
    from opentelemetry.sdk._logs.export import LogRecordExportResult
    from opentelemetry.sdk.trace.export import SpanExportResult

    from agent.telemetry.otlp_wire import WireLogExporter, WireSpanExporter
    from agent.telemetry.setup import MaskingSpanExporter, otlp_exporter

    span_exporter = otlp_exporter(env, "traces")
    masking = MaskingSpanExporter(span_exporter, masker)
    logs = otlp_exporter(env, "logs")

    def export_spans(batch: rows.Batch) -> bool:
        # The wire exporter encodes rows as they are; a batch holding a secret, or an exporter
        # that needs SDK spans (gRPC), takes the SDK objects rebuilt from them.
        if isinstance(span_exporter, WireSpanExporter) and not masker.finds(
            "\x00".join(rows.span_texts(batch))
        ):
            result = span_exporter.export_rows(batch)
        else:
            result = masking.export(rows.spans_from(batch))
        return bool(result == SpanExportResult.SUCCESS)

    def export_logs(batch: rows.Batch) -> bool:
        if isinstance(logs, WireLogExporter):
            result = logs.export_rows(batch)
        else:
            result = logs.export(rows.logs_from(batch))
        return bool(result == LogRecordExportResult.SUCCESS)

    return {"traces": export_spans, "logs": export_logs}


def main(argv: Sequence[str]) -> int:
    """Exports until the end of input; 2 when started without its report pipe or first frame."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m agent.telemetry.shipper_main REPORT_FD", file=sys.stderr)
        return 2
    stdin = sys.stdin.buffer
    hello = read_frame(stdin)
    if not isinstance(hello, tuple) or hello[0] != "hello":
        print("shipper: the first frame must be hello", file=sys.stderr)
        return 2
    _, env, secrets = hello
    # Exporting can wait for an idle CPU; taking one from the pipeline cannot.
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    route_sdk_logs()
    outcome = _Outcome()
    logging.getLogger("opentelemetry").addHandler(outcome)
    reports = _Reports(os.fdopen(int(argv[1]), "wb"))
    signals = {
        name: _Signal(name, export, reports, outcome)
        for name, export in _exporters(dict(env), Masker(secrets)).items()
    }
    while True:
        message = read_frame(stdin)
        if message is None:
            break
        kind = message[0]
        if kind == "flush":
            signals[message[1]].put(("flush", message[2]))
        elif kind in signals:
            signals[kind].put(("batch", message[1]))
    for signal in signals.values():
        signal.put(_STOP)
    # The sidecar flushes before it closes this input; if it was killed instead, what is left
    # gets a bounded time, so the process never outlives it by more than that.
    deadline = time.monotonic() + DRAIN_SECONDS
    for signal in signals.values():
        signal.thread.join(max(0.0, deadline - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
