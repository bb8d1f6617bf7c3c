"""alerts.evaluator in a real `signal-sidecar run`: with Prometheus evaluating it stays silent."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.receiver import Receiver
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(90)

PASSWORD = "s3cret-prom-pass"
TOKEN = "t0ken-for-the-proxy"
WHERE = "http://prometheus.example:9090/alerts?token=***"


def _config(evaluator: str) -> str:
    url = WHERE.replace("http://", f"http://admin:{PASSWORD}@").replace("***", TOKEN)
    return f"""
[telemetry]
export_interval = "1s"
shutdown_timeout = "0.5s"

[alerts]
use_defaults = false
evaluator = "{evaluator}"
evaluator_url = "{url}"

[[alerts.rules]]
alert = "SidecarAlive"
metric = "process.memory.usage"
threshold = 0
labels = {{ severity = "info" }}
"""


def _env(receiver: Receiver, path: str) -> dict[str, str]:
    return {
        # Nothing listens there: metrics are exported (and fail), the tee still feeds the engine.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "ENABLE_BACKGROUND_TASKS": "false",
        "ALERT_WEBHOOK_URL": receiver.url + path,
    }


def _get(sidecar: SidecarProcess, path: str, accept: str = "application/json") -> Any:
    request = urllib.request.Request(sidecar.url + path, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # /health answers 503 while a check is degraded
        return json.loads(exc.read())


async def test_with_prometheus_evaluating_no_notification_leaves_and_health_says_where(
    receiver: Receiver, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    # The same rule in two sidecars started together: the one that evaluates proves it fires.
    # Distinct names: the two start at once and must not share a config file.
    quiet, control = await asyncio.gather(
        asyncio.to_thread(sidecar_process, env=_env(receiver, "/quiet"),
                          config=_config("prometheus"), name="quiet"),
        asyncio.to_thread(sidecar_process, env=_env(receiver, "/control"),
                          config=_config("sidecar"), name="control"),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not any(r.path == "/control" for r in receiver.requests):
        assert time.monotonic() < deadline, "the evaluating sidecar never notified"
        await asyncio.sleep(0.2)
    await asyncio.sleep(5.0)  # five more evaluations, were the quiet one evaluating
    assert [r.path for r in receiver.requests if r.path != "/control"] == []

    health = await asyncio.to_thread(_get, quiet, "/health")
    assert health["alerts"] == {"firing": None, "evaluator": "prometheus", "evaluator_url": WHERE}
    ietf = await asyncio.to_thread(_get, quiet, "/health", "application/health+json")
    assert ietf["notes"] == [f"alerts are evaluated by prometheus at {WHERE}"]
    listed = await asyncio.to_thread(_get, quiet, "/api/alerts")
    assert listed == {"alerts": [], "evaluator": "prometheus", "evaluator_url": WHERE}
    assert (await asyncio.to_thread(_get, control, "/health"))["alerts"]["firing"] == 1
    for sidecar in (quiet, control):
        log = sidecar.log_path.read_text()
        assert PASSWORD not in log
        assert TOKEN not in log
