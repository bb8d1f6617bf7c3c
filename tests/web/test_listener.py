"""The real sidecar's HTTP listener under slow and idle clients: timeouts and a connection cap."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., SidecarProcess]
HALF_HEAD = b"GET /livez HTTP/1.1\r\nHost: sidecar\r\nX-Slow: "
ENV = {"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true"}


@contextlib.contextmanager
def _half_sent_heads(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that each sent part of a request head and then wait."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(HALF_HEAD)
            sock.setblocking(False)
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _wait_until_closed(socks: list[socket.socket], at_least: int, timeout: float) -> int:
    """Polls until `at_least` of the connections were closed by the sidecar; returns how many."""
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        closed |= {i for i, sock in enumerate(socks) if i not in closed and _closed_by_server(sock)}
        if len(closed) >= at_least:
            break
        time.sleep(0.1)
    return len(closed)


def _livez_seconds(sidecar: SidecarProcess) -> float:
    started = time.monotonic()
    status, body = sidecar.get("/livez", timeout=5)
    assert (status, body) == (200, "ok")
    return time.monotonic() - started


def test_livez_answers_while_a_thousand_connections_hold_half_sent_heads_until_they_are_closed(
    sidecar_process: Start,
) -> None:
    sidecar = sidecar_process(env=ENV, config='[server]\nheader_timeout = "2s"\n')
    with _half_sent_heads(sidecar.port, 1000) as attack:
        slowest = max(_livez_seconds(sidecar) for _ in range(10))
        closed = _wait_until_closed(attack, 1000, timeout=20)
        assert closed == 1000, f"{1000 - closed} half-sent requests still open"
    assert slowest < 2.0, f"/livez took {slowest:.2f}s during the attack"


def test_at_the_cap_the_oldest_idle_connections_close_and_a_request_in_progress_does_not(
    sidecar_process: Start,
) -> None:
    sidecar = sidecar_process(
        env=ENV,
        config='[server]\nmax_connections = 16\nheader_timeout = "5m"\nbody_timeout = "30s"\n',
    )
    body = b'{"page": [], "api": []}'
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as busy:
        busy.sendall(
            b"POST /api/rum HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        time.sleep(0.5)  # its head is parsed: the request is in progress, reading the body
        with _half_sent_heads(sidecar.port, 100) as idle:
            closed = _wait_until_closed(idle, 100 - 15, timeout=20)
            assert closed >= 100 - 15, f"only {closed} of 100 idle connections closed at cap 16"
            assert _livez_seconds(sidecar) < 2.0
            busy.sendall(body[5:])
            assert busy.recv(4096).startswith(b"HTTP/1.1 202 ")


def test_a_body_that_does_not_arrive_in_time_gets_408_and_a_closed_connection(
    sidecar_process: Start,
) -> None:
    sidecar = sidecar_process(env=ENV, config='[server]\nbody_timeout = "1s"\n')
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as slow:
        slow.sendall(
            b"POST /api/rum HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        answer = b""
        while chunk := slow.recv(4096):
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 1s" in answer
    assert 0.9 <= waited < 5.0
