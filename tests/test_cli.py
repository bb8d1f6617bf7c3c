"""The real `signal-sidecar run` process: telemetry end to end, bounded shutdown, `check`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from agent import gc_settings
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

SECRETS = {
    "WEBHOOK_SECRET": "whsec-e2e-7f3a91",
    "R2_FETCH_TOKEN": "r2tok-e2e-55c2d0",
    "SIDECAR_API_TOKEN": "apitok-e2e-c0ffee",
    "IMAP_PASSWORD": "imappw-e2e-b4d5e6",
}
TRACEPARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen in {timeout}s (last: {str(last)[:500]})")


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def test_span_metrics_and_logs_reach_the_collector_without_secrets(
    sidecar_process: Callable[..., SidecarProcess], telemetry_stack: Any
) -> None:
    sidecar = sidecar_process(
        env={
            **SECRETS,
            "ENABLE_BACKGROUND_TASKS": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": telemetry_stack.otlp_http_endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "WEBHOOK_URL": "https://app.invalid/hook",
        }
    )
    headers = {
        "Authorization": f"Bearer {SECRETS['SIDECAR_API_TOKEN']}",
        "traceparent": f"00-{TRACEPARENT_TRACE}-00f067aa0ba902b7-01",
    }
    status, _ = sidecar.get(f"/api/metrics?token={SECRETS['R2_FETCH_TOKEN']}", headers=headers)
    assert status == 200

    traces = _wait(
        lambda: [
            t for t in telemetry_stack.traces("signal-sidecar") if t["traceID"] == TRACEPARENT_TRACE
        ],
        30,
        "the server span in Jaeger",
    )
    spans = traces[0]["spans"]
    assert any(s["operationName"] == "GET /api/metrics" for s in spans)

    prometheus = _wait(
        lambda: (
            lambda text: text if "probe_up" in text and "process_memory_usage" in text else ""
        )(_fetch(telemetry_stack.prometheus_url)),
        30,
        "probe_up and process_memory_usage on the collector's Prometheus endpoint",
    )

    debug = _wait(
        lambda: (lambda out: out if TRACEPARENT_TRACE in out else "")(
            telemetry_stack.debug_output()
        ),
        30,
        "a log record with the trace id",
    )
    assert "http.request" in debug

    everything = json.dumps(traces) + prometheus + debug + sidecar.log_text()
    for name, secret in SECRETS.items():
        assert secret not in everything, f"{name} leaked"


def test_sigterm_ends_within_five_seconds_with_a_dead_collector(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process(
        env={
            "ENABLE_BACKGROUND_TASKS": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
    )
    for _ in range(20):
        sidecar.get("/api/metrics")
    time.sleep(1.5)
    assert sidecar.terminate() <= 5.0


def test_sigterm_ends_within_five_seconds_with_a_black_hole_collector(
    sidecar_process: Callable[..., SidecarProcess], blackhole: Any
) -> None:
    sidecar = sidecar_process(
        env={
            "ENABLE_BACKGROUND_TASKS": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": blackhole.url,
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
    )
    for _ in range(20):
        sidecar.get("/api/metrics")
    time.sleep(1.5)
    assert blackhole.accepted > 0
    assert sidecar.terminate() <= 5.0


def test_sigterm_flushes_queued_spans_when_the_collector_is_up(
    sidecar_process: Callable[..., SidecarProcess], telemetry_stack: Any
) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    sidecar = sidecar_process(
        env={
            "ENABLE_BACKGROUND_TASKS": "false",
            "OTEL_EXPORTER_OTLP_ENDPOINT": telemetry_stack.otlp_http_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "60000",
            "OTEL_SERVICE_NAME": "signal-sidecar-flush",
        }
    )
    sidecar.get("/api/metrics", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert sidecar.terminate() <= 5.0
    _wait(
        lambda: [
            t for t in telemetry_stack.traces("signal-sidecar-flush") if t["traceID"] == trace_id
        ],
        20,
        "the flushed span",
    )


def test_check_exits_zero_when_ready_and_one_when_not(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process(env={"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true"})
    _wait(lambda: sidecar.get("/readyz")[0] == 200, 15, "readiness")
    ready = subprocess.run(
        [sys.executable, "-m", "agent", "check", "--url", f"{sidecar.url}/readyz?verbose"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ready.returncode == 0, ready.stdout + ready.stderr
    closed = subprocess.run(
        [sys.executable, "-m", "agent", "check", "--url", f"http://127.0.0.1:{free_port()}/readyz"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert closed.returncode == 1


def test_the_running_sidecar_tunes_and_freezes_its_garbage_collector(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process(env={"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true"})
    listening = _wait(
        lambda: [e for e in sidecar.log_events() if e.get("event") == "http.listening"],
        15,
        "the http.listening line",
    )[0]
    assert listening["gc_thresholds"] == list(gc_settings.THRESHOLDS)
    assert listening["gc_frozen_objects"] > 10_000
