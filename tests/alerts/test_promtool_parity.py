"""The same synthetic series through `promtool test rules` and through the sidecar's engine.

Each scenario feeds one replica's metrics, a sample a minute, to the sidecar's alert engine
(as the metric tee would, as OTel MetricsData) and, as the collector's exporter would serve them,
to promtool running the exported rules. What the engine fires at each step becomes promtool's
expectation at that step, for every rule: same alerts, labels, severities and annotations.
Where Prometheus differs by design, the step is listed in DIFFERENCES with the reason (and in
docs/alerting.md); the sidecar's side of it is asserted too, so the list cannot go stale.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from agent.alerts import promnames
from agent.alerts.engine import AlertEngine
from agent.alerts.export import DIFFERENCES as NOTES
from agent.alerts.export import export
from agent.alerts.payload import AlertInstance
from agent.alerts.promql import duration, translate
from agent.alerts.rules import AlertConfig, AlertRule, load_alert_config, render
from agent.store.base import DeliveryWindow
from agent.store.local import LocalStore
from agent.telemetry.catalogue import SPECS
from tests.alerts import FakeClock, RecordingLogger, Telemetry
from tests.support.components import require_binary

STEP = 60.0
JOB = "signal-sidecar"
REPLICA = {"job": JOB, "instance": "replica-a"}
# The exporter adds the instrumentation scope to every series; the rules must look past it.
SCOPE_LABELS = {"otel_scope_name": "agent", "otel_scope_version": "0.1.0"}

USER_RULES: list[dict[str, Any]] = [
    {
        "alert": "ErrorRatioSustained",
        "metric": "webhook.error_ratio",
        "threshold": 0.1,
        "for": "2m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "error ratio {{ value }} for 2m"},
    },
    {
        "alert": "ErrorRatioSticky",
        "metric": "webhook.error_ratio",
        "threshold": 0.1,
        "keep_firing_for": "2m",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "error ratio {{ value }}, kept 2m"},
    },
    {
        "alert": "ErrorRatioHysteresis",
        "metric": "webhook.error_ratio",
        "threshold": 0.1,
        "resolve_threshold": 0.06,
        "labels": {"severity": "warning"},
        "annotations": {"summary": "error ratio {{ value }}, held above 6%"},
    },
    {
        "alert": "TransferFailureRatio",
        "function": "ratio",
        "window": "5m",
        "numerator": {"metric": "r2.transfers", "match": {"outcome": "failed"}},
        "denominator": {"metric": "r2.transfers"},
        "threshold": 0.5,
        "no_data": "ok",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "{{ value }} of transfers failed in 5m"},
    },
    {
        "alert": "TransfersUnaccounted",
        "function": "ratio",
        "window": "5m",
        "numerator": {"metric": "r2.transfers", "match": {"outcome": "failed"}},
        "denominator": {"metric": "r2.transfers"},
        "threshold": 0.5,
        "for": "1m",
        "no_data": "alerting",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "{{ value }} of transfers failed in 5m, or none were made"},
    },
    {
        "alert": "SilentProbe",
        "metric": "probe.up",
        "match": {"probe": "redis"},
        "op": "<",
        "threshold": 1,
        "no_data": "alerting",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "redis probe at {{ value }}"},
    },
]


def _config() -> AlertConfig:
    raw = {"evaluation_interval": "1m", "rules": USER_RULES}
    return load_alert_config(raw, source="parity.toml", default_interval=STEP)


# Input.


@dataclass(frozen=True)
class Series:
    """One series, a value (or None: no sample) per step."""

    metric: str
    values: tuple[float | None, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def counter(self) -> bool:
        return SPECS[self.metric].kind == "counter"

    def promtool(self) -> dict[str, str]:
        labels = {**REPLICA, **SCOPE_LABELS}
        labels |= {promnames.label_name(k): v for k, v in self.attributes.items()}
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        values = " ".join("_" if v is None else repr(float(v)) for v in self.values)
        return {"series": f"{promnames.metric_name(self.metric)}{{{inner}}}", "values": values}


def series(metric: str, values: Sequence[float | None], **attributes: str) -> Series:
    return Series(metric, tuple(values), attributes)


def deliveries(counts: Sequence[tuple[int, int, int]]) -> list[Series]:
    """The 24 h window gauges per outcome, and the error ratio the sidecar derives from them."""
    windows = [
        DeliveryWindow({"delivered": d, "failed": f, "dead_lettered": x}, None)
        for d, f, x in counts
    ]
    parts = [
        series("webhook.window.deliveries", [w.counts[o] for w in windows], outcome=o)
        for o in ("delivered", "failed", "dead_lettered")
    ]
    return [*parts, series("webhook.error_ratio", [w.error_ratio for w in windows])]


def metrics_at(series: Sequence[Series], step: int) -> MetricsData:
    """One export as the SDK hands it to the metric tee: cumulative sums and gauges."""
    at = int(step * STEP * 1e9)
    metrics = []
    for s in series:
        value = s.values[step]
        if value is None:
            continue
        point = NumberDataPoint(dict(s.attributes), 0, at, value)
        data: Sum | Gauge = (
            Sum([point], AggregationTemporality.CUMULATIVE, True) if s.counter else Gauge([point])
        )
        metrics.append(Metric(s.metric, None, SPECS[s.metric].unit, data))
    scope = ScopeMetrics(InstrumentationScope("agent"), metrics, "")
    return MetricsData([ResourceMetrics(Resource({"service.name": JOB}), [scope], "")])


@dataclass(frozen=True)
class Scenario:
    name: str
    given: list[Series]
    # Per alert, the steps at which the sidecar fires it: what the scenario is about.
    fires: dict[str, list[int]]

    @property
    def steps(self) -> int:
        return len(self.given[0].values)

    @property
    def series(self) -> list[Series]:
        """The given series, and a quiet background for the rules that alert on silence."""
        steps = self.steps
        background = [
            series("probe.up", [1.0] * steps, probe="redis"),
            # No transfer failed yet, so that counter has no series: a ratio of 0, not no data.
            series("r2.transfers", [float(n) for n in range(steps)], outcome="success"),
        ]
        given = {s.metric for s in self.given}
        return [*self.given, *(s for s in background if s.metric not in given)]


RATIOS_CROSSING = [
    (10, 0, 0),
    (10, 1, 0),
    (10, 1, 1),
    (18, 1, 1),
    (18, 2, 1),
    (30, 2, 1),
    (30, 2, 1),
]
FLAPPING = [5, 15, 5, 15, 8, 15, 15, 15, 5, 5, 5, 5]  # failed of 100 deliveries
MISSING = [None] * 8
DAY = 86400.0
SCENARIOS = [
    Scenario(
        "error ratio crosses 10 %",
        deliveries(RATIOS_CROSSING),
        {
            "HighWebhookErrorRate": [2, 4],
            "ErrorRatioSustained": [],
            "ErrorRatioSticky": [2, 3, 4, 5, 6],
            "ErrorRatioHysteresis": [2, 3, 4, 5, 6],
        },
    ),
    Scenario(
        "memory at 80 % and 90 %",
        [series("process.memory.utilization", [0.5, 0.79, 0.8, 0.81, 0.9, 0.91, 0.95, 0.85, 0.7])],
        {"HighMemoryUsage": [3, 4, 5, 6, 7], "CriticalMemoryUsage": [5, 6]},
    ),
    Scenario(
        "flapping error ratio",
        deliveries([(100 - bad, bad, 0) for bad in FLAPPING]),
        {
            "HighWebhookErrorRate": [1, 3, 5, 6, 7],
            "ErrorRatioSustained": [7],
            "ErrorRatioSticky": [1, 2, 3, 4, 5, 6, 7, 8, 9],
            "ErrorRatioHysteresis": [1, 3, 4, 5, 6, 7],
        },
    ),
    Scenario(
        "series goes missing",
        [
            series("process.memory.utilization", [0.85] * 3 + MISSING + [0.5] * 2),
            series("probe.up", [1.0] * 3 + MISSING + [1.0] * 2, probe="redis"),
        ],
        {"HighMemoryUsage": list(range(11)), "SilentProbe": [6, 7, 8, 9, 10]},
    ),
    Scenario(
        "0/0",
        [
            *deliveries([(0, 0, 0)] * 3 + [(1, 1, 0)] * 3 + [(0, 0, 0)] * 9),
            series(
                "r2.transfers",
                [5.0] * 9 + [6.0] * 6,
                outcome="success",
                **{"r2.provider": "dropbox"},
            ),
            series(
                "r2.transfers",
                # Not from 0: Prometheus limits extrapolation where a counter would reach zero,
                # and this ratio's parts must extrapolate alike (R2TransfersFailing fires).
                [1.0] * 6 + [3.0, 5.0] + [7.0] * 7,
                outcome="failed",
                **{"r2.provider": "dropbox"},
            ),
        ],
        {
            "HighWebhookErrorRate": list(range(3, 15)),
            "ErrorRatioSustained": list(range(5, 15)),
            "ErrorRatioSticky": list(range(3, 15)),
            "ErrorRatioHysteresis": list(range(3, 15)),
            "TransferFailureRatio": list(range(6, 13)),
            "TransfersUnaccounted": list(range(1, 13)),
            "R2TransfersFailing": list(range(8, 15)),
        },
    ),
    Scenario(
        "poller stalls",
        [
            series(
                "poller.last_success.time", [0, 60, 120, 180] + [180] * 12, **{"imap.mailbox": "a"}
            )
        ],
        {"PollerStalled": [14, 15]},
    ),
    Scenario(
        "a certificate nears its expiry",
        [
            series(
                "tls.certificate.expiry",
                [d * DAY for d in (20, 20, 10, 10, 2.5, 2.5, 30, 30)],
                **{"server.address": "imap.example", "server.port": "993", "tls.endpoint": "imap"},
            )
        ],
        {"CertificateExpiresSoon": [2, 3, 4, 5]},
    ),
    Scenario(
        "a mailbox login keeps failing",
        [
            series(
                "imap.login.failing",
                [0.0] + [1.0] * 12 + [0.0],
                **{"imap.mailbox": "support", "imap.auth": "xoauth2"},
            )
        ],
        {"MailboxAuthFailing": [11, 12]},
    ),
]


# Where Prometheus differs by design.

Expectation = Callable[[AlertInstance, str], "tuple[dict[str, str], float | None] | None"]


def nothing(_alert: AlertInstance, _why: str) -> None:
    """Prometheus has no firing alert here."""
    return None


def absent_value_one(alert: AlertInstance, _why: str) -> tuple[dict[str, str], float]:
    """absent(): no job or instance (no replica is left to name), and the value 1."""
    labels = {k: v for k, v in alert.labels.items() if k not in promnames.INSTANCE_LABELS}
    return labels, 1.0


@dataclass(frozen=True)
class Difference:
    scenario: str
    alertnames: tuple[str, ...]
    steps: tuple[int, ...]
    prometheus: Expectation
    why: str


DIFFERENCES = [
    Difference(
        "series goes missing", ("HighMemoryUsage",), (8, 9, 10), nothing,
        "no_data keep_last: the sidecar holds the firing alert while the series is missing; "
        "Prometheus stops using the last sample after its 5 m lookback and resolves it",
    ),
    Difference(
        "series goes missing", ("SilentProbe",), (6, 7), nothing,
        "the sidecar calls a series missing after 3 export intervals (3 m here), Prometheus "
        "after its 5 m lookback",
    ),
    Difference(
        "series goes missing", ("SilentProbe",), (8, 9, 10), absent_value_one,
        "absent() has no replica to name: no job or instance label, and the value 1 where the "
        "sidecar says 'no data'",
    ),
    Difference(
        "0/0", ("HighWebhookErrorRate", "ErrorRatioSustained", "ErrorRatioHysteresis"),
        tuple(range(6, 15)), nothing,
        "the window empties (0/0): Prometheus has no data at once and resolves; the sidecar "
        "keeps the last ratio for 3 export intervals, then no_data keep_last holds the alert",
    ),
    Difference(
        "0/0", ("TransfersUnaccounted",), (1, 2, 3, 4, 5), absent_value_one,
        "no_data alerting on 0/0: both fire; absent() gives the value 1 where the sidecar says "
        "'no data'",
    ),
    Difference(
        "0/0", ("ErrorRatioSticky",), tuple(range(8, 15)), nothing,
        "as above, after keep_firing_for (2 m) has held it in Prometheus too",
    ),
]  # fmt: skip


# The harness.


def _render(rule: AlertRule, labels: Mapping[str, str], value: float | None) -> dict[str, str]:
    annotations = {name: render(text, value, labels) for name, text in rule.annotations.items()}
    annotations[NOTES] = "; ".join(translate(rule, job=JOB).notes)
    return annotations


def _entry(
    rule: AlertRule, labels: Mapping[str, str], value: float | None
) -> dict[str, dict[str, str]]:
    return {
        "exp_labels": {k: v for k, v in labels.items() if k != "alertname"},
        "exp_annotations": _render(rule, labels, value),
    }


async def _timeline(
    scenario: Scenario, config: AlertConfig, store: LocalStore
) -> list[dict[str, list[AlertInstance]]]:
    """Per step, per alert name, the engine's firing alerts."""
    telemetry = Telemetry()
    clock = FakeClock(0.0)
    engine = AlertEngine(
        config,
        store=store,
        notifiers=[],
        instruments=telemetry.instruments,
        tracer=telemetry.tracer,
        logger=RecordingLogger(),
        clock=clock,
        instance_labels=REPLICA,
    )
    steps = []
    for step in range(scenario.steps):
        clock.now = step * STEP
        engine.on_metrics(metrics_at(scenario.series, step))
        alerts = await engine.evaluate()
        firing: dict[str, list[AlertInstance]] = {rule.alert: [] for rule in config.rules}
        for alert in alerts:
            if alert.state == "firing":
                firing[alert.alertname].append(alert)
        steps.append(firing)
    engine.close()
    return steps


def _expectations(
    scenario: Scenario, config: AlertConfig, timeline: list[dict[str, list[AlertInstance]]]
) -> list[dict[str, Any]]:
    # By rule key: one alert name may have several rules (CertificateExpiresSoon).
    rules = {rule.key: rule for rule in config.rules}
    last_met: dict[str, float | None] = {}
    tests = []
    for step, firing in enumerate(timeline):
        for name, alerts in firing.items():
            expected = []
            for alert in alerts:
                # During keep_firing_for Prometheus shows the last value that met the condition.
                if alert.keep_firing_since is None:
                    last_met[alert.fingerprint] = alert.value
                labels, value = alert.labels, last_met.get(alert.fingerprint, alert.value)
                difference = _difference(scenario, name, step)
                if difference is not None:
                    found = difference.prometheus(alert, difference.why)
                    if found is None:
                        continue
                    labels, value = found
                expected.append(_entry(rules[alert.rule], labels, value))
            tests.append({"eval_time": duration(step * STEP), "alertname": name,
                          "exp_alerts": expected})  # fmt: skip
    return tests


def _difference(scenario: Scenario, alertname: str, step: int) -> Difference | None:
    for difference in DIFFERENCES:
        names = (difference.scenario, difference.alertnames)
        if names[0] == scenario.name and alertname in names[1] and step in difference.steps:
            return difference
    return None


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool", "apt-get install prometheus (scripts/install-system.sh)")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_prometheus_fires_the_same_alerts_at_the_same_steps_as_the_sidecar(
    scenario: Scenario, promtool: str, store: LocalStore, tmp_path: Path
) -> None:
    config = _config()
    timeline = await _timeline(scenario, config, store)
    fired = {
        name: [step for step, firing in enumerate(timeline) if firing[name]]
        for name in scenario.fires
    }
    assert fired == scenario.fires, "the sidecar's own timeline changed"
    for difference in DIFFERENCES:
        if difference.scenario == scenario.name:
            for name in difference.alertnames:
                assert set(difference.steps) <= set(fired[name]), difference.why
    silent = {r.alert for r in config.rules} - set(scenario.fires)
    assert [n for f in timeline for n in silent if f[n]] == [], "an unexpected alert fired"

    rules = tmp_path / "rules.yml"
    rules.write_text(export(config, job=JOB))
    unit = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": scenario.name,
                "interval": "1m",
                "input_series": [s.promtool() for s in scenario.series],
                "alert_rule_test": _expectations(scenario, config, timeline),
            }
        ],
    }
    test_file = tmp_path / "unit.yml"
    test_file.write_text(yaml.safe_dump(unit, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
