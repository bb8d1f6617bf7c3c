"""The real `signal-sidecar run` process: telemetry end to end, bounded shutdown, `check`, and
start-up failures as one line with exit code 2 (configuration) or 1 (the machine)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent import gc_settings
from tests.support.net import free_port
from tests.support.sidecar import ROOT, SidecarProcess

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
            # /api/* is logged at debug; every line is checked for secrets below.
            "SIDECAR_LOG_LEVEL": "debug",
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


def _command(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Runs the real command with a minimal environment, as an operator's shell would."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENABLE_BACKGROUND_TASKS": "false",
        "OTEL_SDK_DISABLED": "true",
        "SIDECAR_DATA_DIR": str(tmp_path / "data"),
    }
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
        check=False,
    )


def _not_a_directory(tmp_path: Path) -> str:
    (tmp_path / "a-file").write_text("x")
    return str(tmp_path / "a-file" / "data")


REDIS_PASSWORD = "redis-pw-9f8e7d"
# (case, extra arguments of `run`, environment, exit code, what the one line must say)
START_FAILURES: list[tuple[str, list[str], dict[str, str], int, str]] = [
    (
        "port out of range",
        ["--port", "99999"],
        {},
        2,
        "invalid configuration: command line: --port (server.port): expected 0 to 65535, got 99999",
    ),
    (
        "host that is no address",
        [],
        {"SIDECAR_HOST": "999.1.1.1"},
        2,
        "invalid configuration: environment: SIDECAR_HOST (server.host): expected an IP "
        "address or a host name, got '999.1.1.1', which is not a valid IPv4 address",
    ),
    (
        "data directory not writable",
        ["--port", "0"],
        {"SIDECAR_DATA_DIR": "{not_a_directory}"},
        1,
        "cannot start: server.data_dir (SIDECAR_DATA_DIR): cannot write to {not_a_directory}: "
        "Not a directory",
    ),
    (
        "malformed Redis URL",
        [],
        {"REDIS_URL": f"redis://:{REDIS_PASSWORD}@[::1"},
        2,
        "invalid configuration: environment: REDIS_URL (store.redis_url): not a valid URL: the "
        "brackets around its IPv6 address do not match",
    ),
    (
        "unknown log level",
        [],
        {"SIDECAR_LOG_LEVEL": "loud"},
        2,
        "invalid configuration: environment: SIDECAR_LOG_LEVEL (telemetry.log_level): expected "
        "one of debug, info, warning, warn, error, critical, got 'loud'",
    ),
]


@pytest.mark.parametrize(
    ("args", "env", "code", "line"),
    [case[1:] for case in START_FAILURES],
    ids=[case[0] for case in START_FAILURES],
)
def test_a_start_up_failure_is_one_line_naming_the_setting_and_its_exit_code(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, line: str
) -> None:
    where = {"not_a_directory": _not_a_directory(tmp_path)}
    env = {name: value.format(**where) for name, value in env.items()}
    result = _command("run", *args, env=env, tmp_path=tmp_path)
    assert result.returncode == code
    assert result.stderr == f"signal-sidecar: {line.format(**where)}\n"
    assert result.stdout == ""
    assert REDIS_PASSWORD not in result.stderr


def test_a_port_in_use_is_an_environment_failure_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _command(
            "run", "--host", "127.0.0.1", "--port", str(port), env={}, tmp_path=tmp_path
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"signal-sidecar: cannot start: cannot listen on 127.0.0.1:{port} "
        "(server.host, server.port): Address already in use\n"
    )


CHECK_FAILURES = [
    ({"SIDECAR_PORT": "99999"}, 2, "SIDECAR_PORT (server.port): expected 0 to 65535"),
    ({"SIDECAR_HOST": "999.1.1.1"}, 2, "SIDECAR_HOST (server.host): expected an IP address"),
    ({"SIDECAR_DATA_DIR": "{not_a_directory}"}, 1, "server.data_dir (SIDECAR_DATA_DIR)"),
    ({"REDIS_URL": f"redis://:{REDIS_PASSWORD}@[::1"}, 2, "REDIS_URL (store.redis_url)"),
    ({"SIDECAR_LOG_LEVEL": "loud"}, 2, "SIDECAR_LOG_LEVEL (telemetry.log_level)"),
]


@pytest.mark.parametrize(
    ("env", "code", "names"), CHECK_FAILURES, ids=[c[2] for c in CHECK_FAILURES]
)
def test_config_check_catches_each_failure_that_needs_no_network(
    tmp_path: Path, env: dict[str, str], code: int, names: str
) -> None:
    where = {"not_a_directory": _not_a_directory(tmp_path)}
    env = {name: value.format(**where) for name, value in env.items()}
    result = _command("config", "check", env=env, tmp_path=tmp_path)
    assert result.returncode == code
    assert len(result.stderr.splitlines()) == 1
    assert names in result.stderr
    assert "Traceback" not in result.stderr
    assert REDIS_PASSWORD not in result.stderr + result.stdout


def test_port_zero_binds_a_free_port_and_logs_it(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = sidecar_process(
        env={"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true"}, port=0
    )
    assert sidecar.port not in (0, 8080)
    assert sidecar.get("/livez")[0] == 200
    [listening] = [e for e in sidecar.log_events() if e.get("event") == "http.listening"]
    assert listening["addresses"] == [f"127.0.0.1:{sidecar.port}"]


def test_check_without_url_refuses_port_zero_and_says_what_to_pass(tmp_path: Path) -> None:
    result = _command("check", env={"SIDECAR_PORT": "0"}, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "signal-sidecar: invalid configuration: server.port (SIDECAR_PORT): 0 picks a port at "
        "start; pass --url with the port the sidecar logged\n"
    )
