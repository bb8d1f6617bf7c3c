"""Connects the alert engine to the metric tee, the store, the notifiers and the CLI."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agent.alerts.engine import AlertEngine
from agent.alerts.notifiers import AlertmanagerNotifier, Notifier, WebhookNotifier, send_test
from agent.alerts.rules import AlertConfig, load_alert_config
from agent.config import Settings
from agent.telemetry.logs import get_logger

if TYPE_CHECKING:
    from agent.runtime import Sidecar


def alert_config(settings: Settings, env: Mapping[str, str] | None = None) -> AlertConfig:
    """The validated [alerts] table (defaults when absent)."""
    return load_alert_config(
        settings.alerts, source=settings.source, default_interval=export_interval(settings, env)
    )


def export_interval(settings: Settings, env: Mapping[str, str] | None = None) -> float:
    """The metric export interval the reader really uses: OTEL_METRIC_EXPORT_INTERVAL (ms) wins.

    The engine's default evaluation interval and its staleness follow the exports, so they must
    read the same source as agent.telemetry.setup, not only [telemetry] export_interval.
    """
    env = os.environ if env is None else env
    try:
        millis = float(env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip() or 0)
    except ValueError:
        millis = 0.0
    return millis / 1000.0 if millis > 0 else float(settings.telemetry.export_interval)


def notifiers_for(settings: Settings, *, evaluation_interval: float = 0.0) -> list[Notifier]:
    """One notifier per configured destination (none: alerts are only logged)."""
    external = f"http://{settings.server.host}:{settings.server.port}"
    notifiers: list[Notifier] = []
    if settings.alerting.webhook_url:
        notifiers.append(WebhookNotifier(settings.alerting.webhook_url, external_url=external))
    if settings.alerting.alertmanager_url:
        notifiers.append(
            AlertmanagerNotifier(
                settings.alerting.alertmanager_url, evaluation_interval=evaluation_interval
            )
        )
    return notifiers


async def start_alert_engine(sidecar: Sidecar) -> None:
    """Builds the engine, restores its state, tees the metric exporter into it, and runs it."""
    settings = sidecar.settings
    config = alert_config(settings)
    telemetry = sidecar.telemetry
    engine = AlertEngine(
        config,
        store=sidecar.store,
        notifiers=notifiers_for(settings, evaluation_interval=config.evaluation_interval),
        instruments=telemetry.instruments,
        tracer=telemetry.tracer("agent.alerts"),
        logger=get_logger("alerts"),
        external_url=f"http://{settings.server.host}:{settings.server.port}",
    )
    telemetry.add_metric_listener(engine.on_metrics)
    sidecar.components["alerts"] = engine
    sidecar.health_sources.alerts_firing = engine.firing_count

    async def stop() -> None:
        telemetry.remove_metric_listener(engine.on_metrics)
        engine.close()

    sidecar.on_stop(stop)
    sidecar.spawn(engine.run(sidecar.stopping), "alerts")


async def send_test_notifications(settings: Settings) -> int:
    """`signal-sidecar alerts test`: one test alert through every notifier; 0 when all succeed."""
    notifiers = notifiers_for(settings)
    if not notifiers:
        print("no notifier configured: set ALERT_WEBHOOK_URL or ALERTMANAGER_URL")
        return 1
    deliveries = await asyncio.wait_for(send_test(notifiers), timeout=120)
    for delivery in deliveries:
        verdict = "ok" if delivery.ok else f"failed: {delivery.error}"
        print(
            f"{delivery.notifier}: {verdict} (attempts {delivery.attempts}, "
            f"status {delivery.status})"
        )
    return 0 if all(d.ok for d in deliveries) else 1
