"""One setting's checks: host names, Redis URLs and how ranges are written."""

from __future__ import annotations

import pytest

from agent.config_fields import format_duration, ip_or_host_name, redis_url


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "127.0.0.1", "::", "::1", "[::1]", "localhost", "sidecar-0.svc.local"]
)
def test_addresses_and_host_names_are_accepted(host: str) -> None:
    assert ip_or_host_name(host) is None


@pytest.mark.parametrize(
    "host", ["999.1.1.1", "1.2.3", "", "under_score.example", "-lead.example", "a..b", "x" * 254]
)
def test_what_is_neither_an_address_nor_a_host_name_is_refused(host: str) -> None:
    assert ip_or_host_name(host) is not None


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@[::1]:6380", "unix:///run/redis.sock", ""]
)
def test_urls_the_redis_client_accepts_pass(url: str) -> None:
    assert redis_url(url) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.1, "100ms"), (90, "90s"), (3600, "1h"), (86400 * 366, "366d")],
)
def test_durations_are_written_in_their_largest_whole_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
