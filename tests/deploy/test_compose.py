"""docker-compose.yml as data: pins, ports, the demo's variables (test_compose_up.py runs it)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy import load_script
from tests.support.components import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    return load_script("demo")


def _published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        ports.add(int(str(entry).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_file_parses_into_services(compose: dict[str, Any]) -> None:
    assert isinstance(compose["services"], dict)
    assert compose["services"]


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        _repository, _, tag = image.partition(":")
        assert "@sha256:" in image or (tag and tag != "latest"), f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+", tag or image), f"{name}: {image} has no exact version"


def test_every_service_the_local_demo_runs_is_in_compose(
    compose: dict[str, Any], demo: ModuleType
) -> None:
    assert set(demo.COMPONENTS) <= set(compose["services"])


def test_compose_publishes_the_ports_the_demo_prints(
    compose: dict[str, Any], demo: ModuleType
) -> None:
    for name, port in demo.PREFERRED_PORTS.items():
        assert port in _published_container_ports(compose["services"][name]), name


def test_compose_sidecar_sets_every_variable_the_demo_sets(
    compose: dict[str, Any], demo: ModuleType, tmp_path: Path
) -> None:
    wiring = demo.SidecarWiring(
        redis_url="redis://127.0.0.1:6379/0",
        imap_host="127.0.0.1",
        imap_port=143,
        app_url="http://127.0.0.1:8000",
        worker_url="http://127.0.0.1:8787",
        worker_token="token",
        otlp_endpoint="http://127.0.0.1:4318",
        jaeger_ui_url="http://127.0.0.1:16686",
        alertmanager_url="http://127.0.0.1:9093",
        poll_interval=5.0,
    )
    local = demo.sidecar_env(wiring, demo.Secrets(), tmp_path)
    assert set(local) - set(_environment(compose["services"]["sidecar"])) == set()


def test_compose_demo_app_sets_every_variable_the_demo_sets(
    compose: dict[str, Any], demo: ModuleType
) -> None:
    local = demo.demo_app_env("http://127.0.0.1:8000", "127.0.0.1", 143, demo.Secrets(), 6.0)
    assert set(local) - set(_environment(compose["services"]["demo-app"])) == set()


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build["context"] if isinstance(build, dict) else build)
            assert (context / "Dockerfile").exists(), name
    for name, config in compose.get("configs", {}).items():
        if "file" in config:
            assert (ROOT / config["file"]).exists(), f"config {name}: {config['file']}"


def test_the_collector_runs_collector_config_collector_yaml(compose: dict[str, Any]) -> None:
    collector = compose["services"]["otel-collector"]
    assert "otel/opentelemetry-collector-contrib:" in collector["image"]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in collector["volumes"]}
    config_arg = next(a for a in collector["command"] if a.startswith("--config"))
    assert mounts[config_arg.split("=", 1)[1]] == "./collector-config/collector.yaml"


def test_the_sidecar_exports_to_the_collector_service(compose: dict[str, Any]) -> None:
    endpoint = _environment(compose["services"]["sidecar"])["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert re.fullmatch(r"http://otel-collector:431[78]", endpoint)


def test_every_dependency_waits_on_a_condition(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            assert condition in ("service_healthy", "service_started"), (name, dependency)
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_the_sidecar_waits_for_its_dependencies_to_be_healthy(compose: dict[str, Any]) -> None:
    depends = compose["services"]["sidecar"]["depends_on"]
    for dependency in ("redis", "dovecot", "r2-worker", "demo-app"):
        assert depends[dependency]["condition"] == "service_healthy", dependency


def test_the_sidecar_health_check_is_signal_sidecar_check(compose: dict[str, Any]) -> None:
    test = compose["services"]["sidecar"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "signal-sidecar", "check"]


def _final_stage(dockerfile: str, target: str) -> list[str]:
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in dockerfile.splitlines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = [line]
            stages[match.group(2) or match.group(1)] = current
        elif current:
            current.append(line)
    return stages[target]


def test_the_sidecar_image_is_slim_python_3_11() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1))


def test_the_sidecar_image_runs_as_a_non_root_user() -> None:
    lines = _final_stage(DOCKERFILE.read_text(), "runtime")
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")


def test_the_sidecar_image_has_no_build_tools() -> None:
    text = DOCKERFILE.read_text()
    for stage in ("runtime", "sidecar"):
        body = "\n".join(_final_stage(text, stage))
        assert "build-essential" not in body
        assert "gcc" not in body
        assert "pip install" not in body


def test_the_sidecar_image_is_the_default_target_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    last_from = [line for line in text.splitlines() if line.startswith("FROM ")][-1]
    assert last_from.endswith("AS sidecar")
    stage = "\n".join(_final_stage(text, "sidecar"))
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["signal-sidecar", "check"', stage)


def test_every_published_port_binds_the_host_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for entry in service.get("ports", []):
            assert str(entry).startswith("127.0.0.1:"), f"{name} publishes {entry} on every address"


def test_no_service_relies_on_top_level_configs(compose: dict[str, Any]) -> None:
    """podman-compose ignores `configs:`; a service using it would start without its file."""
    assert "configs" not in compose
    assert not [name for name, service in compose["services"].items() if "configs" in service]
