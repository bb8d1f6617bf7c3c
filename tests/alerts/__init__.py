"""Tests of the alert rules, engine and notifiers; helpers shared by them live here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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

T0 = 1_700_000_000.0


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
