"""Providers honour the standard OTEL_* variables; shutdown is bounded whatever the collector."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

from agent.config import ConfigError, Settings
from agent.telemetry.setup import otlp_endpoint, otlp_timeout, setup_telemetry
from tests.fixtures.blackhole import BlackHole
from tests.support.net import free_port


def _points(data: MetricsData | None, name: str) -> list[Any]:
    found: list[Any] = []
    for resource_metrics in data.resource_metrics if data else []:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def test_sdk_disabled_gives_no_op_traces_and_no_log_provider() -> None:
    telemetry = setup_telemetry(Settings(), {"OTEL_SDK_DISABLED": "true"})
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert not span.is_recording()
    assert telemetry.logger_provider is None
    assert all(status["disabled"] for status in telemetry.exports.status().values())
    telemetry.shutdown(2.0)


def test_sdk_disabled_still_feeds_metric_listeners() -> None:
    telemetry = setup_telemetry(Settings(), {"OTEL_SDK_DISABLED": "true"})
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.webhook_deliveries.add(3, {"outcome": "delivered"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert [p.value for p in _points(received[0], "webhook.deliveries")] == [3]


def test_sdk_disabled_in_the_process_environment_keeps_metrics_for_listeners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The SDK reads OTEL_SDK_DISABLED from os.environ itself; the tee must survive that too.
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_telemetry(Settings())
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.r2_transfers.add(1, {"r2.provider": "dropbox", "outcome": "stored"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert [p.value for p in _points(received[0], "r2.transfers")] == [1]


def test_exporter_none_disables_each_signal() -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    telemetry = setup_telemetry(Settings(), env)
    status = telemetry.exports.status()
    assert status["traces"]["disabled"]
    assert status["metrics"]["disabled"]
    assert status["logs"]["disabled"]
    assert telemetry.logger_provider is None
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert span.get_span_context().is_valid  # ids still exist for traceparent and logs
    telemetry.shutdown(2.0)


def test_metric_tee_receives_data_with_the_exporter_disabled() -> None:
    telemetry = setup_telemetry(
        Settings(),
        {
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.imap_messages.add(2, {"imap.mailbox": "m", "outcome": "processed"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert [p.value for p in _points(received[-1], "imap.messages")] == [2]


def test_a_failing_metric_listener_does_not_stop_the_others() -> None:
    telemetry = setup_telemetry(
        Settings(),
        {
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    received: list[MetricsData] = []

    def broken(_data: MetricsData) -> None:
        raise RuntimeError("listener bug")

    telemetry.add_metric_listener(broken)
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.imap_messages.add(1, {"imap.mailbox": "m", "outcome": "processed"})
    telemetry.force_flush(2.0)
    telemetry.shutdown(2.0)
    assert received


def test_metric_interval_comes_from_otel_metric_export_interval_in_milliseconds() -> None:
    env = {
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    telemetry = setup_telemetry(Settings(), env)
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.imap_messages.add(1, {"imap.mailbox": "m", "outcome": "processed"})
    deadline = time.monotonic() + 3.0
    while len(received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    telemetry.shutdown(2.0)
    assert len(received) >= 2


def test_always_off_sampler_records_no_span() -> None:
    telemetry = setup_telemetry(
        Settings(),
        {
            "OTEL_TRACES_SAMPLER": "always_off",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        },
    )
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert not span.is_recording()
    telemetry.shutdown(2.0)


_QUIET = {"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none",
          "OTEL_LOGS_EXPORTER": "none"}  # fmt: skip


@pytest.mark.parametrize(("value", "kept"), [(None, False), ("trace_based", True)])
def test_exemplars_are_off_unless_the_exemplar_filter_asks_for_them(
    value: str | None, kept: bool
) -> None:
    reader = InMemoryMetricReader()
    env = _QUIET if value is None else {**_QUIET, "OTEL_METRICS_EXEMPLAR_FILTER": value}
    telemetry = setup_telemetry(Settings(), env, metric_readers=[reader])
    with telemetry.tracer("t").start_as_current_span("sampled"):
        telemetry.instruments.parse_duration.record(0.01)
    exemplars = [e for p in _points(reader.get_metrics_data(), "email.parse.duration")
                 for e in p.exemplars]  # fmt: skip
    assert bool(exemplars) is kept
    telemetry.shutdown(2.0)


def test_unknown_exemplar_filter_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"OTEL_METRICS_EXEMPLAR_FILTER.*trace_based"):
        setup_telemetry(Settings(), {"OTEL_METRICS_EXEMPLAR_FILTER": "sometimes"})


def test_unknown_sampler_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        setup_telemetry(Settings(), {"OTEL_TRACES_SAMPLER": "sometimes"})


def test_unknown_exporter_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_LOGS_EXPORTER"):
        setup_telemetry(Settings(), {"OTEL_LOGS_EXPORTER": "zipkin"})


def test_http_endpoint_gets_the_signal_path_and_grpc_does_not() -> None:
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert otlp_endpoint(base, "traces") == "http://collector:4318/v1/traces"
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert otlp_endpoint(grpc, "metrics") == "http://c:4317"
    specific = {**base, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:9999/custom"}
    assert otlp_endpoint(specific, "logs") == "http://logs:9999/custom"
    assert otlp_endpoint({}, "traces") == "http://localhost:4318/v1/traces"


def test_otlp_timeout_is_read_as_milliseconds() -> None:
    assert otlp_timeout({"OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}, "traces") == 2.5
    env = {"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "500"}
    assert otlp_timeout(env, "metrics") == 0.5
    assert otlp_timeout({}, "logs") == 10.0


def _queue_everything(endpoint: str, protocol: str = "http/protobuf") -> Any:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        # 30 s per export: only the bounded shutdown can return early.
        "OTEL_EXPORTER_OTLP_TIMEOUT": "30000",
    }
    telemetry = setup_telemetry(Settings(), env, metric_reader_interval=3600.0)
    from agent.telemetry.logs import configure_logging, get_logger

    configure_logging(telemetry, stream=open("/dev/null", "w"))  # noqa: SIM115
    tracer = telemetry.tracer("t")
    for index in range(50):
        with tracer.start_as_current_span(f"span-{index}"):
            get_logger("app").info("queued", index=index)
    telemetry.instruments.imap_messages.add(1, {"imap.mailbox": "m", "outcome": "processed"})
    return telemetry


def test_shutdown_is_bounded_against_a_closed_port() -> None:
    telemetry = _queue_everything(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    telemetry.shutdown(3.0)
    assert time.monotonic() - started <= 5.0


def test_shutdown_is_bounded_against_a_black_hole(blackhole: BlackHole) -> None:
    telemetry = _queue_everything(blackhole.url)
    started = time.monotonic()
    telemetry.shutdown(3.0)
    elapsed = time.monotonic() - started
    assert elapsed <= 5.0
    assert blackhole.accepted >= 1  # the exporters really were stuck on the silent server


def test_shutdown_is_bounded_against_a_black_hole_over_grpc(blackhole: BlackHole) -> None:
    telemetry = _queue_everything(blackhole.url, protocol="grpc")
    started = time.monotonic()
    telemetry.shutdown(3.0)
    assert time.monotonic() - started <= 5.0


def test_export_failures_against_a_closed_port_are_tracked_and_counted() -> None:
    reader = InMemoryMetricReader()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
        "OTEL_METRICS_EXPORTER": "none",
    }
    telemetry = setup_telemetry(Settings(), env, metric_readers=[reader])
    with telemetry.tracer("t").start_as_current_span("lost"):
        pass
    telemetry.force_flush(4.0)
    traces = telemetry.exports.status()["traces"]
    failures = {
        p.attributes["signal"]: p.value
        for p in _points(reader.get_metrics_data(), "telemetry.export.failures")
    }
    telemetry.shutdown(2.0)
    assert traces["consecutive_failures"] >= 1
    assert traces["last_failure"] is not None
    assert traces["last_success"] is None
    assert traces["last_error"]
    assert failures["traces"] >= 1
