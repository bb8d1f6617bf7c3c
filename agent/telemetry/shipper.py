"""Span and log export in a child process, so OTLP encoding never competes with mail for the GIL.

The sidecar is one Python process: the CPU its threads spend per mail adds up to about one over
its throughput. Encoding and posting OTLP took about 0.13 ms of the 2.7 ms a mail cost; here it
costs the handing over of rows (agent/telemetry/rows.py). The processors below queue ended spans
and emitted log records as the SDK's batch processors do (same queue and batch limits, same
`OTEL_BSP_*` / `OTEL_BLRP_*` variables); a sender thread per signal turns each batch into rows and
writes it, marshalled, to the shipper process (agent/telemetry/shipper_main.py), which masks,
encodes and exports with the same exporters as before and reports every outcome back to the
ExportTracker, so /health and the telemetry alerts see export failures as they did.

The child starts with the processors (from their sender threads), in its own session (a Ctrl-C
reaches only the sidecar, whose shutdown flushes it), and exits when its input closes, also when
the sidecar is killed. If it
dies, the batches in flight are counted as failed exports and it is started again, at most once
per `_RESTART_DELAY` doubling to `_RESTART_DELAY_MAX`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import marshal
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from opentelemetry.sdk._logs import LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from agent.config import ConfigError
from agent.telemetry import rows
from agent.telemetry.exporters import ExportTracker
from agent.telemetry.row_spans import RowSpan

_logger = logging.getLogger("opentelemetry.sdk.shipper")

_RESTART_DELAY = 1.0
_RESTART_DELAY_MAX = 30.0
_FRAME_HEADER = 4
_LOCK_WAIT = 0.1
# The providers' shutdown takes no timeout; Telemetry.shutdown bounds the whole of it anyway.
_SHUTDOWN_TIMEOUT = 10.0

# (variable prefix, SDK defaults): schedule delay ms, queue size, batch size.
_BATCH_DEFAULTS = {"traces": ("OTEL_BSP", 5000, 2048, 512), "logs": ("OTEL_BLRP", 1000, 2048, 512)}
# What the child needs to build its exporters; nothing else of the sidecar's environment.
_EXPORT_PREFIXES = ("OTEL_EXPORTER_OTLP_", "OTEL_TRACES_EXPORTER", "OTEL_LOGS_EXPORTER")


def frame(message: Any) -> bytes:
    """A length-prefixed marshal frame (ValueError for a value marshal cannot write)."""
    data = marshal.dumps(message)
    return len(data).to_bytes(_FRAME_HEADER, "little") + data


def write_frame(stream: IO[bytes], message: Any) -> None:
    """Writes one frame."""
    stream.write(frame(message))
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """The next frame, or None at the end of the stream."""
    header = _read_exactly(stream, _FRAME_HEADER)
    if header is None:
        return None
    body = _read_exactly(stream, int.from_bytes(header, "little"))
    if body is None:
        return None
    # Frames pass only between the sidecar and the child it started, over pipes of its own.
    return marshal.loads(body)  # noqa: S302


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Shipper:
    """The exporting child process: frames in over its stdin, outcomes back over a pipe."""

    def __init__(
        self,
        env: Mapping[str, str],
        secrets: Sequence[str],
        tracker: ExportTracker,
        *,
        command: Sequence[str] = (sys.executable, "-m", "agent.telemetry.shipper_main"),
    ) -> None:
        self._hello = (
            "hello",
            {key: value for key, value in env.items() if key.startswith(_EXPORT_PREFIXES)},
            list(secrets),
        )
        self._tracker = tracker
        self._command = list(command)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._next_start = 0.0
        self._restart_delay = _RESTART_DELAY
        self._flush_ids = itertools.count(1)
        self._acks: dict[int, threading.Event] = {}
        self._users = 0
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def acquire(self) -> None:
        """A processor uses this shipper until it calls release()."""
        with self._lock:
            self._users += 1

    def release(self, timeout: float) -> None:
        """The last processor to release it closes the child (bounded by timeout seconds)."""
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close(timeout)

    def failed(self, signal: str, error: str) -> None:
        """Records a failed export of `signal` that never reached the child."""
        self._tracker.failure(signal, error)

    def start(self, signal: str) -> None:
        """Starts the child now rather than with the first batch (a failure is one of `signal`)."""
        with self._lock:
            error = None if self._closed else self._ensure_running(signal)
        if error is not None:
            self._tracker.failure(signal, f"telemetry shipper: {error}")

    def send(self, signal: str, data: bytes, count: int) -> bool:
        """Hands one framed batch to the child; one it cannot take is a failed export."""
        with self._lock:
            if self._closed:
                return False
            error = self._ensure_running(signal)
            if error is None:
                assert self._process is not None
                stdin = self._process.stdin
                assert stdin is not None
                try:
                    stdin.write(data)
                    stdin.flush()
                    return True
                except (OSError, ValueError) as exc:
                    error = self._lost(f"{type(exc).__name__}: {exc}")
        self._tracker.failure(signal, f"telemetry shipper: {error}; {count} items dropped")
        return False

    def flush(self, signal: str, timeout: float) -> bool:
        """True once the child has exported every batch of `signal` sent before this call."""
        ack = threading.Event()
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=timeout):
            return False  # a sender is blocked on a child that stopped reading
        try:
            process = self._process
            if process is None or process.poll() is not None or process.stdin is None:
                return process is None  # nothing was ever sent, or it is lost
            flush_id = next(self._flush_ids)
            self._acks[flush_id] = ack
            try:
                write_frame(process.stdin, ("flush", signal, flush_id))
            except (OSError, ValueError):
                self._acks.pop(flush_id, None)
                return False
        finally:
            self._lock.release()
        done = ack.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._acks.pop(flush_id, None)
        return done and self._process is process and process.poll() is None

    def close(self, timeout: float) -> None:
        """Closes the child's input, waits up to timeout seconds for it to finish, then kills it."""
        # A sender blocked writing to a child that stopped reading holds the lock: not waited on.
        acquired = self._lock.acquire(timeout=max(timeout, _LOCK_WAIT))
        self._closed = True
        process, self._process = self._process, None
        if acquired:
            self._lock.release()
        if process is None:
            return
        if not acquired:
            _logger.warning("telemetry shipper stopped reading; killed")
            process.kill()  # the blocked write then fails and its sender lets go
        elif process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _logger.warning("telemetry shipper did not finish within %.1fs; killed", timeout)
            process.kill()
            process.wait(5)
        if self._reader is not None:
            self._reader.join(timeout=1.0)

    def _ensure_running(self, signal: str) -> str | None:
        """Starts the child when it is not running; the reason when it cannot run now."""
        process = self._process
        if process is not None and process.poll() is None:
            return None
        if process is not None:
            # What it held in its backlog is lost: one failed export says so.
            reason = self._lost(f"exited with code {process.returncode}")
            self._tracker.failure(signal, f"telemetry shipper {reason}; batches in flight lost")
        now = time.monotonic()
        if now < self._next_start:
            return "not running (restart pending)"
        self._next_start = now + self._restart_delay
        self._restart_delay = min(self._restart_delay * 2, _RESTART_DELAY_MAX)
        report_read, report_write = os.pipe()
        try:
            self._process = subprocess.Popen(
                [*self._command, str(report_write)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(report_write,),
                start_new_session=True,
            )
        except OSError as exc:
            os.close(report_read)
            return f"could not start: {exc}"
        finally:
            os.close(report_write)
        reports = os.fdopen(report_read, "rb")
        self._reader = threading.Thread(
            target=self._read_reports,
            args=(self._process, reports),
            name="OtelShipperReports",
            daemon=True,
        )
        self._reader.start()
        assert self._process.stdin is not None
        try:
            write_frame(self._process.stdin, self._hello)
        except (OSError, ValueError) as exc:
            return self._lost(f"{type(exc).__name__}: {exc}")
        return None

    def _lost(self, reason: str) -> str:
        """Forgets a child that died; its pending flushes end."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
        for ack in list(self._acks.values()):
            ack.set()
        return reason

    def _read_reports(self, process: subprocess.Popen[bytes], reports: IO[bytes]) -> None:
        with reports:
            while True:
                try:
                    message = read_frame(reports)
                except (OSError, ValueError, EOFError):
                    message = None
                if message is None:
                    break
                self._report(message)
        # No lock on this thread: a sender holding it may be waiting for the child to read.
        if self._process is process or self._process is None:
            for ack in list(self._acks.values()):
                ack.set()

    def _report(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "result":
            _, signal, ok, error = message
            if ok:
                self._tracker.success(signal)
                self._restart_delay = _RESTART_DELAY
            else:
                self._tracker.failure(signal, error or None)
        elif kind == "flushed":
            ack = self._acks.get(message[2])
            if ack is not None:
                ack.set()


class _Batcher:
    """The SDK batch processor's queue and schedule, sending rows to the shipper."""

    def __init__(
        self,
        shipper: Shipper,
        signal: str,
        to_batch: Callable[..., rows.Batch],
        env: Mapping[str, str],
    ) -> None:
        self._shipper = shipper
        self._signal = signal
        self._to_batch = to_batch
        prefix, delay, queue_size, batch_size = _BATCH_DEFAULTS[signal]
        self._delay = _positive(env, f"{prefix}_SCHEDULE_DELAY", delay) / 1000.0
        self._max_queue = _positive(env, f"{prefix}_MAX_QUEUE_SIZE", queue_size)
        self._max_batch = min(_positive(env, f"{prefix}_MAX_EXPORT_BATCH_SIZE", batch_size),
                              self._max_queue)  # fmt: skip
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._send_lock = threading.Lock()
        self._stopping = False
        self.dropped = 0
        shipper.acquire()
        self._thread = threading.Thread(
            target=self._run, name=f"OtelShipper{signal.capitalize()}", daemon=True
        )
        self._thread.start()

    def add(self, item: Any) -> None:
        """Queues one item; drops it (as the SDK does) when the queue is full."""
        if self._stopping:
            return  # as the SDK's processors after shutdown: ignored
        queue = self._queue
        if len(queue) >= self._max_queue:
            self.dropped += 1
            _logger.warning("Queue full, dropping %s.", self._signal)
            return
        queue.append(item)
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Sends everything queued and waits until the child has exported it."""
        deadline = time.monotonic() + timeout
        self._drain()
        return self._shipper.flush(self._signal, max(0.0, deadline - time.monotonic()))

    def shutdown(self, timeout: float) -> None:
        """Stops the sender after a last flush; the shipper closes when no processor uses it."""
        if self._stopping:
            return
        deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.flush(max(0.0, deadline - time.monotonic()))
        self._shipper.release(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        self._shipper.start(self._signal)  # here, not in __init__: spawning takes milliseconds
        while not self._stopping:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._drain()

    def _drain(self) -> None:
        with self._send_lock:
            queue = self._queue
            while queue:
                items = [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]
                try:
                    data = self._frame(items)
                except Exception as exc:  # a batch that cannot be written fails, never raises
                    self._shipper.failed(self._signal, f"batch not written: {exc}")
                    continue
                self._shipper.send(self._signal, data, len(items))

    def _frame(self, items: list[Any]) -> bytes:
        try:
            return frame((self._signal, self._to_batch(items)))
        except ValueError:  # an attribute value marshal cannot write: plain copies of all
            return frame((self._signal, self._to_batch(items, copy=True)))


class ShippingSpanProcessor(SpanProcessor):
    """The SDK BatchSpanProcessor's contract, exporting through the shipper process."""

    def __init__(self, shipper: Shipper, env: Mapping[str, str]) -> None:
        self._use(_Batcher(shipper, "traces", rows.span_batch, env))

    def _use(self, batcher: _Batcher) -> None:
        self._batcher = batcher
        # What LeanTracer makes sampled spans with while this is the only processor: they
        # end by queueing their own rows into the batcher.
        self.span_maker = functools.partial(RowSpan, batcher.add)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queues a sampled span (an unsampled one is never exported, as with the SDK's)."""
        context = span._context
        if context is not None and context.trace_flags.sampled:
            self._batcher.add(span)

    def shutdown(self) -> None:
        """Flushes, then lets the shipper close."""
        self._batcher.shutdown(_SHUTDOWN_TIMEOUT)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """True when everything ended so far has been exported."""
        return self._batcher.flush(timeout_millis / 1000.0)


class ShippingLogRecordProcessor(LogRecordProcessor):
    """The SDK BatchLogRecordProcessor's contract, exporting through the shipper process."""

    def __init__(self, shipper: Shipper, env: Mapping[str, str]) -> None:
        self._batcher = _Batcher(shipper, "logs", rows.log_batch, env)

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        """Queues the record (turned into a row on the sender thread)."""
        self._batcher.add(log_record)

    def ship_row(self, row: tuple[Any, ...]) -> None:
        """Queues a record that log_records.emit already made into a row."""
        self._batcher.add(row)

    def shutdown(self) -> None:
        """Flushes, then lets the shipper close."""
        self._batcher.shutdown(_SHUTDOWN_TIMEOUT)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """True when every record emitted so far has been exported."""
        return self._batcher.flush(timeout_millis / 1000.0)


def _positive(env: Mapping[str, str], variable: str, default: int) -> int:
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"environment: {variable}: expected a positive integer, got {raw!r}")
    return value
