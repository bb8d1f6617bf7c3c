"""The log buffer behind /api/logs: its bounds, its filters and its thread safety."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.web.logbuffer import LogBuffer, parse_time

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _event(n: int, **fields: Any) -> dict[str, Any]:
    stamp = (T0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
    return {"timestamp": stamp, "level": "info", "logger": "app", "event": f"e{n}", **fields}


def _filled(*events: dict[str, Any]) -> LogBuffer:
    buffer = LogBuffer(max_events=100, max_bytes=64 * 1024)
    for event in events:
        buffer(event)
    return buffer


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def test_buffer_stays_within_its_byte_bound_when_flooded_with_large_events() -> None:
    buffer = LogBuffer(max_events=10_000, max_bytes=64 * 1024)
    for n in range(500):
        buffer(_event(n, payload="x" * 50_000, more=["y" * 20_000] * 3))
        assert buffer.stats()["bytes"] <= 64 * 1024
    kept = buffer.query(limit=1000)
    assert sum(len(json.dumps(e).encode()) for e in kept) <= 64 * 1024
    assert kept[0]["event"] == "e499"
    assert len(kept) >= 4


def test_oversized_event_is_kept_truncated_with_its_name_and_level() -> None:
    buffer = LogBuffer(max_events=10, max_bytes=16 * 1024)
    buffer(_event(1, level="error", payload="z" * 100_000))
    [kept] = buffer.query()
    assert kept["event"] == "e1"
    assert kept["level"] == "error"
    assert kept["truncated"] is True
    assert len(json.dumps(kept)) < 16 * 1024


def test_buffer_keeps_at_most_max_events_dropping_the_oldest() -> None:
    buffer = LogBuffer(max_events=5, max_bytes=1024 * 1024)
    for n in range(12):
        buffer(_event(n))
    assert _names(buffer.query()) == ["e11", "e10", "e9", "e8", "e7"]
    assert buffer.stats()["dropped"] == 7


def test_events_come_newest_first_and_limit_keeps_the_newest() -> None:
    buffer = _filled(*(_event(n) for n in range(6)))
    assert _names(buffer.query(limit=3)) == ["e5", "e4", "e3"]


def test_level_filter_keeps_events_at_or_above_the_level() -> None:
    levels = ["debug", "info", "warning", "error", "critical"]
    buffer = _filled(*(_event(n, level=level) for n, level in enumerate(levels)))
    assert _names(buffer.query(level="warning")) == ["e4", "e3", "e2"]
    assert _names(buffer.query(level="WARN")) == ["e4", "e3", "e2"]
    assert _names(buffer.query(level="critical")) == ["e4"]


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown level"):
        _filled().query(level="loud")


def test_logger_filter_keeps_only_that_logger() -> None:
    buffer = _filled(_event(1, logger="imap"), _event(2, logger="http"), _event(3, logger="imap"))
    assert _names(buffer.query(logger="imap")) == ["e3", "e1"]


def test_search_is_case_insensitive_over_event_and_nested_values() -> None:
    buffer = _filled(
        _event(1, mailbox="Sales-Inbox"),
        _event(2, detail={"error": "Connection REFUSED"}),
        _event(3, items=["nothing", "here"]),
    )
    assert _names(buffer.query(q="sales")) == ["e1"]
    assert _names(buffer.query(q="refused")) == ["e2"]
    assert _names(buffer.query(q="E3")) == ["e3"]
    assert buffer.query(q="logger") == []


def test_since_keeps_events_at_or_after_the_time() -> None:
    buffer = _filled(*(_event(n) for n in range(5)))
    since = parse_time((T0 + timedelta(seconds=3)).isoformat())
    assert _names(buffer.query(since=since)) == ["e4", "e3"]


def test_trace_id_filter_keeps_only_that_trace() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    buffer = _filled(_event(1, trace_id=trace), _event(2, trace_id="0" * 32), _event(3))
    assert _names(buffer.query(trace_id=trace.upper())) == ["e1"]


def test_events_from_many_threads_are_all_kept() -> None:
    buffer = LogBuffer(max_events=10_000, max_bytes=16 * 1024 * 1024)

    def write(worker: int) -> None:
        for n in range(500):
            buffer(_event(n, worker=worker))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = buffer.query(limit=10_000)
    assert len(kept) == 4000
    assert len({e["seq"] for e in kept}) == 4000
    assert buffer.stats()["events"] == 4000
