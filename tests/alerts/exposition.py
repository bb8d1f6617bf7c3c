"""Reads the Prometheus text exposition format, as the collector's exporter serves it."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_TYPE = re.compile(r"^# TYPE (\S+) (\S+)")


@dataclass(frozen=True)
class Sample:
    """One exposed sample: metric name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float


def samples(text: str) -> list[Sample]:
    """Every sample line of an exposition."""
    found = []
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            labels = dict(_PAIR.findall(match.group(2) or ""))
            found.append(Sample(match.group(1), labels, float(match.group(3))))
    return found


def types(text: str) -> dict[str, str]:
    """Metric family name -> its # TYPE (counter, gauge, histogram...)."""
    return {m.group(1): m.group(2) for m in map(_TYPE.match, text.splitlines()) if m}
