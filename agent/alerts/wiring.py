"""Connects the alert engine to the metric tee, the store, the notifiers and the CLI."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from agent.alerts import promnames
from agent.alerts.engine import AlertEngine
from agent.alerts.notifiers import AlertmanagerNotifier, Notifier, WebhookNotifier, send_test
from agent.alerts.payload import strip_userinfo
from agent.alerts.rules import AlertConfig, load_alert_config
from agent.config import Settings
from agent.telemetry.logs import get_logger
from agent.telemetry.masking import Masker

if TYPE_CHECKING:
    from agent.runtime import Sidecar


def alert_config(settings: Settings, export_interval: float | None = None) -> AlertConfig:
    """The validated [alerts] table (defaults when absent).

    The default evaluation interval and the staleness follow the real metric export interval
    (OTEL_METRIC_EXPORT_INTERVAL wins over [telemetry] export_interval), which the running
    telemetry reports.
    """
    interval = settings.telemetry.export_interval if export_interval is None else export_interval
    return load_alert_config(settings.alerts, source=settings.source, default_interval=interval)


def external_url(settings: Settings) -> str:
    """How operators reach this sidecar, for externalURL and generatorURL.

    `run` puts the port it actually bound into the settings (also for --port and port 0); a
    command that listens on nothing, with port 0 configured, names no port.
    """
    if settings.alerting.external_url:
        return settings.alerting.external_url.rstrip("/")
    host = settings.server.host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    port = settings.server.port
    return f"http://{host}:{port}" if port else f"http://{host}"


def notifiers_for(settings: Settings, *, evaluation_interval: float = 0.0) -> list[Notifier]:
    """One notifier per configured destination (none: alerts are only logged)."""
    external = external_url(settings)
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


def evaluator_view(config: AlertConfig, masker: Masker) -> dict[str, str]:
    """Who evaluates the rules and where, as /health, /api/alerts and the dashboard show it
    (the URL without credentials, token parameters masked)."""
    view: dict[str, str] = {"evaluator": config.evaluator}
    if config.evaluator_url:
        view["evaluator_url"] = masker.mask_url(strip_userinfo(config.evaluator_url))
    return view


async def start_alert_engine(sidecar: Sidecar) -> None:
    """Builds the engine, restores its state, tees the metric exporter into it, and runs it.

    With evaluator "prometheus" there is no engine: the metrics are exported as always and
    Prometheus evaluates the exported rules, so this sidecar sends no notifications.
    """
    settings = sidecar.settings
    config = alert_config(settings, sidecar.telemetry.export_interval)
    telemetry = sidecar.telemetry
    where = evaluator_view(config, telemetry.masker)
    sidecar.health_sources.alerts_evaluator = where
    if config.evaluator == "prometheus":
        sidecar.health_sources.alerts_firing = lambda: None
        get_logger("alerts").info("alerts.evaluated_elsewhere", **where)
        return
    instance = None
    if config.evaluator == "both":
        instance = promnames.instance_labels(telemetry.resource.attributes)
    engine = AlertEngine(
        config,
        store=sidecar.store,
        notifiers=notifiers_for(settings, evaluation_interval=config.evaluation_interval),
        instruments=telemetry.instruments,
        tracer=telemetry.tracer("agent.alerts"),
        logger=get_logger("alerts"),
        external_url=external_url(settings),
        instance_labels=instance,
    )
    telemetry.add_metric_listener(engine.on_metrics)
    sidecar.components.alerts = engine
    sidecar.health_sources.alerts_firing = engine.firing_count

    async def stop() -> None:
        telemetry.remove_metric_listener(engine.on_metrics)
        engine.close()

    sidecar.on_stop(stop)
    sidecar.spawn(engine.run(sidecar.stopping), "alerts")


async def take_metric_baseline(sidecar: Sidecar, flush_seconds: float = 1.0) -> None:
    """Collects the metrics once now, so the alert engine holds every series at its start value.

    The pipeline creates its dead-letter and transfer series at zero; read before any mail can
    move them, the first dead letter is an increase even when it comes within the first export
    interval. The tee runs during the collection; sending it on is bounded by `flush_seconds`.
    """
    if sidecar.components.alerts is None:
        return
    await asyncio.to_thread(sidecar.telemetry.meter_provider.force_flush, flush_seconds * 1000)


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
