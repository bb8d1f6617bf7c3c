"""Which background components a sidecar starts, decided from the settings, and how they connect."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from typing import Any

from agent.config import Settings
from agent.pipeline.delivery_stats import DeliveryStats
from agent.pipeline.links import LinkRegistry
from agent.pipeline.poller import REPLICA_PREFIX, MailboxPoller, fair_share
from agent.pipeline.process import EmailProcessor
from agent.pipeline.webhook import WebhookClient
from agent.runtime import Sidecar, StartHook
from agent.store.base import StoreError


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
    sidecar.components["delivery_stats"] = stats
    sidecar.health_sources.deliveries = stats.health
    sidecar.spawn(
        stats.run(sidecar.stopping, min(15.0, sidecar.settings.health.interval)), "delivery-stats"
    )


def _active_webhooks(sidecar: Sidecar) -> int:
    webhook = sidecar.components.get("webhook")
    return int(webhook.active) if isinstance(webhook, WebhookClient) else 0


def replica_id() -> str:
    """A holder id unique to this process (pod name or host, pid, random suffix)."""
    base = os.environ.get("K8S_POD_NAME") or socket.gethostname()
    return f"{base}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
    )
    sidecar.components["webhook"] = webhook
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
    holder = replica_id()
    pollers = [
        MailboxPoller(
            box,
            settings,
            holder=holder,
            store=sidecar.store,
            tracer=tracer,
            instruments=telemetry.instruments,
            processor=processor,
        )
        for box in settings.mailboxes
    ]
    sidecar.components["pollers"] = pollers
    replicas = _Replicas(
        sidecar, holder, interval=min(box.poll_interval for box in settings.mailboxes)
    )
    await replicas.beat()
    sidecar.spawn(replicas.run(), "replica-heartbeat")

    def share() -> int:
        return fair_share(len(pollers), replicas.count)

    for poller in pollers:
        sidecar.liveness_hooks[f"poller:{poller.mailbox.name}"] = poller.liveness
        sidecar.spawn(
            poller.run(sidecar.stopping, share), f"poller:{poller.mailbox.name}", drain=True
        )
    sidecar.poller_status = lambda: _poller_status(pollers)


def _transfers(sidecar: Sidecar) -> Any:
    if not sidecar.settings.r2.fetch_endpoint:
        return None
    from agent.pipeline.r2 import TransferClient

    client = TransferClient(sidecar.settings, telemetry=sidecar.telemetry)
    sidecar.components["r2"] = client
    sidecar.on_stop(client.close)
    return client


def _poller_status(pollers: list[MailboxPoller]) -> dict[str, Any]:
    boxes = {p.mailbox.name: p.status() for p in pollers}
    statuses = [b["status"] for b in boxes.values()]
    if "stalled" in statuses:
        overall = "stalled"
    elif "error" in statuses:
        overall = "error"
    elif "ok" in statuses:
        overall = "ok"
    else:
        overall = "standby"
    checks = [b["last_check"] for b in boxes.values() if b["last_check"]]
    successes = [b["last_success"] for b in boxes.values() if b["last_success"]]
    return {
        "status": overall,
        "lock_acquired": any(b["lock_acquired"] for b in boxes.values()),
        "leader": any(b["leader"] for b in boxes.values()),
        "last_check": max(checks) if checks else None,
        "last_success": max(successes) if successes else None,
        "mailboxes": boxes,
    }


class _Replicas:
    """Heartbeats this replica and counts live ones, so each takes at most its fair share."""

    def __init__(self, sidecar: Sidecar, holder: str, *, interval: float) -> None:
        self._sidecar = sidecar
        self._holder = holder
        self._interval = max(1.0, min(interval, sidecar.settings.imap.lease_ttl / 3))
        self.count = 1

    async def beat(self) -> None:
        store = self._sidecar.store
        now = time.time()
        with contextlib.suppress(StoreError):
            await store.heartbeat(REPLICA_PREFIX + self._holder, now)
            beats = await store.heartbeats(REPLICA_PREFIX)
            horizon = now - 3 * self._interval
            self.count = max(1, sum(1 for b in beats.values() if float(b.get("at", 0)) >= horizon))

    async def run(self) -> None:
        stop = self._sidecar.stopping
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)


async def start_alerts(sidecar: Sidecar) -> None:
    """The alert engine, fed by the metric exporter's tee (wired once the engine exists)."""
    from agent.alerts.wiring import start_alert_engine

    await start_alert_engine(sidecar)
