"""The process's recent log events in memory, bounded by count and bytes, for /api/logs."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LEVELS: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_ALIASES = {"warn": "warning", "exception": "error", "fatal": "critical"}
# Fields kept whole when an oversized event is shrunk: they are what the table shows and filters.
_KEY_FIELDS = ("timestamp", "level", "logger", "event", "trace_id", "span_id")
_MAX_STRING = 4096
_ENTRY_OVERHEAD = 64


def level_number(name: str) -> int | None:
    """debug=10 ... critical=50, with the usual aliases; None for an unknown name."""
    key = name.strip().lower()
    return LEVELS.get(_ALIASES.get(key, key))


def parse_time(text: str) -> float:
    """An ISO 8601 time (a trailing Z or offset; naive means UTC) as epoch seconds."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _encode(event: Any) -> str:
    return json.dumps(event, default=str, ensure_ascii=False)


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif value is not None:
        yield str(value)


def _shrink(event: dict[str, Any], limit: int) -> tuple[dict[str, Any], str]:
    """Cuts long values so the encoded event fits in `limit` bytes; says it was truncated."""
    shrunk: dict[str, Any] = {}
    for key, value in event.items():
        text = value if isinstance(value, str) else None
        if text is None and not isinstance(value, bool | int | float | type(None)):
            text = _encode(value) if isinstance(value, Mapping | list | tuple) else str(value)
        if text is not None and len(text) > _MAX_STRING:
            shrunk[key] = text[:_MAX_STRING] + "…"
        else:
            shrunk[key] = value
    shrunk["truncated"] = True
    encoded = _encode(shrunk)
    if len(encoded.encode()) <= limit:
        return shrunk, encoded
    # Still too big (many fields): keep only what the table needs, each cut to a share of it.
    share = max(16, limit // (2 * len(_KEY_FIELDS)) - 16)
    minimal: dict[str, Any] = {key: str(event[key])[:share] for key in _KEY_FIELDS if key in event}
    minimal["truncated"] = True
    return minimal, _encode(minimal)


@dataclass(frozen=True)
class _Entry:
    seq: int
    at: float | None
    level: int
    logger: str
    trace_id: str
    text: str
    event: dict[str, Any]
    size: int


class LogBuffer:
    """A log sink: keeps the newest events within max_events and max_bytes (UTF-8 JSON size)."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1024:
            raise ValueError("a log buffer needs at least 1 event and 1024 bytes")
        self.max_events = max_events
        self.max_bytes = max_bytes
        # One event may use at most a quarter of the buffer, so a flood of big ones still leaves
        # several recent events to read.
        self._event_limit = max(512, max_bytes // 4)
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._seq = 0
        self._dropped = 0
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        """Receives one final, masked event (from any thread)."""
        encoded = _encode(event)
        size = len(encoded.encode())
        if size + _ENTRY_OVERHEAD > self._event_limit:
            event, encoded = _shrink(event, self._event_limit - _ENTRY_OVERHEAD)
            size = len(encoded.encode())
        size += _ENTRY_OVERHEAD
        level = level_number(str(event.get("level", "info"))) or LEVELS["info"]
        try:
            at: float | None = parse_time(str(event["timestamp"]))
        except (KeyError, ValueError):
            at = None
        text = "\n".join(_texts(event)).lower()
        with self._lock:
            self._seq += 1
            self._entries.append(
                _Entry(
                    seq=self._seq,
                    at=at,
                    level=level,
                    logger=str(event.get("logger", "")),
                    trace_id=str(event.get("trace_id", "")),
                    text=text,
                    event=event,
                    size=size,
                )
            )
            self._bytes += size
            while self._entries and (
                len(self._entries) > self.max_events or self._bytes > self.max_bytes
            ):
                self._bytes -= self._entries.popleft().size
                self._dropped += 1

    def stats(self) -> dict[str, int]:
        """How full the buffer is, and how many events it has let go."""
        with self._lock:
            return {
                "events": len(self._entries),
                "bytes": self._bytes,
                "max_events": self.max_events,
                "max_bytes": self.max_bytes,
                "dropped": self._dropped,
            }

    def query(
        self,
        *,
        level: str | None = None,
        logger: str | None = None,
        since: float | None = None,
        q: str | None = None,
        trace_id: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Matching events, newest first; `level` means at or above, `q` is case-insensitive."""
        minimum = 0
        if level:
            found = level_number(level)
            if found is None:
                raise ValueError(f"unknown level {level!r} (expected one of {', '.join(LEVELS)})")
            minimum = found
        loggers = {name.strip() for name in logger.split(",") if name.strip()} if logger else None
        needle = q.strip().lower() if q else ""
        wanted_trace = trace_id.strip().lower() if trace_id else ""
        with self._lock:
            entries = list(self._entries)
        out: list[dict[str, Any]] = []
        for entry in reversed(entries):
            if len(out) >= limit:
                break
            if entry.level < minimum:
                continue
            if loggers is not None and entry.logger not in loggers:
                continue
            if since is not None and (entry.at is None or entry.at < since):
                continue
            if wanted_trace and entry.trace_id.lower() != wanted_trace:
                continue
            if needle and needle not in entry.text:
                continue
            out.append({"seq": entry.seq, **entry.event})
        return out
