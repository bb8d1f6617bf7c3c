"""Loopback ports and waiting for servers to listen."""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

# Ports for servers are drawn below the kernel's ephemeral range: a port the kernel hands out
# for port 0 is also what it picks as the source port of outgoing connections, so a server
# started a moment later on such a port can find it taken ("address already in use").
_LOWEST = 10_000
_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range.

    Never the same port twice in one process, so servers started together do not collide.
    """
    highest = _ephemeral_start() - 1
    with _lock:
        for _ in range(200):
            port = random.randint(_LOWEST, highest)
            if port in _given or not _bindable(port):
                continue
            _given.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # the low range is exhausted: let the kernel choose
        return int(sock.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Blocks until host:port accepts TCP connections, or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether host:port accepts a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 30.0
) -> None:
    """Blocks until GET url answers 200; raises with the log's tail if proc exits or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(
        f"{what} not ready after {timeout}s: {log.read_text(errors='replace')[-3000:]}"
    )
