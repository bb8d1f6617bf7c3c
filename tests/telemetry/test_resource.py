"""The resource is built from OTEL_* and the Kubernetes downward-API variables."""

from __future__ import annotations

import socket

from agent.telemetry.resource import build_resource


def test_defaults_name_the_service_and_host() -> None:
    attributes = build_resource({}, version="1.2.3").attributes
    assert attributes["service.name"] == "signal-sidecar"
    assert attributes["service.version"] == "1.2.3"
    assert attributes["host.name"] == socket.gethostname()
    assert str(attributes["service.instance.id"]).startswith(socket.gethostname() + "-")


def test_kubernetes_variables_become_k8s_attributes() -> None:
    env = {"K8S_POD_NAME": "sidecar-7d9f", "K8S_NAMESPACE_NAME": "mail", "K8S_NODE_NAME": "node-1"}
    attributes = build_resource(env, version="1").attributes
    assert attributes["k8s.pod.name"] == "sidecar-7d9f"
    assert attributes["k8s.namespace.name"] == "mail"
    assert attributes["k8s.node.name"] == "node-1"
    assert str(attributes["service.instance.id"]).startswith("sidecar-7d9f-")


def test_instance_id_differs_between_processes_of_the_same_pod() -> None:
    env = {"K8S_POD_NAME": "p"}
    first = build_resource(env, version="1").attributes["service.instance.id"]
    second = build_resource(env, version="1").attributes["service.instance.id"]
    assert first != second


def test_otel_resource_attributes_are_merged_and_percent_decoded() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,team=mail%20ops,bad"}
    attributes = build_resource(env, version="1").attributes
    assert attributes["deployment.environment.name"] == "prod"
    assert attributes["team"] == "mail ops"
    assert "bad" not in attributes


def test_otel_service_name_wins_over_resource_attributes() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs", "OTEL_SERVICE_NAME": "from-var"}
    assert build_resource(env, version="1").attributes["service.name"] == "from-var"


def test_service_name_from_resource_attributes_when_no_otel_service_name() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}
    assert build_resource(env, version="1").attributes["service.name"] == "from-attrs"
