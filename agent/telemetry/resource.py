"""The OTel resource: who emits the telemetry, from OTEL_* and the Kubernetes downward API."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as _sdk_version

DEFAULT_SERVICE_NAME = "signal-sidecar"

# The downward-API variables of deploy/kubernetes and the attributes they become.
_K8S_VARIABLES = {
    "K8S_POD_NAME": "k8s.pod.name",
    "K8S_NAMESPACE_NAME": "k8s.namespace.name",
    "K8S_NODE_NAME": "k8s.node.name",
}


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES ("k=v,k2=v2", values percent-encoded); malformed pairs dropped."""
    attributes: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        key = key.strip()
        if sep and key:
            attributes[key] = unquote(value.strip())
    return attributes


def build_resource(env: Mapping[str, str], *, version: str) -> Resource:
    """The resource of this process; OTEL_RESOURCE_ATTRIBUTES overrides what is detected."""
    host = socket.gethostname()
    pod = env.get("K8S_POD_NAME", "").strip()
    # One id per process, so two replicas (or a restart) never share a series.
    instance = f"{pod or host}-{uuid.uuid4()}"
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version,
        "service.name": DEFAULT_SERVICE_NAME,
        "service.version": version,
        "service.instance.id": instance,
        "host.name": host,
    }
    for variable, attribute in _K8S_VARIABLES.items():
        value = env.get(variable, "").strip()
        if value:
            attributes[attribute] = value
    attributes.update(parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    service_name = env.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        attributes["service.name"] = service_name
    return Resource(attributes)
