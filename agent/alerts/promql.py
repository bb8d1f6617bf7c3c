"""One alert rule as the closest faithful PromQL, with where Prometheus must differ said aloud."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.alerts import promnames
from agent.alerts.rules import AlertRule, SeriesRef, sanitize_label
from agent.alerts.scope import FLEET, RATIO_GAUGES, fleet_wide
from agent.config import ConfigError

# How long Prometheus keeps using a series' last sample (its lookback delta), and how long the
# collector keeps exposing a metric the sidecar stopped sending (collector.yaml's
# metric_expiration): together, when a missing series stops counting.
LOOKBACK = "5m"


class ExportError(ConfigError):
    """A rule that has no faithful PromQL form; the message names the rule and why."""


@dataclass(frozen=True)
class Translation:
    """A rule's PromQL expression and the notes on how Prometheus differs from the sidecar."""

    expr: str
    fleet: bool
    notes: tuple[str, ...]


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (`90` -> `1m30s`, `0.5` -> `500ms`)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        parts.append(f"{millis}ms")
    return "".join(parts)


def number(value: float) -> str:
    """A threshold as a PromQL number literal that reads back to the same float."""
    if not math.isfinite(value):
        raise ExportError(f"threshold {value!r} is not finite")
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _label(attribute: str, rule: AlertRule) -> str:
    name = promnames.label_name(attribute)
    if name != sanitize_label(attribute):
        raise ExportError(
            f"{rule.alert}: attribute {attribute!r} is {name!r} in Prometheus but "
            f"{sanitize_label(attribute)!r} in the sidecar's alerts"
        )
    return name


class _Builder:
    """Writes the expression of one rule; `job` selects the sidecar's series."""

    def __init__(self, rule: AlertRule, job: str) -> None:
        self.rule = rule
        self.job = job
        self.fleet = fleet_wide(rule)

    def selector(
        self,
        metric: str,
        match: Mapping[str, str],
        regex: str = "",
        exclude: Mapping[str, str] | None = None,
    ) -> str:
        matchers = [f"job={_string(self.job)}"] if self.job else []
        matchers += [f"{_label(k, self.rule)}={_string(v)}" for k, v in sorted(match.items())]
        matchers += [
            f"{_label(k, self.rule)}!={_string(v)}" for k, v in sorted((exclude or {}).items())
        ]
        if regex:
            matchers.append(regex)
        return f"{promnames.metric_name(metric)}{{{', '.join(matchers)}}}"

    def by(self, metrics: Sequence[str], *, attributes: bool = True) -> list[str]:
        labels = [] if self.fleet else list(promnames.INSTANCE_LABELS)
        if attributes:
            for metric in metrics:
                for attribute in promnames.spec_of(metric).attributes:
                    name = _label(attribute, self.rule)
                    if name not in labels:
                        labels.append(name)
        return labels

    def aggregate(self, op: str, labels: list[str], inner: str) -> str:
        if not labels:
            return f"{op}({inner})"
        return f"{op} by ({', '.join(labels)}) ({inner})"

    def value(self) -> str:
        """The rule's value per label set, before the comparison."""
        rule = self.rule
        if rule.function == "ratio":
            return self._ratio()
        if rule.metric in RATIO_GAUGES:
            return self._gauge_ratio()
        labels = self.by([rule.metric])
        selector = self.selector(rule.metric, rule.match, exclude=rule.exclude)
        if rule.function in ("increase", "rate"):
            window = duration(rule.window)
            return self.aggregate("sum", labels, f"{rule.function}({selector}[{window}])")
        gathered = self.aggregate(FLEET.get(rule.metric, "max"), labels, selector)
        return f"time() - {gathered}" if rule.function == "age" else gathered

    def _ratio(self) -> str:
        top, bottom = self.rule.numerator, self.rule.denominator
        if top is None or bottom is None:
            raise ExportError(f"{self.rule.alert}: ratio without numerator and denominator")
        labels = self.by([top.metric, bottom.metric], attributes=False)
        window = duration(self.rule.window)

        def summed(ref: SeriesRef) -> str:
            selector = self.selector(ref.metric, ref.match, exclude=ref.exclude)
            return self.aggregate("sum", labels, f"increase({selector}[{window}])")

        below = summed(bottom)
        # No numerator series counts as 0 (as the sidecar sums nothing to 0); 0/0 is no data, and
        # so is a denominator that grew by less than min_denominator.
        enough = (
            f"{below} >= {number(self.rule.min_denominator)}"
            if self.rule.min_denominator > 0
            else f"{below} > 0"
        )
        return f"({summed(top)} or 0 * {below}) / ({enough})"

    def _gauge_ratio(self) -> str:
        ratio = RATIO_GAUGES[self.rule.metric]
        labels = self.by([], attributes=False)
        values = "|".join(ratio.numerator)
        bad = f"{_label(ratio.label, self.rule)}=~{_string(values)}"
        top = self.aggregate("sum", labels, self.selector(ratio.parts, self.rule.match, bad))
        below = self.aggregate("sum", labels, self.selector(ratio.parts, self.rule.match))
        return f"({top} or 0 * {below}) / ({below} > 0)"


def translate(rule: AlertRule, *, job: str) -> Translation:
    """The rule as one PromQL expression over the series of `job`, and its notes."""
    builder = _Builder(rule, job)
    try:
        value = builder.value()
    except promnames.UnknownMetric as exc:
        raise ExportError(f"{rule.alert}: {exc.args[0]!r} is not in the metric catalogue") from None
    expr = f"{value} {rule.op} {number(rule.threshold)}"
    if rule.resolve_threshold is not None:
        labels = builder.by(list(rule.metrics()), attributes=rule.function != "ratio")
        firing = f'ALERTS{{alertname={_string(rule.alert)}, alertstate="firing"}}'
        held = f"{value} {rule.op} {number(rule.resolve_threshold)}"
        expr = f"({expr}) or ({held} and on ({', '.join(labels)}) {firing})"
    if rule.no_data == "alerting":
        expr = f"{expr} or absent({value})"
    return Translation(expr=expr, fleet=builder.fleet, notes=tuple(_notes(rule, builder.fleet)))


def _notes(rule: AlertRule, fleet: bool) -> list[str]:
    notes = []
    if fleet:
        newest = rule.function in ("value", "age") and FLEET.get(rule.metric) == "max"
        combined = "the largest (newest) report is taken" if newest else "replicas are summed"
        notes.append(f"fleet-wide: {combined} before comparing, one alert stands for all")
    else:
        notes.append("per replica: each alert carries the replica's job and instance labels")
    if rule.metric in RATIO_GAUGES:
        ratio = RATIO_GAUGES[rule.metric]
        notes.append(
            f"{rule.metric} is rebuilt from {ratio.parts} ({'+'.join(ratio.numerator)} over all), "
            "each part summed over replicas before dividing"
        )
    if rule.function in ("increase", "rate", "ratio"):
        notes.append(
            f"{rule.function}: Prometheus extrapolates to the window's edges; the sidecar takes "
            "the exact growth between the first and last sample inside the window"
        )
    if rule.function == "ratio" or rule.metric in RATIO_GAUGES:
        notes.append("0/0 is no data in both")
    if rule.min_denominator > 0:
        notes.append(
            f"min_denominator: a denominator that grew by less than "
            f"{number(rule.min_denominator)} is no data in both"
        )
    if rule.resolve_threshold is not None:
        notes.append(
            f"resolve_threshold: a firing alert holds while the value is {rule.op} "
            f"{number(rule.resolve_threshold)}, read from ALERTS as the sidecar reads its state"
        )
    if rule.keep_firing_for > 0:
        notes.append(
            "keep_firing_for: Prometheus shows the last value that met the condition, "
            "the sidecar the current one"
        )
    notes.append(_NO_DATA[rule.no_data])
    return notes


_NO_DATA = {
    "keep_last": (
        "no data: the sidecar freezes the alert while the series is missing; Prometheus uses the "
        f"last sample for up to {LOOKBACK}, then the alert resolves"
    ),
    "ok": (
        "no data counts as the condition being false in both; the sidecar calls a series missing "
        f"after 3 export intervals, Prometheus after {LOOKBACK}"
    ),
    "alerting": (
        "no data: fires with value 1 once no series is left (absent); the sidecar also holds the "
        "alert of each series that vanished, with the value 'no data'"
    ),
}
