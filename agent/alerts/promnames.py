"""The names the collector's Prometheus exporter gives the sidecar's metrics, from the catalogue.

The collector's `prometheus` exporter (collector-config/collector.yaml) translates OTLP metrics
the OpenTelemetry way: dots become underscores, the unit becomes a suffix (`s` -> `_seconds`,
`By` -> `_bytes`, `1` -> `_ratio` on gauges, `{...}` annotations dropped), monotonic sums end in
`_total`, histograms appear as `_bucket`, `_count` and `_sum`. The resource becomes `job`
(`service.namespace/service.name`) and `instance` (`service.instance.id`). This module is the one
place that knows it; tests/alerts/test_promnames.py holds it to the real exporter's output.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from agent.alerts.rules import HISTOGRAM_SERIES
from agent.telemetry.catalogue import SPECS, InstrumentSpec

INSTANCE_LABELS: tuple[str, ...] = ("job", "instance")

_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "%": "percent",
    "1": "",
}
_PER_UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day"}
_ANNOTATION = re.compile(r"\{[^{}]*\}")
_NOT_NAME = re.compile(r"[^A-Za-z0-9]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_]")


class UnknownMetric(KeyError):
    """A name that is neither a catalogue metric nor a histogram's .count or .sum series."""


def _tokens(text: str) -> list[str]:
    return [token for token in _NOT_NAME.split(text) if token]


def _base_name(spec: InstrumentSpec) -> str:
    tokens = _tokens(spec.name)
    unit = _ANNOTATION.sub("", spec.unit).strip()
    main, _, per = unit.partition("/")
    suffix = _UNITS.get(main, "_".join(_tokens(main)))
    if suffix and suffix not in tokens:
        tokens.append(suffix)
    if per:
        per_suffix = _PER_UNITS.get(per, "_".join(_tokens(per)))
        if per_suffix and per_suffix not in tokens:
            tokens += ["per", per_suffix]
    if spec.kind == "counter":
        tokens = [t for t in tokens if t != "total"] + ["total"]
    elif spec.kind == "gauge" and unit == "1":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    name = "_".join(tokens)
    return f"_{name}" if name[:1].isdigit() else name


def metric_name(metric: str) -> str:
    """The Prometheus name of a catalogue metric, or of a histogram's `.count` / `.sum` series."""
    spec = SPECS.get(metric)
    if spec is not None:
        return _base_name(spec)
    base, dot, series = metric.rpartition(".")
    spec = SPECS.get(base)
    if spec is not None and spec.kind == "histogram" and f"{dot}{series}" in HISTOGRAM_SERIES:
        return f"{_base_name(spec)}_{series}"
    raise UnknownMetric(metric)


def spec_of(metric: str) -> InstrumentSpec:
    """The catalogue entry behind a rule's metric (a histogram's for its .count / .sum)."""
    spec = SPECS.get(metric) or SPECS.get(metric.rpartition(".")[0])
    if spec is None:
        raise UnknownMetric(metric)
    return spec


def label_name(attribute: str) -> str:
    """The Prometheus label an OTel attribute becomes (`imap.mailbox` -> `imap_mailbox`)."""
    name = _NOT_LABEL.sub("_", attribute)
    return f"key_{name}" if name[:1].isdigit() else name


def job(resource: Mapping[str, object]) -> str:
    """The `job` label the exporter derives from the resource."""
    service = str(resource.get("service.name", ""))
    namespace = str(resource.get("service.namespace", "") or "")
    return f"{namespace}/{service}" if namespace else service


def instance_labels(resource: Mapping[str, object]) -> dict[str, str]:
    """`job` and `instance`: the labels that tell one replica's series from another's."""
    return {"job": job(resource), "instance": str(resource.get("service.instance.id", ""))}
