"""Which background components a sidecar starts, decided from the settings, and how they connect."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.config import Settings
from agent.pipeline.delivery_stats import DeliveryStats
from agent.pipeline.links import LinkRegistry
from agent.pipeline.poller import MailboxPoller, pollers_status
from agent.pipeline.process import EmailProcessor
from agent.pipeline.replicas import Replicas, holder_id, this_process
from agent.pipeline.webhook import WebhookClient
from agent.runtime import Sidecar, StartHook

if TYPE_CHECKING:
    from agent.pipeline.r2 import TransferClient


def start_components(settings: Settings) -> list[StartHook]:
    """The start hooks for this configuration, in start order."""
    # The alert engine starts before the pipeline, so it sees every series from its start.
    hooks: list[StartHook] = [start_delivery_stats, start_alerts]
    if settings.server.enable_background_tasks and settings.mailboxes:
        hooks.append(start_pipeline)
    return hooks


async def start_delivery_stats(sidecar: Sidecar) -> None:
    """The 24 h webhook window behind /health's metrics block and the webhook gauges."""
    stats = DeliveryStats(
        sidecar.store, sidecar.telemetry.instruments, active=lambda: _active_webhooks(sidecar)
    )
    await stats.refresh()
    sidecar.components.delivery_stats = stats
    sidecar.health_sources.deliveries = stats.health
    sidecar.spawn(
        stats.run(sidecar.stopping, min(15.0, sidecar.settings.health.interval)), "delivery-stats"
    )


def _active_webhooks(sidecar: Sidecar) -> int:
    webhook = sidecar.components.webhook
    return webhook.active if webhook is not None else 0


async def start_pipeline(sidecar: Sidecar) -> None:
    """One poller per mailbox, sharing a processor, a webhook client and the R2 client."""
    settings = sidecar.settings
    telemetry = sidecar.telemetry
    if sidecar.http is None:
        raise RuntimeError("start_pipeline() runs from Sidecar.start(), after the HTTP session")
    tracer = telemetry.tracer("agent.pipeline")
    webhook = WebhookClient(
        settings.webhook,
        session=sidecar.http,
        tracer=tracer,
        instruments=telemetry.instruments,
        store=sidecar.store,
        masker=telemetry.masker,
        processed_ttl=settings.store.processed_ttl,
        stopping=sidecar.stopping,
    )
    sidecar.components.webhook = webhook
    transfers = _transfers(sidecar)
    processor = EmailProcessor(
        settings,
        store=sidecar.store,
        tracer=tracer,
        instruments=telemetry.instruments,
        webhook=webhook,
        links=LinkRegistry(settings.links),
        transfers=transfers,
    )
    from agent.alerts.wiring import take_metric_baseline

    await take_metric_baseline(sidecar)
    identity = await asyncio.to_thread(this_process, holder_id())
    replicas = Replicas(
        sidecar.store,
        identity,
        mailboxes=len(settings.mailboxes),
        interval=min(box.poll_interval for box in settings.mailboxes),
        lease_ttl=settings.imap.lease_ttl,
    )
    pollers = [
        MailboxPoller(
            box,
            settings,
            replicas=replicas,
            store=sidecar.store,
            tracer=tracer,
            instruments=telemetry.instruments,
            processor=processor,
            tokens=sidecar.tokens.get(box),
        )
        for box in settings.mailboxes
    ]
    sidecar.components.pollers = pollers
    sidecar.components.replicas = replicas
    await replicas.beat()
    sidecar.spawn(replicas.run(sidecar.stopping), "replica-heartbeat")
    # Runs after the pollers drained and released their leases: the others recount at once.
    sidecar.on_stop(replicas.leave)
    for poller in pollers:
        sidecar.liveness_hooks[f"poller:{poller.mailbox.name}"] = poller.liveness
        task = sidecar.spawn(
            poller.run(sidecar.stopping), f"poller:{poller.mailbox.name}", drain=True
        )
        poller.watch(task, sidecar.stopping)
    sidecar.health_sources.poller = lambda: pollers_status(pollers, replicas.holder)


def _transfers(sidecar: Sidecar) -> TransferClient | None:
    if not sidecar.settings.r2.fetch_endpoint:
        return None
    from agent.pipeline.r2 import TransferClient

    client = TransferClient(sidecar.settings, telemetry=sidecar.telemetry)
    sidecar.components.transfers = client
    sidecar.on_stop(client.close)
    return client


async def start_alerts(sidecar: Sidecar) -> None:
    """The alert engine, fed by the metric exporter's tee (wired once the engine exists)."""
    from agent.alerts.wiring import start_alert_engine

    await start_alert_engine(sidecar)
