"""The one time format of the HTTP surface."""

from __future__ import annotations

from agent.timestamps import iso


def test_a_time_is_written_in_utc_with_a_z() -> None:
    assert iso(1764927000.25) == "2025-12-05T09:30:00.250000Z"


def test_no_time_is_none() -> None:
    assert iso(None) is None
