"""Alertmanager's alert fingerprint, so receivers can correlate our alerts with theirs."""

from __future__ import annotations

from collections.abc import Mapping

_OFFSET64 = 14695981039346656037
_PRIME64 = 1099511628211
_MASK64 = (1 << 64) - 1
_SEPARATOR = 0xFF


def _add(value: int, data: bytes) -> int:
    for byte in data:
        value ^= byte
        value = (value * _PRIME64) & _MASK64
    return value


def fingerprint_value(labels: Mapping[str, str]) -> int:
    """FNV-1a 64 over sorted label names and values, each followed by 0xFF (prometheus/common)."""
    value = _OFFSET64
    for name in sorted(labels):
        value = _add(value, name.encode())
        value = _add(value, bytes([_SEPARATOR]))
        value = _add(value, labels[name].encode())
        value = _add(value, bytes([_SEPARATOR]))
    return value


def fingerprint(labels: Mapping[str, str]) -> str:
    """The fingerprint as Alertmanager prints it: 16 lowercase hex digits."""
    return f"{fingerprint_value(labels):016x}"
