"""Real processes: sidecars, collector, Debian's Prometheus with the exported rules, Alertmanager.

The sidecars process mail whose webhook the app refuses; their metrics reach the test bed's
collector, Prometheus scrapes its exporter and evaluates the rules `signal-sidecar alerts export`
wrote from the sidecars' own configuration, and sends what fires to a real Alertmanager.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.alerts import refused_mail_config, run_export, until
from tests.alerts.exposition import samples
from tests.fixtures.alertmanager import RECEIVER_PATH, Alertmanager
from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.prometheus import Prometheus, StartPrometheus
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import make_message
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")
SIDECAR_PATH = "/sidecar-alerts"
ERROR_RATE = "HighWebhookErrorRate"

ALIVE_RULE = """
[[alerts.rules]]
alert = "SidecarAlive"
metric = "process.memory.usage"
threshold = 0
labels = { severity = "info" }
annotations = { summary = "RSS above zero" }
"""


def _config(dovecot: Dovecot, user: str, *, evaluator: str, evaluator_url: str) -> str:
    return f"""
[health]
interval = "0.5s"
timeout = "1s"

[telemetry]
export_interval = "1s"
shutdown_timeout = "0.5s"

[alerts]
evaluation_interval = "1s"
evaluator = "{evaluator}"
evaluator_url = "{evaluator_url}"
{ALIVE_RULE}
{refused_mail_config(dovecot, user)}"""


def _env(stack: TelemetryStack, service: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_http_endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **extra,
    }


def _export(config: str, service: str, workdir: Path) -> Path:
    """The real command, as an operator runs it against the sidecars' own configuration."""
    source = workdir / "export.toml"
    source.write_text(config)
    rules = workdir / "signal-sidecar.rules.yml"
    result = run_export(
        "--config", str(source), "-o", str(rules), env={"OTEL_SERVICE_NAME": service}
    )
    assert result.returncode == 0, result.stderr
    return rules


async def _prometheus_with_rules_of(
    config: str,
    service: str,
    port: int,
    start: StartPrometheus,
    stack: TelemetryStack,
    alertmanager: Alertmanager,
    workdir: Path,
) -> Prometheus:
    """Prometheus on `port`, scraping the test bed's collector, with the rules exported from
    the sidecars' configuration, sending to the Alertmanager."""
    return await asyncio.to_thread(
        start,
        exporter=f"127.0.0.1:{stack.prometheus_port}",
        rules=_export(config, service, workdir),
        alertmanager=alertmanager.url.removeprefix("http://"),
        port=port,
    )


def _mails(tag: str, count: int) -> list[bytes]:
    return [
        make_message(subject=f"{tag} {n}", text="Hello.", message_id=f"<{tag}-{n}@mail.example>")
        for n in range(count)
    ]


def _alerts_at(receiver: Receiver, path: str, name: str) -> list[dict[str, Any]]:
    found = []
    for request in receiver.requests:
        if request.path == path and request.method == "POST":
            found += [a for a in request.json["alerts"] if a["labels"]["alertname"] == name]
    return found


async def _first_alert(receiver: Receiver, path: str, name: str, timeout: float) -> dict[str, Any]:
    async def seen() -> dict[str, Any] | None:
        alerts = _alerts_at(receiver, path, name)
        return alerts[0] if alerts else None

    return await until(seen, timeout, f"{name} at {path}")


async def _query(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    return await asyncio.to_thread(prometheus.query, expr)


def _health(sidecar: SidecarProcess, accept: str = "application/json") -> Any:
    request = urllib.request.Request(sidecar.url + "/health", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 503 while a check is not ok
        return json.loads(exc.read())


@pytest.fixture
async def app() -> AsyncIterator[Receiver]:
    """The app's webhook endpoint, refusing every delivery."""
    server = Receiver(port=free_port(), default=500)
    await server.start()
    yield server
    await server.close()


async def test_prometheus_sends_high_webhook_error_rate_as_the_sidecar_does(
    telemetry_stack: TelemetryStack,
    prometheus_server: StartPrometheus,
    alertmanager: Alertmanager,
    receiver: Receiver,
    app: Receiver,
    dovecot: Dovecot,
    sidecar_process: Callable[..., SidecarProcess],
    tmp_path: Path,
) -> None:
    service = f"sidecar-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = _config(dovecot, "alice", evaluator="both", evaluator_url=f"http://127.0.0.1:{port}")
    prometheus = await _prometheus_with_rules_of(
        config, service, port, prometheus_server, telemetry_stack, alertmanager, tmp_path
    )
    env = _env(
        telemetry_stack,
        service,
        WEBHOOK_URL=app.url + "/hook",
        ALERT_WEBHOOK_URL=receiver.url + SIDECAR_PATH,
    )
    sidecar = await asyncio.to_thread(sidecar_process, env=env, config=config)
    instance = (await asyncio.to_thread(_health, sidecar, "application/health+json"))["serviceId"]
    await asyncio.to_thread(dovecot.append_many, "alice", _mails("solo", 2))

    own = await _first_alert(receiver, SIDECAR_PATH, ERROR_RATE, 60)
    forwarded = await _first_alert(receiver, RECEIVER_PATH, ERROR_RATE, 60)

    # The collector exposed the sidecar's metrics and Prometheus scraped them, per replica.
    exposed = [
        s for s in samples(telemetry_stack.prometheus_text()) if s.labels.get("job") == service
    ]
    assert {s.labels["instance"] for s in exposed} == {instance}
    scraped = await _query(prometheus, f'webhook_window_deliveries{{job="{service}"}}')
    assert {r["metric"]["instance"] for r in scraped} == {instance}
    # Every exported rule evaluates against the real series without error.
    [group] = (await asyncio.to_thread(prometheus.api, "rules"))["groups"]
    assert [(r["name"], r["health"]) for r in group["rules"] if r["health"] != "ok"] == []

    assert own["labels"] == forwarded["labels"] == {"alertname": ERROR_RATE, "severity": "warning"}
    assert own["fingerprint"] == forwarded["fingerprint"]
    assert own["annotations"]["summary"] == forwarded["annotations"]["summary"]
    held = await asyncio.to_thread(alertmanager.alerts)
    assert [a["fingerprint"] for a in held if a["labels"]["alertname"] == ERROR_RATE] == [
        own["fingerprint"]
    ]
    # A per-replica alert: with evaluator "both" the sidecar labels it as Prometheus does.
    own_alive = await _first_alert(receiver, SIDECAR_PATH, "SidecarAlive", 30)
    forwarded_alive = await _first_alert(receiver, RECEIVER_PATH, "SidecarAlive", 30)
    assert own_alive["labels"] == forwarded_alive["labels"]
    assert own_alive["labels"]["instance"] == instance
    assert own_alive["fingerprint"] == forwarded_alive["fingerprint"]


async def test_two_replicas_each_with_half_the_mail_fire_the_fleet_error_ratio_once(
    telemetry_stack: TelemetryStack,
    prometheus_server: StartPrometheus,
    alertmanager: Alertmanager,
    receiver: Receiver,
    app: Receiver,
    dovecot: Dovecot,
    redis_server: RedisServer,
    sidecar_process: Callable[..., SidecarProcess],
    tmp_path: Path,
) -> None:
    service = f"fleet-{uuid.uuid4().hex[:8]}"
    port = free_port()
    where = f"http://127.0.0.1:{port}"
    configs = {
        user: _config(dovecot, user, evaluator="prometheus", evaluator_url=where)
        for user in ("alice", "bob")
    }
    prometheus = await _prometheus_with_rules_of(
        configs["alice"], service, port, prometheus_server, telemetry_stack, alertmanager, tmp_path
    )
    env = _env(
        telemetry_stack,
        service,
        REDIS_URL=redis_server.url,
        WEBHOOK_URL=app.url + "/hook",
        ALERT_WEBHOOK_URL=receiver.url + SIDECAR_PATH,
    )
    replicas = await asyncio.gather(
        *(asyncio.to_thread(sidecar_process, env=env, config=c, name=u) for u, c in configs.items())
    )
    for user in configs:
        await asyncio.to_thread(dovecot.append_many, user, _mails(user, 2))

    async def firing() -> list[dict[str, Any]]:
        return await _query(prometheus, f'ALERTS{{alertname="{ERROR_RATE}", alertstate="firing"}}')

    await until(firing, 60, f"{ERROR_RATE} firing in Prometheus")
    forwarded = await _first_alert(receiver, RECEIVER_PATH, ERROR_RATE, 30)

    # Both replicas did their half of the work and report it.
    handled = await _query(
        prometheus, f'sum by (instance) (imap_messages_total{{job="{service}"}})'
    )
    assert sorted(float(r["value"][1]) for r in handled) == [2.0, 2.0]
    # One alert for the fleet; the per-replica rule still fires once per replica.
    alive = await _query(prometheus, 'ALERTS{alertname="SidecarAlive", alertstate="firing"}')
    assert len({r["metric"]["instance"] for r in alive}) == 2
    [alert] = await firing()
    labels = {k: v for k, v in alert["metric"].items() if k not in ("__name__", "alertstate")}
    assert labels == forwarded["labels"] == {"alertname": ERROR_RATE, "severity": "warning"}
    held = await asyncio.to_thread(alertmanager.alerts)
    assert len([a for a in held if a["labels"]["alertname"] == ERROR_RATE]) == 1
    # Prometheus evaluates: the replicas send nothing, and say so.
    assert [r.path for r in receiver.requests if r.path == SIDECAR_PATH] == []
    for replica in replicas:
        health = await asyncio.to_thread(_health, replica)
        assert health["alerts"] == {"firing": None, "evaluator": "prometheus",
                                    "evaluator_url": where}  # fmt: skip
