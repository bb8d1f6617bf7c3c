"""Tests of the alert rules, engine and notifiers; helpers shared by them live here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.alerts.engine import AlertEngine
from agent.alerts.notifiers import Notifier
from agent.alerts.rules import AlertConfig, load_alert_config
from agent.store.base import Store
from agent.telemetry.catalogue import Instruments
from tests.fixtures.receiver import Receiver
from tests.support.components import ROOT

if TYPE_CHECKING:
    from tests.fixtures.dovecot import Dovecot

T0 = 1_700_000_000.0
T = TypeVar("T")


class FakeClock:
    """A settable clock: call it for the time, assign .now to move it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordingLogger:
    """Keeps (level, event, fields) of every call, as a structlog logger would emit them."""

    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(("error", event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        """The fields of every event with that name."""
        return [kw for _, name, kw in self.events if name == event]


class Telemetry:
    """A real MeterProvider with an in-memory reader, the catalogue's instruments, and gauges
    whose values tests set directly."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.instruments = Instruments(self.provider.get_meter("test"))
        self.gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self.spans = InMemorySpanExporter()
        tracing = TracerProvider()
        tracing.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer = tracing.get_tracer("test")

    def set_gauge(self, name: str, value: float | None, **attributes: str) -> None:
        """Sets (or with None removes) one series of an observable gauge of the catalogue."""
        if name not in self.gauges:
            values = self.gauges[name] = {}

            def source(
                values: dict[tuple[tuple[str, str], ...], float] = values,
            ) -> Iterable[Observation]:
                return [Observation(v, dict(k)) for k, v in values.items()]

            self.instruments.publish(name, source)
        key = tuple(sorted(attributes.items()))
        if value is None:
            self.gauges[name].pop(key, None)
        else:
            self.gauges[name][key] = value

    def collect(self) -> MetricsData:
        """One collection, as the exporter would receive it."""
        data = self.reader.get_metrics_data()
        assert data is not None
        return data

    def points(self, metric: str) -> list[tuple[dict[str, Any], float]]:
        """The (attributes, value) points of one metric in a fresh collection."""
        found = []
        for resource in self.collect().resource_metrics:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found += [(dict(p.attributes or {}), p.value) for p in m.data.data_points]
        return found


def config(rules: Sequence[Mapping[str, Any]], **top: Any) -> AlertConfig:
    """Only the given rules (no defaults), evaluation every 15 s."""
    raw = {"use_defaults": False, "rules": list(rules), **top}
    return load_alert_config(raw, source="test.toml", default_interval=15.0)


def engine(
    cfg: AlertConfig,
    telemetry: Telemetry,
    store: Store,
    clock: FakeClock,
    notifiers: Sequence[Notifier] = (),
    logger: RecordingLogger | None = None,
    instance_labels: Mapping[str, str] | None = None,
) -> AlertEngine:
    """An engine on real telemetry objects and a real store."""
    return AlertEngine(
        cfg,
        store=store,
        notifiers=notifiers,
        instruments=telemetry.instruments,
        tracer=telemetry.tracer,
        logger=logger or RecordingLogger(),
        clock=clock,
        external_url="http://sidecar.example:8080",
        instance_labels=instance_labels,
    )


async def step(alerts: AlertEngine, telemetry: Telemetry, clock: FakeClock, at: float) -> list[Any]:
    """Moves the clock to T0 + at, feeds one export, evaluates, and waits for notifications."""
    clock.now = T0 + at
    alerts.on_metrics(telemetry.collect())
    result = await alerts.evaluate()
    await alerts.flush(grace=10.0)
    return result


async def resolve_while_receiver_down(
    alerts: AlertEngine, telemetry: Telemetry, clock: FakeClock, receiver: Receiver
) -> None:
    """The memory alert fires at T0 (notified), then resolves at T0 + 15 with the receiver down."""
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", 0.1)
    receiver.default = 503
    await step(alerts, telemetry, clock, 15)


def run_export(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`signal-sidecar alerts export ARGS` in a clean environment (PATH and HOME, plus env)."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [sys.executable, "-m", "agent", "alerts", "export", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**clean, **(env or {})},
    )  # fmt: skip


def refused_mail_config(dovecot: Dovecot, user: str = "alice") -> str:
    """One mailbox polled every 0.5 s; one attempt per message and per webhook, so a refused
    webhook is recorded as a failure at once."""
    box = dovecot.settings(user)
    return f"""
[imap]
max_attempts = 1
timeout = "5s"

[webhook]
max_attempts = 1
retry_budget = "1s"
backoff_initial = "0.1s"
backoff_max = "0.2s"
timeout = "2s"

[[mailboxes]]
name = "{user}"
host = "{box.host}"
port = {box.port}
username = "{box.username}"
password = "{box.password}"
tls = "none"
poll_interval = "0.5s"
"""


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS`, bounded in time."""
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )


async def until(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    """Polls an async check until it returns something truthy, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen in {timeout}s (last: {str(last)[:800]})")
