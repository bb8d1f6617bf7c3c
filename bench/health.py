"""Load on /health, /livez and /readyz against a bare aiohttp handler in the same run (wrk)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.net import free_port, wait_for_port
from tests.support.sidecar import SidecarProcess

DURATION = "4s"
CONNECTIONS = "32"
THREADS = "2"
REPEATS = 3


def _wrk(url: str) -> tuple[float, float]:
    """Requests per second and p99 latency in milliseconds."""
    out = subprocess.run(
        ["wrk", "-t", THREADS, "-c", CONNECTIONS, "-d", DURATION, "--latency", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    match = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert match is not None, out
    value, unit = float(match.group(1)), match.group(2)
    p99 = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return rps, p99


def main() -> dict[str, float]:
    """Runs the comparison and prints ratios; returns the figures."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make deps installs it)")
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(port)])
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sidecar = SidecarProcess(
            Path(tmp), env={"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true"}
        )
        try:
            wait_for_port(port)
            sidecar.start()
            time.sleep(1.0)
            _wrk(f"http://127.0.0.1:{port}/")  # warm-up
            for path in ("/health", "/livez", "/readyz"):
                _wrk(sidecar.url + path)  # warm-up
                pairs = []
                for _ in range(REPEATS):
                    # The bare baseline runs right before the endpoint each time: the machine is
                    # shared, and adjacent runs see the same load; the median pair is reported.
                    base = _wrk(f"http://127.0.0.1:{port}/")
                    pairs.append((base, _wrk(sidecar.url + path)))
                (base_rps, base_p99), (rps, p99) = sorted(
                    pairs, key=lambda pair: pair[1][0] / pair[0][0]
                )[len(pairs) // 2]
                p99_ratio = statistics.median(ep[1] / bp[1] for bp, ep in pairs)
                name = path.strip("/")
                results |= {
                    f"{name}_bare_rps": base_rps,
                    f"{name}_bare_p99_ms": base_p99,
                    f"{name}_rps": rps,
                    f"{name}_p99_ms": p99,
                    f"{name}_rps_ratio": rps / base_rps,
                    f"{name}_p99_ratio": p99_ratio,
                }
                print(f"{path:<8} {rps:7.0f} req/s p99 {p99:6.2f} ms | bare {base_rps:7.0f} req/s "
                      f"p99 {base_p99:6.2f} ms | rps {rps / base_rps:4.0%} of bare (goal >= 70%), "
                      f"p99 {p99_ratio:4.2f}x bare (goal <= 2x), median of {REPEATS}")  # fmt: skip
        finally:
            sidecar.stop()
            bare.terminate()
            bare.wait(timeout=10)
    return results


if __name__ == "__main__":
    main()
