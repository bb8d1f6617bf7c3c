"""Asks a sidecar's /livez every 20 ms until its standard input closes; prints the answer times.

A process of its own, so that the benchmark's receiver does not delay the question: the answer
times then bound the sidecar's event-loop lag from above.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time


def main(port: int) -> None:
    """Polls until stdin closes, then prints {"count", "p50_ms", "p99_ms"} as JSON."""
    closed = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    times: list[float] = []
    while not closed.wait(0.02):
        started = time.perf_counter()
        try:
            connection.request("GET", "/livez")
            connection.getresponse().read()
        except (OSError, http.client.HTTPException):
            connection.close()
            continue
        times.append((time.perf_counter() - started) * 1000)
    times.sort()

    def at(share: float) -> float | None:
        return times[min(len(times) - 1, int(share * len(times)))] if times else None

    print(json.dumps({"count": len(times), "p50_ms": at(0.5), "p99_ms": at(0.99)}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
