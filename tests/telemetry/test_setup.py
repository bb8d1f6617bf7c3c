"""Providers honour the standard OTEL_* variables; shutdown is bounded whatever the collector."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from agent.config import ConfigError, Settings
from agent.telemetry.setup import Telemetry, setup_telemetry
from tests.fixtures.blackhole import BlackHole
from tests.support.net import free_port
from tests.support.telemetry import metric_points

Environment = Callable[..., None]
_QUIET = {"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none",
          "OTEL_LOGS_EXPORTER": "none"}  # fmt: skip


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Environment:
    """Sets OTEL_* variables for one test (the SDK reads the process environment itself)."""

    def set_variables(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_variables


def test_sdk_disabled_gives_no_op_traces_and_no_log_provider(environment: Environment) -> None:
    environment(OTEL_SDK_DISABLED="true")
    telemetry = setup_telemetry(Settings())
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert not span.is_recording()
    assert telemetry.logger_provider is None
    assert all(status["disabled"] for status in telemetry.exports.status().values())
    telemetry.shutdown(2.0)


def test_sdk_disabled_turns_metrics_off_too(environment: Environment) -> None:
    # As the specification says: every signal is a no-op, so metric listeners see no points.
    environment(OTEL_SDK_DISABLED="true")
    telemetry = setup_telemetry(Settings())
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.webhook_deliveries.add(3, {"outcome": "delivered"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert not [p for data in received for p in metric_points(data, "webhook.deliveries")]


def test_exporter_none_disables_each_signal(environment: Environment) -> None:
    environment(**_QUIET)
    telemetry = setup_telemetry(Settings())
    status = telemetry.exports.status()
    assert status["traces"]["disabled"]
    assert status["metrics"]["disabled"]
    assert status["logs"]["disabled"]
    assert telemetry.logger_provider is None
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert span.get_span_context().is_valid  # ids still exist for traceparent and logs
    telemetry.shutdown(2.0)


def test_metric_tee_receives_data_with_the_exporter_disabled(environment: Environment) -> None:
    environment(**_QUIET)
    telemetry = setup_telemetry(Settings())
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.imap_messages.add(2, {"imap.mailbox": "m", "outcome": "processed"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert [p.value for p in metric_points(received[-1], "imap.messages")] == [2]


def test_a_failing_metric_listener_does_not_stop_the_others(environment: Environment) -> None:
    environment(**_QUIET)
    telemetry = setup_telemetry(Settings())
    received: list[MetricsData] = []

    def broken(_data: MetricsData) -> None:
        raise RuntimeError("listener bug")

    telemetry.add_metric_listener(broken)
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.imap_messages.add(1, {"imap.mailbox": "m", "outcome": "processed"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert received


def test_metric_interval_comes_from_otel_metric_export_interval_in_milliseconds(
    environment: Environment,
) -> None:
    environment(OTEL_METRIC_EXPORT_INTERVAL="200", **_QUIET)
    telemetry = setup_telemetry(Settings())
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.imap_messages.add(1, {"imap.mailbox": "m", "outcome": "processed"})
    deadline = time.monotonic() + 3.0
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    telemetry.shutdown(2.0)
    assert telemetry.export_interval == 0.2
    assert len(received) >= 2


def test_always_off_sampler_records_no_span(environment: Environment) -> None:
    environment(OTEL_TRACES_SAMPLER="always_off", **_QUIET)
    telemetry = setup_telemetry(Settings())
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert not span.is_recording()
    telemetry.shutdown(2.0)


def test_the_sampler_is_the_one_the_sdk_builds_from_the_environment(
    environment: Environment,
) -> None:
    environment(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1",
                **_QUIET)  # fmt: skip
    telemetry = setup_telemetry(Settings())
    tracer = telemetry.tracer("t")
    recorded = 0
    for _ in range(2000):
        with tracer.start_as_current_span("root") as root:
            recorded += root.is_recording()
            with tracer.start_as_current_span("child") as child:
                assert child.is_recording() == root.is_recording()
    telemetry.shutdown(2.0)
    assert "TraceIdRatioBased{0.1}" in telemetry.tracer_provider.sampler.get_description()
    assert 120 <= recorded <= 280  # 200 expected; the bounds are far beyond 5 sigma


@pytest.mark.parametrize(("value", "kept"), [(None, False), ("trace_based", True)])
def test_exemplars_are_off_unless_the_exemplar_filter_asks_for_them(
    environment: Environment, value: str | None, kept: bool
) -> None:
    environment(**_QUIET)
    if value is not None:
        environment(OTEL_METRICS_EXEMPLAR_FILTER=value)
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(Settings(), metric_readers=[reader])
    with telemetry.tracer("t").start_as_current_span("sampled"):
        telemetry.instruments.parse_duration.record(0.01)
    exemplars = [e for p in metric_points(reader.get_metrics_data(), "email.parse.duration")
                 for e in p.exemplars]  # fmt: skip
    assert bool(exemplars) is kept
    telemetry.shutdown(2.0)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("OTEL_METRICS_EXEMPLAR_FILTER", "sometimes", "trace_based"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "parentbased_traceidratio"),
        ("OTEL_LOGS_EXPORTER", "zipkin", "otlp, console or none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/protobuf or grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "positive number of ms"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0", "positive number of ms"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "-5", "positive number of ms"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta", "only cumulative"),
    ],
)
def test_a_bad_variable_is_a_config_error_naming_it_and_what_was_expected(
    environment: Environment, variable: str, value: str, expected: str
) -> None:
    environment(**{variable: value})
    with pytest.raises(ConfigError, match=rf"{variable}\b.*{expected}"):
        setup_telemetry(Settings())


@pytest.mark.parametrize("ratio", ["1.5", "a tenth"])
def test_a_sampler_ratio_outside_zero_to_one_is_a_config_error(
    environment: Environment, ratio: str
) -> None:
    environment(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG=ratio)
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1"):
        setup_telemetry(Settings())


def _queue_everything(environment: Environment, endpoint: str, **variables: str) -> Telemetry:
    environment(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, **variables)
    telemetry = setup_telemetry(Settings(), metric_interval=3600.0)
    from agent.telemetry.logs import configure_logging, get_logger

    configure_logging(telemetry, stream=open("/dev/null", "w"))  # noqa: SIM115
    tracer = telemetry.tracer("t")
    for index in range(50):
        with tracer.start_as_current_span(f"span-{index}"):
            get_logger("app").info("queued", index=index)
    telemetry.instruments.imap_messages.add(1, {"imap.mailbox": "m", "outcome": "processed"})
    return telemetry


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_shutdown_is_bounded_against_a_closed_port(environment: Environment, protocol: str) -> None:
    # 30 s per export: only the bounded shutdown can return early.
    telemetry = _queue_everything(environment, f"http://127.0.0.1:{free_port()}",
                                  OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                                  OTEL_EXPORTER_OTLP_TIMEOUT="30000")  # fmt: skip
    started = time.monotonic()
    telemetry.shutdown(3.0)
    assert time.monotonic() - started <= 5.0


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_shutdown_is_bounded_against_a_black_hole(
    environment: Environment, blackhole: BlackHole, protocol: str
) -> None:
    telemetry = _queue_everything(environment, blackhole.url, OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                                  OTEL_EXPORTER_OTLP_TIMEOUT="30000")  # fmt: skip
    started = time.monotonic()
    telemetry.shutdown(3.0)
    assert time.monotonic() - started <= 5.0
    assert blackhole.accepted >= 1  # the exporters really were stuck on the silent server


def test_force_flush_is_bounded_against_a_black_hole(
    environment: Environment, blackhole: BlackHole
) -> None:
    telemetry = _queue_everything(environment, blackhole.url, OTEL_EXPORTER_OTLP_TIMEOUT="30000")
    started = time.monotonic()
    assert not telemetry.force_flush(1.0)
    assert time.monotonic() - started <= 2.0
    telemetry.shutdown(1.0)


def test_otlp_timeout_is_read_as_milliseconds(
    environment: Environment, blackhole: BlackHole
) -> None:
    # Read as seconds (the SDK's reading), 700 would hold this export for over eleven minutes.
    environment(OTEL_EXPORTER_OTLP_ENDPOINT=blackhole.url, OTEL_EXPORTER_OTLP_TIMEOUT="700",
                OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")  # fmt: skip
    telemetry = setup_telemetry(Settings())
    with telemetry.tracer("t").start_as_current_span("lost"):
        pass
    started = time.monotonic()
    telemetry.force_flush(10.0)
    elapsed = time.monotonic() - started
    traces = telemetry.exports.status()["traces"]
    telemetry.shutdown(1.0)
    assert traces["consecutive_failures"] == 1
    assert 0.6 <= elapsed <= 5.0


def test_export_failures_against_a_closed_port_are_tracked_and_counted(
    environment: Environment,
) -> None:
    environment(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{free_port()}",
                OTEL_EXPORTER_OTLP_TIMEOUT="500", OTEL_METRICS_EXPORTER="none")  # fmt: skip
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(Settings(), metric_readers=[reader])
    with telemetry.tracer("t").start_as_current_span("lost"):
        pass
    telemetry.force_flush(4.0)
    traces = telemetry.exports.status()["traces"]
    failures = {
        p.attributes["signal"]: p.value
        for p in metric_points(reader.get_metrics_data(), "telemetry.export.failures")
    }
    telemetry.shutdown(2.0)
    assert traces["consecutive_failures"] >= 1
    assert traces["last_failure"] is not None
    assert traces["last_success"] is None
    assert traces["last_error"]
    assert failures["traces"] >= 1
