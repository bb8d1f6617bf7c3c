"""The derived Prometheus names match what the real collector's Prometheus exporter serves."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from agent.alerts import promnames
from agent.telemetry.catalogue import CATALOGUE
from tests.alerts.exposition import Sample, samples, types
from tests.fixtures.collector import TelemetryStack

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Exposed:
    """What the exporter served for one sending process."""

    resource: dict[str, str]
    samples: list[Sample]
    types: dict[str, str]


def _observe(attributes: dict[str, str]) -> Callable[[CallbackOptions], list[Observation]]:
    def callback(_options: CallbackOptions) -> list[Observation]:
        return [Observation(0.5, attributes)]

    return callback


@pytest.fixture(scope="module")
def exposed(telemetry_stack: TelemetryStack) -> Iterator[Exposed]:
    """Every catalogue instrument, with every declared attribute, sent once over OTLP."""
    resource = {
        "service.name": f"sidecar-{uuid.uuid4().hex[:8]}",
        "service.namespace": "mail",
        "service.instance.id": f"replica-{uuid.uuid4().hex[:8]}",
    }
    exporter = OTLPMetricExporter(endpoint=f"{telemetry_stack.otlp_http_endpoint}/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=200)
    provider = MeterProvider(metric_readers=[reader], resource=Resource(resource))
    meter = provider.get_meter("agent.test")
    for spec in CATALOGUE:
        attributes = {name: "x" for name in spec.attributes}
        if spec.kind == "counter":
            meter.create_counter(spec.name, unit=spec.unit).add(1, attributes)
        elif spec.kind == "histogram":
            meter.create_histogram(spec.name, unit=spec.unit).record(1.0, attributes)
        else:
            meter.create_observable_gauge(
                spec.name, callbacks=[_observe(attributes)], unit=spec.unit
            )
    job = promnames.job(resource)
    try:
        deadline = time.monotonic() + 30
        while True:
            text = telemetry_stack.prometheus_text()
            ours = [s for s in samples(text) if s.labels.get("job") == job]
            if {s.name for s in ours} >= {"webhook_error_ratio", "r2_transfers_total"}:
                break
            assert time.monotonic() < deadline, "the sidecar's metrics never reached the exporter"
            time.sleep(0.2)
        yield Exposed(resource, ours, types(text))
    finally:
        provider.shutdown()


def _expected_names() -> set[str]:
    names = set()
    for spec in CATALOGUE:
        if spec.kind == "histogram":
            names |= {promnames.metric_name(f"{spec.name}.{part}") for part in ("count", "sum")}
            count = promnames.metric_name(f"{spec.name}.count")
            names.add(count.removesuffix("_count") + "_bucket")
        else:
            names.add(promnames.metric_name(spec.name))
    return names


def test_every_catalogue_metric_is_served_under_its_derived_name(exposed: Exposed) -> None:
    served = {s.name for s in exposed.samples} - {"target_info"}
    assert served == _expected_names()


def test_counters_are_served_as_counters_and_gauges_as_gauges(exposed: Exposed) -> None:
    for spec in CATALOGUE:
        if spec.kind != "histogram":
            assert exposed.types[promnames.metric_name(spec.name)] == spec.kind, spec.name


def test_every_catalogue_attribute_is_served_under_its_derived_label(exposed: Exposed) -> None:
    for spec in CATALOGUE:
        series = f"{spec.name}.count" if spec.kind == "histogram" else spec.name
        name = promnames.metric_name(series)
        [sample] = [s for s in exposed.samples if s.name == name]
        derived = {promnames.label_name(a) for a in spec.attributes}
        assert derived <= set(sample.labels), spec.name
        assert all(sample.labels[label] == "x" for label in derived), spec.name


def test_job_and_instance_labels_come_from_the_resource(exposed: Exposed) -> None:
    expected = promnames.instance_labels(exposed.resource)
    assert expected["job"].startswith("mail/")
    for sample in exposed.samples:
        assert {k: sample.labels[k] for k in ("job", "instance")} == expected, sample.name
