"""One way the HTTP surface writes a time: ISO 8601 in UTC with a Z."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


@overload
def iso(at: float) -> str: ...
@overload
def iso(at: float | None) -> str | None: ...
def iso(at: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a Z (2026-12-05T09:30:00.250000Z), or None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
