"""Garbage-collector settings for a process that allocates short-lived objects for every mail."""

from __future__ import annotations

import gc

# CPython collects its youngest generation every 700 net allocations. Each mail allocates
# thousands of short-lived containers (parsed parts, spans, log events), so at that pace mail in
# flight is walked again and again and pushed into older generations, whose collections then walk
# the whole heap. A larger first threshold lets most of it die young; the older two follow less
# often. Measured in docs/benchmarks.md ("Garbage collection").
THRESHOLDS: tuple[int, int, int] = (10_000, 20, 20)


def tune() -> None:
    """Sets the collection thresholds for the sidecar's allocation pattern."""
    gc.set_threshold(*THRESHOLDS)


def thresholds() -> tuple[int, int, int]:
    """The thresholds in force, for the start-up log line."""
    return gc.get_threshold()


def freeze_startup_heap() -> int:
    """Moves everything alive after start-up out of the collector's walks; returns how many.

    Modules, settings and long-lived parts never become garbage; without this every full
    collection walks them again. Garbage left by start-up is collected first.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
