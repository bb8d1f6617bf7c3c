"""The Kubernetes manifests wire the sidecar as docs/health.md and the issue describe."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import SHUTDOWN_BUDGET
from agent.config_fields import parse_duration
from tests.support.components import ROOT

MANIFESTS = ROOT / "deploy" / "kubernetes"
SECRET_VARIABLES = ("IMAP_PASSWORD", "WEBHOOK_SECRET", "R2_FETCH_TOKEN", "SIDECAR_API_TOKEN",
                    "REDIS_URL")  # fmt: skip
DOWNWARD = {
    "K8S_POD_NAME": "metadata.name",
    "K8S_NAMESPACE_NAME": "metadata.namespace",
    "K8S_NODE_NAME": "spec.nodeName",
}


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[document["kind"]] = document
    return found


@pytest.fixture(scope="module")
def pod(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objects["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == "signal-sidecar")


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_every_manifest_parses_into_kubernetes_objects() -> None:
    for path in MANIFESTS.glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["apiVersion"], path.name
            assert document["kind"], path.name


def test_the_pod_holds_an_app_container_and_the_sidecar(pod: dict[str, Any]) -> None:
    names = [c["name"] for c in pod["containers"]]
    assert "signal-sidecar" in names
    assert len(names) == 2


def test_liveness_probe_is_livez(sidecar: dict[str, Any]) -> None:
    probe = sidecar["livenessProbe"]["httpGet"]
    assert probe["path"] == "/livez"
    assert _port_number(sidecar, probe["port"]) == 8080


def test_readiness_probe_is_readyz(sidecar: dict[str, Any]) -> None:
    probe = sidecar["readinessProbe"]["httpGet"]
    assert probe["path"] == "/readyz"
    assert _port_number(sidecar, probe["port"]) == 8080


def test_a_startup_probe_guards_the_first_start(sidecar: dict[str, Any]) -> None:
    startup = sidecar["startupProbe"]
    assert startup["httpGet"]["path"] == "/livez"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_the_sidecar_has_cpu_and_memory_requests_and_limits(sidecar: dict[str, Any]) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(sidecar["resources"][kind]), kind


def test_downward_api_names_pod_namespace_and_node(sidecar: dict[str, Any]) -> None:
    env = _env(sidecar)
    for name, field in DOWNWARD.items():
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == field


def test_sidecar_config_points_at_the_mounted_configmap_file(
    objects: dict[str, dict[str, Any]], pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    path = Path(_env(sidecar)["SIDECAR_CONFIG"]["value"])
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(path.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = objects["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert path.name in configmap["data"]


def test_secrets_come_from_the_secret_by_key(
    objects: dict[str, dict[str, Any]], sidecar: dict[str, Any]
) -> None:
    env = _env(sidecar)
    secret = objects["Secret"]
    for name in SECRET_VARIABLES:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"], name


def test_the_service_selects_the_pod_and_exposes_the_sidecar(
    objects: dict[str, dict[str, Any]], sidecar: dict[str, Any]
) -> None:
    service = objects["Service"]["spec"]
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    targets = {_port_number(sidecar, p["targetPort"]) for p in service["ports"]
               if p["targetPort"] in ("sidecar-http", 8080)}  # fmt: skip
    assert targets == {8080}


def test_the_sidecar_runs_non_root_on_a_read_only_root_filesystem(
    pod: dict[str, Any], sidecar: dict[str, Any]
) -> None:
    context = sidecar["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("runAsNonRoot", pod["securityContext"].get("runAsNonRoot")) is True


def test_the_data_directory_is_an_empty_dir(pod: dict[str, Any], sidecar: dict[str, Any]) -> None:
    data_dir = _env(sidecar)["SIDECAR_DATA_DIR"]["value"]
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == data_dir)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "emptyDir" in volume


def test_the_grace_period_outlasts_the_shutdown_budget(
    pod: dict[str, Any], objects: dict[str, dict[str, Any]]
) -> None:
    """The budget, plus the answer to a webhook request in flight, which a shutdown awaits."""
    config = tomllib.loads(objects["ConfigMap"]["data"]["sidecar.toml"])
    webhook_timeout = parse_duration(
        config["webhook"]["timeout"], key="webhook.timeout", source="configmap"
    )
    assert pod["terminationGracePeriodSeconds"] > SHUTDOWN_BUDGET + webhook_timeout


def test_several_replicas_come_with_redis(
    objects: dict[str, dict[str, Any]], sidecar: dict[str, Any]
) -> None:
    """SQLite cannot be shared: more than one replica must have REDIS_URL."""
    if objects["Deployment"]["spec"]["replicas"] > 1:
        assert "REDIS_URL" in _env(sidecar)


def test_config_check_accepts_the_configmap_toml(
    objects: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(objects["ConfigMap"]["data"]["sidecar.toml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "OTEL_", "IMAP_"))}
    result = subprocess.run(
        [sys.executable, "-m", "agent", "config", "check", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
