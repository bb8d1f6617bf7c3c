"""The resource: the SDK's detectors, the sidecar's own attributes, the downward-API variables."""

from __future__ import annotations

import socket

import pytest

from agent.telemetry.resource import build_resource


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME", "K8S_POD_NAME"):
        monkeypatch.delenv(variable, raising=False)


def test_defaults_name_the_service_the_sdk_and_the_host() -> None:
    attributes = build_resource(version="1.2.3").attributes
    assert attributes["service.name"] == "signal-sidecar"
    assert attributes["service.version"] == "1.2.3"
    assert attributes["host.name"] == socket.gethostname()
    assert attributes["telemetry.sdk.name"] == "opentelemetry"
    assert str(attributes["service.instance.id"]).startswith(socket.gethostname() + "-")


def test_kubernetes_variables_become_k8s_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in (("K8S_POD_NAME", "sidecar-7d9f"), ("K8S_NAMESPACE_NAME", "mail"),
                            ("K8S_NODE_NAME", "node-1")):  # fmt: skip
        monkeypatch.setenv(variable, value)
    attributes = build_resource(version="1").attributes
    assert attributes["k8s.pod.name"] == "sidecar-7d9f"
    assert attributes["k8s.namespace.name"] == "mail"
    assert attributes["k8s.node.name"] == "node-1"
    assert str(attributes["service.instance.id"]).startswith("sidecar-7d9f-")


def test_instance_id_ends_with_the_sdks_per_process_uuid() -> None:
    instance = str(build_resource(version="1").attributes["service.instance.id"])
    suffix = instance.removeprefix(socket.gethostname() + "-")
    assert len(suffix) == 36
    assert suffix.count("-") == 4


def test_otel_resource_attributes_are_merged_and_percent_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=prod,team=a%20b")
    attributes = build_resource(version="1").attributes
    assert attributes["deployment.environment.name"] == "prod"
    assert attributes["team"] == "a b"


def test_otel_resource_attributes_win_over_what_the_sidecar_detects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=edge-7,service.instance.id=fixed")
    attributes = build_resource(version="1").attributes
    assert (attributes["host.name"], attributes["service.instance.id"]) == ("edge-7", "fixed")


def test_otel_service_name_wins_over_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-var")
    assert build_resource(version="1").attributes["service.name"] == "from-var"


def test_service_name_from_resource_attributes_when_no_otel_service_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
    assert build_resource(version="1").attributes["service.name"] == "from-attrs"
