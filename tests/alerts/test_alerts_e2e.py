"""The alert engine inside the real `signal-sidecar run` process, against real servers."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.alerts import refused_mail_config, until
from tests.fixtures.alertmanager import RECEIVER_PATH, Alertmanager
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import make_message
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(120)

ZERO_TIME = "0001-01-01T00:00:00Z"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
ALERTS_PATH = "/alerts"


def _closed_collector() -> str:
    """An OTLP endpoint on a loopback port nothing listens on: every export fails."""
    return f"http://127.0.0.1:{free_port()}"


def _env(**extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": _closed_collector(),
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        **extra,
    }


def _config(rule: str, *, extra: str = "") -> str:
    """Short intervals, only the test's rule, and whatever else the test needs."""
    return f"""
[health]
interval = "0.5s"
timeout = "1s"
failures_before_error = 1

[telemetry]
export_interval = "1s"
shutdown_timeout = "0.5s"
{extra}
[alerts]
use_defaults = false

[[alerts.rules]]
{rule}
"""


def _fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint, written out here independently of agent.alerts."""
    value = 0xCBF29CE484222325
    for name in sorted(labels):
        for byte in name.encode() + b"\xff" + labels[name].encode() + b"\xff":
            value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


async def _start(factory: Callable[..., SidecarProcess], **kwargs: Any) -> SidecarProcess:
    """Starts a sidecar off the event loop, so the test's receivers keep answering meanwhile."""
    return await asyncio.to_thread(factory, **kwargs)


async def _get_json(sidecar: SidecarProcess, path: str) -> Any:
    _, body = await asyncio.to_thread(sidecar.get, path)
    return json.loads(body)


def _notifications(receiver: Receiver, path: str = ALERTS_PATH) -> list[dict[str, Any]]:
    return [r.json for r in receiver.requests if r.path == path and r.method == "POST"]


async def _notification(
    receiver: Receiver, status: str, timeout: float, path: str = ALERTS_PATH
) -> dict[str, Any]:
    async def seen() -> dict[str, Any] | None:
        found = [p for p in _notifications(receiver, path) if p and p.get("status") == status]
        return found[0] if found else None

    result: dict[str, Any] = await until(seen, timeout, f"a {status} notification at {path}")
    return result


def _alert(instances: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((a for a in instances["alerts"] if a["alertname"] == name), None)


@pytest.fixture
async def second_receiver() -> AsyncIterator[Receiver]:
    """Another receiver, for when one plays the app and another receives the alerts."""
    server = Receiver(port=free_port())
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def shared_data_dir(tmp_path: Path) -> Path:
    """A data directory (embedded store) that successive sidecar processes share."""
    path = tmp_path / "shared-data"
    path.mkdir()
    return path


REDIS_RULE = """
alert = "RedisDown"
metric = "probe.up"
match = { probe = "redis" }
function = "value"
op = "<"
threshold = 1
for = "2s"
labels = { severity = "critical", team = "mail" }
annotations = { summary = "redis probe at {{ value }}" }
"""


async def test_redis_probe_alert_fires_and_resolves_with_the_collector_down(
    receiver: Receiver,
    redis_server: RedisServer,
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    sidecar = await _start(
        sidecar_process,
        env=_env(REDIS_URL=redis_server.url, ALERT_WEBHOOK_URL=receiver.url + ALERTS_PATH),
        config=_config(REDIS_RULE),
    )
    # Longer than `for`: nothing may go out while redis is up.
    await asyncio.sleep(2.5)
    assert _notifications(receiver) == [], "an alert went out while redis was up"

    await asyncio.to_thread(redis_server.kill)
    killed = time.monotonic()
    firing = await _notification(receiver, "firing", 20)
    notified_after = next(r.time for r in receiver.requests if r.path == ALERTS_PATH) - killed

    assert notified_after >= 2.0, "notified before `for` elapsed (pending must not notify)"
    assert firing["version"] == "4"
    assert firing["groupLabels"] == {"alertname": "RedisDown"}
    [alert] = firing["alerts"]
    assert alert["status"] == "firing"
    expected_labels = {
        "alertname": "RedisDown",
        "probe": "redis",
        "severity": "critical",
        "team": "mail",
    }
    assert alert["labels"] == expected_labels
    assert alert["annotations"] == {"summary": "redis probe at 0"}
    assert RFC3339.match(alert["startsAt"])
    assert alert["endsAt"] == ZERO_TIME
    assert re.fullmatch(r"[0-9a-f]{16}", alert["fingerprint"])
    assert alert["fingerprint"] == _fingerprint(expected_labels)

    listed = _alert(await _get_json(sidecar, "/api/alerts"), "RedisDown")
    assert listed is not None
    assert listed["state"] == "firing"
    assert listed["labels"] == expected_labels
    assert listed["value"] == 0
    health = await _get_json(sidecar, "/health")
    assert health["alerts"]["firing"] == 1

    await asyncio.to_thread(redis_server.start)
    resolved = await _notification(receiver, "resolved", 20)
    [done] = resolved["alerts"]
    assert done["status"] == "resolved"
    assert done["labels"] == expected_labels
    assert done["fingerprint"] == alert["fingerprint"]
    assert done["startsAt"] == alert["startsAt"]
    assert RFC3339.match(done["endsAt"])
    assert done["endsAt"] != ZERO_TIME
    assert done["endsAt"] > done["startsAt"]
    health = await _get_json(sidecar, "/health")
    assert health["alerts"]["firing"] == 0
    statuses = [p["status"] for p in _notifications(receiver)]
    assert statuses == ["firing", "resolved"]


ALWAYS_RULE = """
alert = "SidecarAlive"
metric = "process.memory.usage"
function = "value"
op = ">"
threshold = 0
for = "1s"
labels = { severity = "info", team = "mail", source = "e2e" }
annotations = { summary = "RSS is {{ value }} bytes" }
"""


async def test_alertmanager_forwards_pushed_alerts_with_the_rule_labels(
    receiver: Receiver,
    alertmanager: Alertmanager,
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    await _start(
        sidecar_process,
        env=_env(ALERTMANAGER_URL=alertmanager.url),
        config=_config(ALWAYS_RULE),
    )
    forwarded = await _notification(receiver, "firing", 30, path=RECEIVER_PATH)

    [alert] = [a for a in forwarded["alerts"] if a["labels"]["alertname"] == "SidecarAlive"]
    assert alert["labels"] == {
        "alertname": "SidecarAlive",
        "severity": "info",
        "team": "mail",
        "source": "e2e",
    }
    assert alert["annotations"]["summary"].startswith("RSS is ")
    held: list[Any] = await asyncio.to_thread(alertmanager.alerts)
    assert any(a["labels"].get("alertname") == "SidecarAlive" for a in held)


WEBHOOK_RULE = """
alert = "HighWebhookErrorRate"
metric = "webhook.error_ratio"
function = "value"
op = ">"
threshold = 0.1
for = "2s"
labels = { severity = "warning" }
annotations = { summary = "Webhook error rate {{ value }}" }
"""


def _mails(start: int, count: int) -> list[bytes]:
    return [
        make_message(
            subject=f"Files {n}",
            text=f"Hello,\r\nbatch {n}.",
            message_id=f"<alerts-e2e-{n}@mail.example>",
        )
        for n in range(start, start + count)
    ]


async def test_failing_app_webhook_raises_and_a_recovered_one_resolves_high_error_rate(
    receiver: Receiver,
    second_receiver: Receiver,
    dovecot: Dovecot,
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    app = second_receiver
    app.default = 500
    sidecar = await _start(
        sidecar_process,
        env=_env(WEBHOOK_URL=app.url + "/hook", ALERT_WEBHOOK_URL=receiver.url + ALERTS_PATH),
        config=_config(WEBHOOK_RULE, extra=refused_mail_config(dovecot)),
    )
    await asyncio.to_thread(dovecot.append_many, "alice", _mails(0, 1))

    firing = await _notification(receiver, "firing", 30)
    [alert] = firing["alerts"]
    assert alert["labels"] == {"alertname": "HighWebhookErrorRate", "severity": "warning"}
    assert len(app.requests) >= 1
    health = await _get_json(sidecar, "/health")
    assert health["alerts"]["firing"] == 1
    assert health["metrics"]["error_rate_24h"] > 0.1

    # The ratio is over 24 h, so only successful deliveries bring it down: one failed message
    # leaves two bad records (failed, then dead-lettered), so 20 delivered mails take the ratio
    # to 2/22 < 0.1. Resolution is bounded by the count of mails, not by the clock.
    app.default = 200
    await asyncio.to_thread(dovecot.append_many, "alice", _mails(1, 20))
    resolved = await _notification(receiver, "resolved", 40)
    [done] = resolved["alerts"]
    assert done["fingerprint"] == alert["fingerprint"]
    assert done["endsAt"] != ZERO_TIME
    assert sum(1 for r in app.requests if r.path == "/hook") >= 21
    health = await _get_json(sidecar, "/health")
    assert health["alerts"]["firing"] == 0
    assert health["metrics"]["error_rate_24h"] <= 0.1


APP_RULE = """
alert = "AppDown"
metric = "probe.up"
match = { probe = "http" }
function = "value"
op = "<"
threshold = 1
for = "2s"
labels = { severity = "critical" }
"""


async def test_restart_while_firing_neither_renotifies_nor_loses_the_resolution(
    receiver: Receiver,
    second_receiver: Receiver,
    shared_data_dir: Path,
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    app = second_receiver
    app.default = 500
    env = _env(
        APP_HEALTH_URL=app.url + "/healthz",
        ALERT_WEBHOOK_URL=receiver.url + ALERTS_PATH,
        SIDECAR_DATA_DIR=str(shared_data_dir),
        ENABLE_BACKGROUND_TASKS="false",
        # Metrics reach the engine every second (no blocked OTLP export in between), so a
        # fresh engine would certainly fire and notify again within the wait below.
        OTEL_METRICS_EXPORTER="none",
    )
    config = _config(APP_RULE)
    first = await _start(sidecar_process, env=env, config=config)
    firing = await _notification(receiver, "firing", 20)
    [alert] = firing["alerts"]
    before = _alert(await _get_json(first, "/api/alerts"), "AppDown")
    assert before is not None
    assert before["state"] == "firing"

    await asyncio.to_thread(first.terminate)
    second = await _start(sidecar_process, env=env, config=config)
    # Long enough for a fresh engine to go pending -> firing (for = 2s) and notify again.
    await asyncio.sleep(5.0)
    after = _alert(await _get_json(second, "/api/alerts"), "AppDown")
    assert after is not None
    assert after["state"] == "firing"
    assert after["fired_at"] == before["fired_at"]
    assert after["since"] == before["since"]
    assert (await _get_json(second, "/health"))["alerts"]["firing"] == 1
    assert [p["status"] for p in _notifications(receiver)] == ["firing"], "re-notified at once"

    app.default = 200
    resolved = await _notification(receiver, "resolved", 20)
    [done] = resolved["alerts"]
    assert done["fingerprint"] == alert["fingerprint"]
    assert done["startsAt"] == alert["startsAt"]
    assert done["endsAt"] != ZERO_TIME
    assert [p["status"] for p in _notifications(receiver)] == ["firing", "resolved"]


STEADY_RULE = """
alert = "SteadyCondition"
metric = "process.memory.usage"
function = "value"
op = ">"
threshold = 0
no_data = "ok"
labels = { severity = "info" }
"""


async def test_a_steady_alert_does_not_flap_while_the_collector_is_down(
    receiver: Receiver, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    await _start(
        sidecar_process,
        env=_env(ALERT_WEBHOOK_URL=receiver.url + ALERTS_PATH, ENABLE_BACKGROUND_TASKS="false"),
        config=_config(STEADY_RULE),
    )
    await _notification(receiver, "firing", 20)
    # Exports are due every second; the series is stale only after three missed exports.
    await asyncio.sleep(12.0)
    assert [p["status"] for p in _notifications(receiver)] == ["firing"]


async def test_rules_are_evaluated_at_the_interval_otel_metric_export_interval_sets(
    receiver: Receiver, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    config = f"""
[alerts]
use_defaults = false

[[alerts.rules]]
{ALWAYS_RULE}
"""
    await _start(
        sidecar_process,
        env=_env(ALERT_WEBHOOK_URL=receiver.url + ALERTS_PATH, ENABLE_BACKGROUND_TASKS="false"),
        config=config,
    )
    started = time.monotonic()
    await _notification(receiver, "firing", 10)
    # Exports every 1 s, for = 1s: a few seconds, not the 15 s default interval twice over.
    assert time.monotonic() - started < 8.0
