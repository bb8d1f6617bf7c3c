"""docker-compose.yml up with podman-compose: every health check passes and mail flows end to end.

podman-compose (PyPI) is the compose implementation for podman 4.3, whose `podman compose`
subcommand does not exist yet; it reads the same docker-compose.yml. The images this machine
cannot pull are swapped for local stand-ins by tests/deploy/compose/standins.yml, which changes
`image:` only. Two things podman 4.3 does not do here, and what the test does instead:
- health checks run from systemd timers, and there is no systemd: the test runs each service's
  own check with `podman healthcheck run` until it passes;
- `depends_on: condition: service_healthy` needs podman 4.6 (podman-compose ignores it, with a
  warning): services start in dependency order, and each retries what it depends on.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ProjectImages
from tests.deploy.podman import Podman, http_json, wait_until
from tests.fixtures.collector import JAEGER_BINARY
from tests.fixtures.miniflare import worker_installed
from tests.support.components import ROOT, missing, require_binary, require_file
from tests.support.net import port_is_open

COMPOSE = ROOT / "docker-compose.yml"
STANDINS = ROOT / "tests" / "deploy" / "compose"
PROJECT = "sst-compose"
COMPOSE_SECRETS = ("IMAP_PASSWORD", "WEBHOOK_SECRET", "R2_FETCH_TOKEN", "SIDECAR_API_TOKEN")
# Stand-in targets of the Containerfile, by the variable standins.yml reads.
STANDIN_TARGETS = {
    "STANDIN_REDIS": "redis",
    "STANDIN_DOVECOT": "dovecot",
    "STANDIN_NODE": "node",
    "STANDIN_JAEGER": "jaeger",
    "STANDIN_ALERTMANAGER": "alertmanager",
    "STANDIN_PROMETHEUS": "prometheus",
}
# Building images (session fixtures) may fall into any test of this module: more than the default.
pytestmark = pytest.mark.timeout(1200)
HEALTHY_TIMEOUT = 240.0
PORTS_TIMEOUT = 180.0
FLOW_TIMEOUT = 180.0


@dataclass(frozen=True)
class Stack:
    """The running compose project."""

    compose: list[str]
    env: dict[str, str]
    services: dict[str, dict[str, Any]]
    podman: Podman

    def container(self, service: str) -> str:
        """The name of the service's (single) container."""
        result = self.podman.run(
            "ps", "--all", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        names = result.stdout.split()
        assert len(names) == 1, f"{service}: containers {names}"
        return names[0]


def _published_ports(services: dict[str, dict[str, Any]]) -> list[int]:
    return [
        int(str(entry).split(":")[-2]) for s in services.values() for entry in s.get("ports", [])
    ]


def _context() -> Path:
    """The stand-ins' build context: this folder plus the two binaries the test bed runs."""
    context = Path(tempfile.mkdtemp(prefix="standins-"))
    for path in STANDINS.iterdir():
        if path.name != "standins.yml":
            shutil.copy2(path, context / path.name)
    node = Path(require_binary("node", "Node.js 20, as for the R2 Worker"))
    for source, name in (
        (require_file(JAEGER_BINARY, "run `make jaeger`"), "jaeger"),
        (node, "node"),
    ):
        try:
            os.link(source.resolve(), context / name)
        except OSError:
            shutil.copy2(source.resolve(), context / name)
    return context


def _build_standins(podman: Podman, image_script: ModuleType) -> dict[str, str]:
    engine = image_script.Engine(podman.binary)
    log = image_script.Log(quiet=True)
    context = _context()
    try:
        with image_script.machine_lock():
            base = image_script.DebianBase().ensure(engine, log)
            inputs = tuple(sorted(context.iterdir()))
            built = {}
            for variable, target in STANDIN_TARGETS.items():
                build = image_script.Build(
                    repository=f"localhost/signal-sidecar-standin-{target}",
                    containerfile=context / "Containerfile", context=context, inputs=inputs,
                    target=target, base_arg="BASE",
                )  # fmt: skip
                built[variable] = image_script.ensure_image(engine, build, base, log).ref
        return built
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _podman_compose() -> list[str]:
    beside = Path(sys.executable).parent / "podman-compose"
    found = str(beside) if beside.exists() else shutil.which("podman-compose") or ""
    if not found:
        missing("podman-compose", "`make deps` installs it from PyPI")
    return [found, "--project-name", PROJECT, "--file", str(COMPOSE), "--file",
            str(STANDINS / "standins.yml")]  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    podman_binary: str,
    project_images: ProjectImages,
    image_script: ModuleType,
    machine_wide: None,
) -> Iterator[Stack]:
    """docker-compose.yml, up with the stand-ins; `down -v` afterwards whatever happened."""
    if not worker_installed():
        missing("r2-worker/node_modules", "run `make worker-deps`")
    podman = Podman(podman_binary)
    services: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    # The published ports are fixed; `make demo` prefers the same ones and may run a moment.
    ports = _published_ports(services)
    wait_until(
        f"the ports docker-compose.yml publishes free on 127.0.0.1: {ports}",
        lambda: not any(port_is_open(port) for port in ports),
        PORTS_TIMEOUT,
    )
    compose = _podman_compose()
    # The stack's own defaults for its secrets, whatever the caller's environment holds.
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    env = {
        **env,
        **_build_standins(podman, image_script),
        "SIDECAR_IMAGE": project_images.sidecar,
        "SIDECAR_DEMO_APP_IMAGE": project_images.demo_app,
    }
    stack = Stack(compose, env, services, podman)
    try:
        _compose(stack, "up", "--detach", "--no-build", timeout=600)
        yield stack
    finally:
        _compose(stack, "down", "--volumes", timeout=300, check=False)
        _remove_leftovers(podman)


def _remove_leftovers(podman: Podman) -> None:
    """Whatever `down` left (a failed `up`, a killed run), found by the project's label."""
    label = f"label=io.podman.compose.project={PROJECT}"
    containers = podman.run("ps", "--all", "--quiet", "--filter", label).stdout.split()
    if containers:
        podman.run("rm", "--force", "--depend", "--time", "0", *containers, check=False)
    volumes = podman.run("volume", "ls", "--quiet", "--filter", label).stdout.split()
    if volumes:
        podman.run("volume", "rm", "--force", *volumes, check=False)
    podman.run("pod", "rm", "--force", f"pod_{PROJECT}", check=False)
    podman.run("network", "rm", "--force", f"{PROJECT}_default", check=False)


def _compose(stack: Stack, *args: str, timeout: float, check: bool = True) -> str:
    result = subprocess.run(
        [*stack.compose, *args], capture_output=True, text=True, env=stack.env, cwd=ROOT,
        timeout=timeout, check=False,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman-compose {args[0]}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout + result.stderr


def _healthy(stack: Stack, service: str) -> bool:
    container = stack.container(service)
    state = stack.podman.inspect(container)["State"]
    if not state["Running"]:
        raise AssertionError(f"{service} exited:\n{stack.podman.logs(container)[-4000:]}")
    return stack.podman.run("healthcheck", "run", container, check=False).returncode == 0


def test_every_service_health_check_passes(stack: Stack) -> None:
    checked = [name for name, service in stack.services.items() if "healthcheck" in service]
    assert len(checked) >= 7
    for service in checked:
        wait_until(
            f"{service} healthy", functools.partial(_healthy, stack, service), HEALTHY_TIMEOUT
        )
    unchecked = set(stack.services) - set(checked)
    for service in unchecked:
        assert stack.podman.inspect(stack.container(service))["State"]["Running"], service


def _transferred_webhook() -> dict[str, Any] | None:
    inbox = http_json("http://127.0.0.1:8000/api/webhooks")
    for webhook in inbox["webhooks"]:
        links = webhook["payload"]["delivery_links"]
        if webhook["signed"] and links and all(link["status"] == "transferred" for link in links):
            return dict(webhook)
    return None


def test_a_demo_mail_becomes_a_signed_webhook_with_its_file_in_r2(stack: Stack) -> None:
    webhook = wait_until("a webhook whose file reached R2", _transferred_webhook, FLOW_TIMEOUT)
    (link,) = webhook["payload"]["delivery_links"]
    assert link["size"] > 0
    assert link["r2_url"]
    assert http_json("http://127.0.0.1:8000/api/webhooks")["rejected"] == 0


def _traces() -> list[Any]:
    query = urllib.parse.urlencode(
        {"service": "signal-sidecar", "operation": "email.process", "limit": 5, "lookback": "1h"}
    )
    return list(http_json(f"http://127.0.0.1:16686/api/traces?{query}")["data"] or [])


def test_the_sidecar_traces_reach_jaeger_through_the_collector(stack: Stack) -> None:
    traces = wait_until("an email.process trace in Jaeger", _traces, FLOW_TIMEOUT)
    names = {span["operationName"] for trace in traces for span in trace["spans"]}
    assert {"email.process", "webhook.deliver"} <= names


def _series(metric: str) -> list[Any]:
    query = urllib.parse.urlencode({"query": metric})
    return list(http_json(f"http://127.0.0.1:9090/api/v1/query?{query}")["data"]["result"])


def test_the_sidecar_metrics_reach_prometheus_through_the_collector(stack: Stack) -> None:
    series = wait_until(
        "webhook deliveries in Prometheus",
        lambda: _series('webhook_deliveries_total{outcome="delivered"}'),
        FLOW_TIMEOUT,
    )
    assert float(series[0]["value"][1]) >= 1


def test_down_v_removes_every_container_and_volume(stack: Stack) -> None:
    _compose(stack, "down", "--volumes", timeout=300)
    for kind in ("ps", "volume"):
        listed = stack.podman.run(
            *([kind, "--all"] if kind == "ps" else [kind, "ls"]), "--quiet",
            "--filter", f"label=io.podman.compose.project={PROJECT}",
        )  # fmt: skip
        assert listed.stdout.split() == [], kind
