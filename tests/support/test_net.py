"""Server ports for the test bed come from below the ephemeral range, never twice."""

from __future__ import annotations

import socket

import pytest

from tests.support import net
from tests.support.net import _ephemeral_start, free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)
    assert all(port < _ephemeral_start() for port in ports)
    for port in ports[:10]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    taken, spare = free_port(), free_port()
    monkeypatch.setattr(net, "_given", set())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", taken))
        busy.listen()
        draws = iter([taken, spare])
        monkeypatch.setattr(net.random, "randint", lambda _low, _high: next(draws))
        assert free_port() == spare
