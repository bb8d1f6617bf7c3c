"""Expiry warnings in a real sidecar: a Dovecot certificate 2 days from expiry, a failing login."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.alerts.notifiers import WebhookNotifier
from agent.alerts.rules import load_alert_config
from agent.retry import Backoff
from agent.store.local import LocalStore
from tests.alerts import FakeClock, Telemetry, engine, step
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., SidecarProcess]


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first truthy result of check(), polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s")


def firing(receiver: Receiver, name: str) -> list[dict[str, Any]]:
    """Firing alerts of that name in the notifications the receiver got."""
    return [
        alert
        for request in receiver.requests
        if request.method == "POST" and request.json
        for alert in request.json.get("alerts", [])
        if alert["labels"].get("alertname") == name and alert["status"] == "firing"
    ]


async def test_a_dovecot_certificate_expiring_in_two_days_fires_critical_and_shows_in_health(
    dovecot_tls: Dovecot, receiver: Receiver, sidecar_process: Start
) -> None:
    env = {
        **dovecot_tls.env("alice"),
        "IMAP_PORT": str(dovecot_tls.tls_port),
        "IMAP_TLS": "ssl",
        "SSL_CERT_FILE": str(dovecot_tls.cert_path),
        "ALERT_WEBHOOK_URL": receiver.url + "/alerts",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    sidecar = await asyncio.to_thread(sidecar_process, env=env)

    alerts = await until(
        lambda: (
            len(firing(receiver, "CertificateExpiresSoon")) >= 2
            and firing(receiver, "CertificateExpiresSoon")
        ),
        40,
        "CertificateExpiresSoon, warning and critical",
    )
    by_severity = {a["labels"]["severity"]: a for a in alerts}
    assert set(by_severity) == {"warning", "critical"}
    critical = by_severity["critical"]
    assert critical["labels"] == {
        "alertname": "CertificateExpiresSoon",
        "severity": "critical",
        "server_address": "127.0.0.1",
        "server_port": str(dovecot_tls.tls_port),
        "tls_endpoint": "imap",
    }
    assert critical["annotations"]["summary"].startswith(
        f"The certificate of imap at 127.0.0.1:{dovecot_tls.tls_port} expires in 1d 23h "
    )

    _, health = await asyncio.to_thread(sidecar.get_json, "/health")
    (certificate,) = health["certificates"]
    assert certificate["endpoint"] == "imap"
    assert certificate["server"] == f"127.0.0.1:{dovecot_tls.tls_port}"
    assert certificate["status"] == "critical"
    assert 1.99 <= certificate["days_left"] <= 2.0
    _, draft = await asyncio.to_thread(
        sidecar.get_json, "/health", {"Accept": "application/health+json"}
    )
    (check,) = draft["checks"]["certificate:expiry"]
    assert (check["status"], check["observedUnit"]) == ("warn", "d")
    assert check["output"] == "certificate critical"


async def test_the_default_mailbox_auth_rule_fires_after_ten_minutes_of_failing_logins(
    receiver: Receiver, store: LocalStore
) -> None:
    telemetry, clock = Telemetry(), FakeClock()
    rules = load_alert_config({}, source="test.toml", default_interval=15.0)
    notifier = WebhookNotifier(
        receiver.url + "/hook", timeout=5.0, max_attempts=2, backoff=Backoff(0.05, 0.1)
    )
    alerts = engine(rules, telemetry, store, clock, [notifier])
    labels = {"imap.mailbox": "support", "imap.auth": "xoauth2"}
    telemetry.set_gauge("imap.login.failing", 1, **labels)

    await step(alerts, telemetry, clock, 0)
    await step(alerts, telemetry, clock, 599)
    assert firing(receiver, "MailboxAuthFailing") == []
    await step(alerts, telemetry, clock, 601)

    (alert,) = firing(receiver, "MailboxAuthFailing")
    assert alert["labels"] == {
        "alertname": "MailboxAuthFailing",
        "imap_mailbox": "support",
        "imap_auth": "xoauth2",
        "severity": "critical",
    }
    assert alert["annotations"]["summary"] == "Mailbox support cannot log in (xoauth2) for 10m"


async def test_a_refused_password_makes_mailbox_auth_failing_pending_with_its_labels(
    dovecot: Dovecot, sidecar_process: Start
) -> None:
    env = {
        **dovecot.env("alice"),
        "IMAP_PASSWORD": "not-alices-password",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    sidecar = await asyncio.to_thread(sidecar_process, env=env)

    def pending() -> list[dict[str, Any]]:
        _, alerts = sidecar.get_json("/api/alerts")
        return [a for a in alerts["alerts"] if a["alertname"] == "MailboxAuthFailing"]

    (alert,) = await until(pending, 30, "MailboxAuthFailing")
    assert alert["state"] == "pending"  # for 10m, which the engine test above covers
    assert alert["labels"] == {
        "alertname": "MailboxAuthFailing",
        "imap_mailbox": "default",
        "imap_auth": "password",
        "severity": "critical",
    }
