"""The OTel resource: who emits the telemetry, from the SDK's detectors and the downward API."""

from __future__ import annotations

import os
import socket

from opentelemetry.sdk.resources import (
    OTELResourceDetector,
    Resource,
    ResourceDetector,
    get_aggregated_resources,
)

DEFAULT_SERVICE_NAME = "signal-sidecar"

# The downward-API variables of deploy/kubernetes and the attributes they become.
_K8S_VARIABLES = {
    "K8S_POD_NAME": "k8s.pod.name",
    "K8S_NAMESPACE_NAME": "k8s.namespace.name",
    "K8S_NODE_NAME": "k8s.node.name",
}


class SidecarResourceDetector(ResourceDetector):
    """The sidecar's name and version, its host, its pod, and an instance id people can read."""

    def __init__(self, version: str, instance_id: str) -> None:
        super().__init__()
        self._version = version
        self._instance_id = instance_id

    def detect(self) -> Resource:
        """service.*, host.name and k8s.* attributes."""
        host = socket.gethostname()
        pod = os.environ.get("K8S_POD_NAME", "").strip()
        attributes: dict[str, str] = {
            "service.name": DEFAULT_SERVICE_NAME,
            "service.version": self._version,
            # The SDK's per-process UUID, prefixed by the pod or host name that holds leases.
            "service.instance.id": f"{pod or host}-{self._instance_id}",
            "host.name": host,
        }
        for variable, attribute in _K8S_VARIABLES.items():
            value = os.environ.get(variable, "").strip()
            if value:
                attributes[attribute] = value
        return Resource(attributes)


def build_resource(*, version: str) -> Resource:
    """The resource of this process; OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win.

    `Resource.create()` gives the SDK's attributes (telemetry.sdk.*, a per-process UUID as
    service.instance.id, OTEL_EXPERIMENTAL_RESOURCE_DETECTORS); the sidecar's detector comes
    over it and the SDK's own environment detector last, so what the operator sets wins.
    """
    sdk = Resource.create()
    uuid = str(sdk.attributes.get("service.instance.id", ""))
    return get_aggregated_resources(
        [SidecarResourceDetector(version, uuid), OTELResourceDetector()], initial_resource=sdk
    )
