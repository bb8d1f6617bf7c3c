"""Measures the R2 Worker's copy speed against a direct download, and that its memory stays flat."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from tests.fixtures.miniflare import R2Worker, start_r2_worker, worker_installed
from tests.support.net import free_port, wait_for_port

MB = 1024 * 1024
BASELINE_SCRIPT = Path(__file__).resolve().parent / "r2_baseline_worker.js"
LARGE = 200 * MB
SMALL = 10 * MB
_TIME_LIMIT = 240.0


class _PeakRss:
    """Samples the RSS of the workerd processes under the runner every few milliseconds."""

    def __init__(self, root_pid: int) -> None:
        self._root = psutil.Process(root_pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def _workerd_rss(self) -> int:
        total = 0
        for child in self._root.children(recursive=True):
            try:
                if "workerd" in child.name():
                    total += child.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._workerd_rss())
            time.sleep(0.01)

    def __enter__(self) -> _PeakRss:
        self.peak = self._workerd_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._workerd_rss())


def _direct_mb_s(url: str) -> float:
    started = time.perf_counter()
    received = 0
    with requests.get(url, stream=True, timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1 * MB):
            received += len(chunk)
    elapsed = time.perf_counter() - started
    return received / MB / elapsed


def _through_worker(worker: R2Worker, url: str, size: int, email_id: str) -> tuple[float, int]:
    """MB/s of one Worker copy, and the peak workerd RSS in bytes while it ran."""
    with _PeakRss(worker.process.pid) as rss:
        started = time.perf_counter()
        response = worker.transfer(url, email_id=email_id, timeout=_TIME_LIMIT)
        elapsed = time.perf_counter() - started
    body = response.json()
    if not body.get("success") or body.get("size") != size:
        raise RuntimeError(f"transfer of {url} failed: {response.status_code} {body}")
    return size / MB / elapsed, rss.peak


def _start_file_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.fileserver", str(port)],
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process, f"http://127.0.0.1:{port}"


def main() -> dict[str, float]:
    """Runs the comparison once and prints it; returns the numbers by name."""
    if shutil.which("node") is None or not worker_installed():
        raise SystemExit("r2-worker dependencies missing: run `make worker-deps`")
    server, origin = _start_file_server()
    workdir = tempfile.TemporaryDirectory(prefix="bench-r2-worker-")
    base_dir = Path(workdir.name) / "baseline"
    worker = start_r2_worker(Path(workdir.name), allowed_hosts=origin, max_bytes=1024 * MB)
    baseline: R2Worker | None = None
    try:
        baseline = start_r2_worker(base_dir, R2_WORKER_SCRIPT=str(BASELINE_SCRIPT))
        direct = _direct_mb_s(f"{origin}/bytes/{LARGE}")
        idle = _PeakRss(worker.process.pid)._workerd_rss()
        base_idle = _PeakRss(baseline.process.pid)._workerd_rss()
        small_speed, small_peak = _through_worker(worker, f"{origin}/bytes/{SMALL}", SMALL, "s")
        via_worker, large_peak = _through_worker(worker, f"{origin}/bytes/{LARGE}", LARGE, "l")
        chunked, chunked_peak = _through_worker(worker, f"{origin}/chunked/{LARGE}", LARGE, "c")
        _, base_small_peak = _through_worker(baseline, f"{origin}/bytes/{SMALL}", SMALL, "s")
        base_speed, base_large_peak = _through_worker(
            baseline, f"{origin}/bytes/{LARGE}", LARGE, "l"
        )
    finally:
        worker.stop()
        if baseline is not None:
            baseline.stop()
        workdir.cleanup()
        server.terminate()
        server.wait(timeout=10)
    results = {
        "direct_mb_s": round(direct, 1),
        "worker_mb_s": round(via_worker, 1),
        "worker_to_direct_ratio": round(via_worker / direct, 3),
        "worker_chunked_mb_s": round(chunked, 1),
        "workerd_idle_rss_mb": round(idle / MB, 1),
        "workerd_peak_rss_10mb_mb": round(small_peak / MB, 1),
        "workerd_peak_rss_200mb_mb": round(large_peak / MB, 1),
        "workerd_peak_rss_200mb_chunked_mb": round(chunked_peak / MB, 1),
        "worker_10mb_mb_s": round(small_speed, 1),
        "baseline_put_mb_s": round(base_speed, 1),
        "worker_to_baseline_ratio": round(via_worker / base_speed, 3),
        "baseline_peak_rss_10mb_mb": round(base_small_peak / MB, 1),
        "baseline_peak_rss_200mb_mb": round(base_large_peak / MB, 1),
        "worker_growth_10_to_200mb_mb": round((large_peak - small_peak) / MB, 1),
        "baseline_growth_10_to_200mb_mb": round((base_large_peak - base_small_peak) / MB, 1),
        "baseline_idle_rss_mb": round(base_idle / MB, 1),
    }
    print(f"direct download of {LARGE // MB} MB:     {results['direct_mb_s']:8.1f} MB/s")
    print(f"through the Worker into R2:  {results['worker_mb_s']:8.1f} MB/s")
    print(f"ratio (goal >= 0.5):         {results['worker_to_direct_ratio']:8.3f}")
    print(f"chunked source via Worker:   {results['worker_chunked_mb_s']:8.1f} MB/s")
    print(f"workerd RSS idle:            {results['workerd_idle_rss_mb']:8.1f} MB")
    print(f"workerd peak RSS, 10 MB:     {results['workerd_peak_rss_10mb_mb']:8.1f} MB")
    print(f"workerd peak RSS, 200 MB:    {results['workerd_peak_rss_200mb_mb']:8.1f} MB")
    print(f"  same, chunked (multipart): {results['workerd_peak_rss_200mb_chunked_mb']:8.1f} MB")
    print("baseline (bare fetch + put under the same Miniflare, same run):")
    print(f"  bare put, 200 MB:          {results['baseline_put_mb_s']:8.1f} MB/s; the Worker "
          f"reaches {results['worker_to_baseline_ratio']:.2f} of it")  # fmt: skip
    print(f"  RSS growth 10 -> 200 MB:   Worker {results['worker_growth_10_to_200mb_mb']:.1f} MB, "
          f"bare put {results['baseline_growth_10_to_200mb_mb']:.1f} MB "
          "(the difference is what the Worker itself adds)")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
