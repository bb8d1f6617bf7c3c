"""The running sidecar: builds every part from the settings, starts them, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from agent import __version__
from agent.config import Settings
from agent.health.base import Probe, ProbeContext
from agent.health.liveness import Lifecycle, LivenessHook, LoopWatchdog
from agent.health.probes import PROBES
from agent.health.registry import CheckSpec, HealthRegistry
from agent.health.report import HealthSources
from agent.pipeline.oauth import TokenSources
from agent.store.base import Store
from agent.store.factory import open_store
from agent.telemetry.host_metrics import ResourceSampler
from agent.telemetry.logs import get_logger
from agent.telemetry.setup import Telemetry

if TYPE_CHECKING:
    from agent.alerts.engine import AlertEngine
    from agent.pipeline.delivery_stats import DeliveryStats
    from agent.pipeline.poller import MailboxPoller
    from agent.pipeline.r2 import TransferClient
    from agent.pipeline.replicas import Replicas
    from agent.pipeline.webhook import WebhookClient

# A component is anything started with the sidecar and stopped when it drains.
StartHook = Callable[["Sidecar"], Awaitable[None]]
StopHook = Callable[[], Awaitable[None]]


@dataclass
class Components:
    """The parts start hooks built (None or empty when this configuration has none)."""

    delivery_stats: DeliveryStats | None = None
    webhook: WebhookClient | None = None
    transfers: TransferClient | None = None
    pollers: list[MailboxPoller] = field(default_factory=list)
    replicas: Replicas | None = None
    alerts: AlertEngine | None = None


class Sidecar:
    """Owns the store, health checks, sampler and background tasks; the web app reads from it."""

    def __init__(self, settings: Settings, telemetry: Telemetry, *, store: Store | None = None):
        self.settings = settings
        self.telemetry = telemetry
        self.store: Store = store if store is not None else open_store(settings)
        self.lifecycle = Lifecycle()
        self.watchdog = LoopWatchdog()
        self.liveness_hooks: dict[str, LivenessHook] = {}
        self.log = get_logger("app")
        self.http: aiohttp.ClientSession | None = None
        # OAuth access tokens of the mailboxes, shared by the pollers and the IMAP probe.
        self.tokens = TokenSources(
            settings.mailboxes,
            settings.imap,
            instruments=telemetry.instruments,
            remember=telemetry.masker.remember,
        )
        self.probe_context = ProbeContext(
            settings=settings,
            store=self.store,
            exports=telemetry.exports,
            tokens=self.tokens,
            certificates=telemetry.instruments.certificates,
        )
        trace_probes = settings.health.trace_probes
        self.registry = HealthRegistry(
            self.probe_context,
            masker=telemetry.masker,
            instruments=telemetry.instruments,
            tracer=telemetry.tracer("agent.health") if trace_probes else None,
            history=settings.health.history,
        )
        self.sampler = ResourceSampler(
            telemetry.instruments, settings.server.data_dir, settings.telemetry.sampler_interval
        )
        self.health_sources = HealthSources(
            registry=self.registry,
            lifecycle=self.lifecycle,
            version=__version__,
            instance_id=str(telemetry.resource.attributes.get("service.instance.id", "")),
            memory=self._memory,
            required=list(settings.health.required),
            certificates=telemetry.instruments.certificates.health,
        )
        self.health_sources.poller = self._poller_status
        self.components = Components()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_hooks: list[StopHook] = []
        self._draining: list[asyncio.Task[None]] = []
        self._register_checks()

    def _register_checks(self) -> None:
        for name, probe in PROBES.items():
            self.add_check(name, probe)

    def add_check(self, name: str, probe: Probe, *, interval: float | None = None) -> None:
        """Registers a check with the configured harness settings."""
        health = self.settings.health
        self.registry.add(
            CheckSpec(
                name=name,
                probe=probe,
                interval=interval or health.interval,
                timeout=health.timeout,
                required=name in health.required,
                failures_before_error=health.failures_before_error,
                successes_before_ok=health.successes_before_ok,
            )
        )

    def _memory(self) -> dict[str, Any] | None:
        latest = self.sampler.latest
        if latest is None:
            return None
        keys = ("rss_mb", "vms_mb", "percent", "available_mb", "limit_mb")
        return {key: latest.get(key) for key in keys}

    def _poller_status(self) -> dict[str, Any]:
        # Until the pipeline replaces it: why no poller runs (yet).
        if not self.settings.server.enable_background_tasks:
            status = "disabled"
        elif not self.settings.mailboxes:
            status = "not_configured"
        else:
            status = "starting"
        return {
            "status": status,
            "lock_acquired": False,
            "leader": False,
            "last_check": None,
            "last_success": None,
        }

    def spawn(self, coro: Awaitable[None], name: str, *, drain: bool = False) -> asyncio.Task[None]:
        """Runs a background task; on stop a `drain` task may finish its work (it watches
        `stopping`) until the drain deadline, the others are cancelled at once."""
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        (self._draining if drain else self._tasks).append(task)
        return task

    def on_stop(self, hook: StopHook) -> None:
        """Registers a coroutine run while draining (last registered runs first)."""
        self._stop_hooks.append(hook)

    @property
    def stopping(self) -> asyncio.Event:
        """Set once draining has begun."""
        return self._stop

    async def start(self, extra: list[StartHook] | None = None) -> None:
        """Opens the store and starts checks, sampler, watchdog and extra components."""
        self.http = aiohttp.ClientSession()
        self.probe_context.http = self.http
        try:
            await self.store.start()
        except Exception as exc:  # the store's own errors are already masked StoreErrors
            # A store that is down at start is a health problem, not a crash: checks report it.
            self.log.error("store.start_failed", error=str(exc), backend=self.store.backend)
        await asyncio.to_thread(self.sampler.sample_once)
        self.spawn(self.sampler.run(), "sampler")
        self.spawn(self.watchdog.run(self._stop), "loop-watchdog")
        for hook in extra or []:
            await hook(self)
        await self.registry.start()
        self.lifecycle.startup_done = True
        self.log.info(
            "sidecar.started",
            version=__version__,
            store=self.store.backend,
            mailboxes=len(self.settings.mailboxes),
            background_tasks=self.settings.server.enable_background_tasks,
        )

    def begin_drain(self) -> None:
        """Readiness fails from now on; background loops see the stop event."""
        if not self.lifecycle.draining:
            self.lifecycle.draining = True
            self._stop.set()
            self.log.info("sidecar.draining")

    async def stop(self, deadline: float) -> None:
        """Drains in-flight work until the monotonic deadline, then stops everything."""
        self.begin_drain()
        if self._draining:
            # Pollers finish the batch in hand (its outcomes and watermark are recorded).
            _done, pending = await asyncio.wait(
                self._draining, timeout=max(0.0, deadline - time.monotonic())
            )
            self._tasks.extend(pending)
        for hook in reversed(self._stop_hooks):
            remaining = max(0.1, deadline - time.monotonic())
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(hook(), timeout=remaining)
        await self.registry.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        webhook = self.components.webhook
        if webhook is not None:
            # A webhook request already sent may have been taken by the app: its answer is
            # awaited and recorded even past the drain deadline, or the next process would
            # send the mail again. Bounded by the request's own timeout and one store write.
            unfinished = await webhook.finish(
                self.settings.webhook.timeout + self.settings.store.timeout
            )
            if unfinished:
                self.log.warning("sidecar.webhooks_cut_off", count=unfinished)
            # Answers the store missed during an outage: recorded now, or sent again later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    webhook.record_unrecorded(), timeout=2 * self.settings.store.timeout
                )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.store.close(), timeout=max(0.1, deadline - time.monotonic())
            )
        with contextlib.suppress(Exception):
            await self.tokens.close()
        if self.http is not None:
            await self.http.close()
        self.log.info("sidecar.stopped", cancelled=sum(1 for t in self._tasks if t.cancelled()))
