"""Export tracking per signal, and the metric tee in front of a failing exporter."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics.export import MetricsData

from agent.config import Settings
from agent.telemetry.exporters import ExportTracker
from agent.telemetry.masking import Masker
from agent.telemetry.setup import setup_telemetry
from tests.support.net import free_port


def test_failure_then_success_resets_consecutive_failures() -> None:
    tracker = ExportTracker()
    tracker.failure("logs", "refused")
    tracker.failure("logs", "refused")
    assert tracker.status()["logs"]["consecutive_failures"] == 2
    tracker.success("logs")
    status = tracker.status()["logs"]
    assert status["consecutive_failures"] == 0
    assert status["failures"] == 2
    assert status["last_success"] >= status["last_failure"]


def test_last_error_is_masked_and_short() -> None:
    tracker = ExportTracker(Masker(["collector-token-1"]))
    tracker.failure("traces", "POST https://u:pw@c/v1/traces token collector-token-1 " + "x" * 500)
    error = tracker.status()["traces"]["last_error"]
    assert "pw" not in error
    assert "collector-token-1" not in error
    assert error.startswith("POST https://***@c/v1/traces token ***")
    assert len(error) <= 200


def test_metric_listeners_receive_every_collection_while_the_exporter_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}"),
                        ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"), ("OTEL_TRACES_EXPORTER", "none"),
                        ("OTEL_LOGS_EXPORTER", "none")):  # fmt: skip
        monkeypatch.setenv(name, value)
    telemetry = setup_telemetry(Settings(), metric_interval=3600.0)
    received: list[MetricsData] = []
    telemetry.add_metric_listener(received.append)
    telemetry.instruments.webhook_deliveries.add(1, {"outcome": "failed"})
    telemetry.force_flush(4.0)
    status = telemetry.exports.status()["metrics"]
    telemetry.shutdown(2.0)
    assert received
    assert status["consecutive_failures"] >= 1
