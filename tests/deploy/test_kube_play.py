"""deploy/kubernetes/ played by `podman kube play`: the pod runs, probes pass, the app gets mail.

The manifests are played as an operator deploys them: the ConfigMap edited to point at the
mailbox (here a real Dovecot), the Secret created out of band, the images set to the ones
`make image` built (what the kustomization's `images:` does). The manifests stay as Kubernetes
needs them (tests/deploy/test_kubernetes.py checks them as data). What podman 4.3 does not do as
Kubernetes does, and what the test does in its place:
- `kind: Secret` is stored as YAML while secretKeyRef reads JSON (containers/podman#16269): the
  test creates the podman secret from stringData, as `kubectl create secret` would;
- fieldRef metadata.namespace, spec.nodeName and status.hostIP are not supported, and `$(VAR)`
  in env values is not expanded: the test sets the values a kubelet would (FIELD_VALUES);
- a containerPort without hostPort is published on every host address (containers/podman#18576):
  the test publishes each on 127.0.0.1 at a free port;
- `replicas: 2` would be two pods on this host taking the same ports: the test plays one;
- livenessProbe becomes a curl health check on port 0 (named ports are not resolved, and the
  image has no curl), startupProbe and readinessProbe are ignored: the test runs each probe
  against the pod's published port, as the kubelet would against the pod's address;
- terminationGracePeriodSeconds is ignored (10 s), and `podman kube down` kills at once without
  SIGTERM (containers/podman#22397): the test stops the pod with the manifest's grace period
  first, as the kubelet does, then runs `kube down`.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ProjectImages
from tests.deploy.podman import (
    HOST_LOOPBACK,
    SLIRP,
    Podman,
    http_json,
    http_status,
    wait_until,
)
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.redis import RedisServer
from tests.pipeline import hostile
from tests.support.components import ROOT, require_binary
from tests.support.net import free_port

# The session fixture that builds the images may run in any test here.
pytestmark = pytest.mark.timeout(1200)
MANIFESTS = ROOT / "deploy" / "kubernetes"
WEBHOOK_SECRET = "kube-webhook-secret"
READY_TIMEOUT = 120.0
# The values a kubelet on this host would give the fields podman cannot resolve.
FIELD_VALUES = {
    "metadata.namespace": "email-app",
    "spec.nodeName": "podman-host",
    "status.hostIP": HOST_LOOPBACK,
}


@dataclass(frozen=True)
class PlayedPod:
    """The pod podman made from the Deployment, and where the test reaches its ports."""

    yaml_path: Path
    pod: str
    app: str
    sidecar: str
    host_ports: dict[int, int]
    containers: dict[str, dict[str, Any]]
    grace_seconds: int
    dovecot: Dovecot

    def url(self, container_port: int, path: str) -> str:
        """The loopback URL of a container port."""
        return f"http://127.0.0.1:{self.host_ports[container_port]}{path}"


def _documents() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") in {"ConfigMap", "Secret", "Deployment"}:
                found[document["kind"]] = document
    return found


def _edit_toml(text: str, edits: dict[str, str]) -> str:
    """Replaces `key = old` lines, each exactly once, as an operator edits the ConfigMap."""
    for line, new in edits.items():
        assert text.count(line) == 1, f"the ConfigMap no longer has `{line}`"
        text = text.replace(line, new)
    return text


def _configmap(document: dict[str, Any], dovecot: Dovecot) -> dict[str, Any]:
    toml = _edit_toml(
        document["data"]["sidecar.toml"],
        {
            'host = "imap.mail.example.com"': f'host = "{HOST_LOOPBACK}"',
            "port = 993": f"port = {dovecot.port}",
            'tls = "ssl"': 'tls = "none"',
            'username = "deliveries@example.com"': 'username = "alice"',
            'poll_interval = "30s"': 'poll_interval = "1s"',
        },
    )
    return {**document, "data": {**document["data"], "sidecar.toml": toml}}


def _secret_values(document: dict[str, Any], dovecot: Dovecot, redis: RedisServer) -> str:
    """The podman secret kube play reads for secretKeyRef: JSON of base64 values."""
    values = {key: f"kube-{key.lower()}" for key in document["stringData"]}
    values.update(
        IMAP_PASSWORD=dovecot.users["alice"],
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        REDIS_URL=f"redis://{HOST_LOOPBACK}:{redis.port}/0",
    )
    return json.dumps({key: base64.b64encode(v.encode()).decode() for key, v in values.items()})


def _deployment(
    document: dict[str, Any], images: ProjectImages, host_ports: dict[int, int]
) -> dict[str, Any]:
    deployment: dict[str, Any] = json.loads(json.dumps(document))
    deployment["spec"]["replicas"] = 1
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        container["image"] = {
            "signal-sidecar": images.sidecar,
            "signal-sidecar-demo-app": images.demo_app,
        }[container["image"]]
        for port in container.get("ports", []):
            port.update(hostIP="127.0.0.1", hostPort=host_ports[port["containerPort"]])
        _resolve_env(container.get("env", []))
    return deployment


def _resolve_env(env: list[dict[str, Any]]) -> None:
    """Sets the fieldRef values podman lacks and expands $(NAME) from earlier variables."""
    values: dict[str, str] = {}
    for item in env:
        field_ref = item.get("valueFrom", {}).get("fieldRef")
        if field_ref and field_ref["fieldPath"] in FIELD_VALUES:
            del item["valueFrom"]
            item["value"] = FIELD_VALUES[field_ref["fieldPath"]]
        if "value" in item:
            text = item["value"]
            for name, value in values.items():
                text = text.replace(f"$({name})", value)
            item["value"] = values[item["name"]] = text


def _container_ports(document: dict[str, Any]) -> list[int]:
    containers = document["spec"]["template"]["spec"]["containers"]
    return [port["containerPort"] for c in containers for port in c.get("ports", [])]


def _dovecot(base: Path) -> Dovecot:
    server = Dovecot(
        binary=require_binary("dovecot", "apt-get install dovecot-imapd"),
        base=base,
        port=free_port(),
        users={"alice": "kube-alice-password"},
    )
    server.write_config()
    server.start()
    return server


@pytest.fixture(scope="module")
def played(
    podman_binary: str,
    project_images: ProjectImages,
    machine_wide: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PlayedPod]:
    """The Deployment's pod, running against a real Dovecot and Redis on the host's loopback."""
    podman = Podman(podman_binary)
    documents = _documents()
    # Dovecot's unprivileged processes must traverse its directory: not under pytest's tmp.
    base = Path(tempfile.mkdtemp(prefix="dovecot-kube-"))
    base.chmod(0o755)
    redis = RedisServer(
        require_binary("redis-server", "apt-get install redis-server"),
        tmp_path_factory.mktemp("redis"),
    )
    dovecot = _dovecot(base)
    secret = documents["Secret"]["metadata"]["name"]
    yaml_path = tmp_path_factory.mktemp("kube") / "play.yaml"
    try:
        redis.start()
        host_ports = {port: free_port() for port in _container_ports(documents["Deployment"])}
        deployment = _deployment(documents["Deployment"], project_images, host_ports)
        yaml_path.write_text(
            yaml.safe_dump_all([_configmap(documents["ConfigMap"], dovecot), deployment])
        )
        podman.run("secret", "rm", secret, check=False)
        podman.run(
            "secret", "create", secret, "-",
            input_text=_secret_values(documents["Secret"], dovecot, redis),
        )  # fmt: skip
        podman.run("kube", "play", "--replace", "--network", SLIRP, str(yaml_path), timeout=300)
        pod = f"{deployment['metadata']['name']}-pod-0"
        names = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
        yield PlayedPod(
            yaml_path=yaml_path,
            pod=pod,
            app=f"{pod}-{names[0]}",
            sidecar=f"{pod}-{names[1]}",
            host_ports=host_ports,
            containers={c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]},
            grace_seconds=deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            dovecot=dovecot,
        )
    finally:
        podman.run("kube", "down", str(yaml_path), check=False, timeout=120)
        podman.run("secret", "rm", secret, check=False)
        # podman 4.3 keeps the volume it made of the ConfigMap after kube down.
        configmap = documents["ConfigMap"]["metadata"]["name"]
        podman.run("volume", "rm", "--force", configmap, check=False)
        dovecot.stop()
        redis.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def podman_module(podman_binary: str) -> Podman:
    """podman for read-only looks at the played pod."""
    return Podman(podman_binary)


def _probe_url(played: PlayedPod, container: str, probe: str) -> str:
    spec = played.containers[container]
    get = spec[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in spec["ports"] if p["name"] == port)
    return played.url(port, get["path"])


def _wait_ready(played: PlayedPod, podman: Podman) -> None:
    def ready() -> bool:
        for name in (played.app, played.sidecar):
            if not podman.inspect(name)["State"]["Running"]:
                raise AssertionError(f"{name} exited:\n{podman.logs(name)[-4000:]}")
        return http_status(_probe_url(played, "signal-sidecar", "readinessProbe")) == 200

    try:
        wait_until("the sidecar's readinessProbe passes", ready, READY_TIMEOUT)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{podman.logs(played.sidecar)[-4000:]}") from None


def test_both_containers_of_the_pod_start_as_uid_10001(
    played: PlayedPod, podman_module: Podman
) -> None:
    _wait_ready(played, podman_module)
    for name in (played.app, played.sidecar):
        assert podman_module.run("exec", name, "id", "-u").stdout.strip() == "10001", name


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_each_sidecar_probe_passes_as_the_kubelet_runs_it(
    played: PlayedPod, podman_module: Podman, probe: str
) -> None:
    _wait_ready(played, podman_module)
    assert http_status(_probe_url(played, "signal-sidecar", probe)) == 200


def test_the_app_readiness_probe_passes(played: PlayedPod, podman_module: Podman) -> None:
    _wait_ready(played, podman_module)
    assert http_status(_probe_url(played, "app", "readinessProbe")) == 200


def test_the_root_filesystem_is_read_only_and_only_the_volumes_are_writable(
    played: PlayedPod, podman_module: Podman
) -> None:
    _wait_ready(played, podman_module)
    script = (
        "touch /var/tmp/probe 2>/dev/null && echo root-writable; "
        "touch /var/lib/signal-sidecar/probe /tmp/probe && echo volumes-writable; "
        "grep CapEff /proc/self/status"
    )
    out = podman_module.run("exec", played.sidecar, "sh", "-c", script).stdout
    assert "root-writable" not in out
    assert "volumes-writable" in out
    assert re.search(r"CapEff:\s+0+$", out, re.MULTILINE), out


def test_a_mail_becomes_a_signed_webhook_at_the_app_in_the_pod(
    played: PlayedPod, podman_module: Podman
) -> None:
    _wait_ready(played, podman_module)
    played.dovecot.append("alice", hostile.make_message(message_id="<kube-1@deploy.example>"))
    app_port = played.containers["app"]["ports"][0]["containerPort"]

    def delivered() -> dict[str, Any] | None:
        inbox = http_json(played.url(app_port, "/api/webhooks"))
        return inbox if inbox["webhooks"] else None

    inbox = wait_until("a webhook at the app", delivered, 60)
    (webhook,) = inbox["webhooks"]
    assert webhook["payload"]["message_id"] == "<kube-1@deploy.example>"
    assert webhook["signed"] is True
    assert inbox["rejected"] == 0


def test_the_pod_stops_on_sigterm_within_its_grace_period_and_kube_down_removes_it(
    played: PlayedPod, podman_module: Podman
) -> None:
    _wait_ready(played, podman_module)
    grace = played.grace_seconds
    podman_module.run("pod", "stop", "--time", str(grace), played.pod, timeout=grace + 60)
    state = podman_module.inspect(played.sidecar)["State"]
    # SIGTERM first, SIGKILL after the grace period: 137 would mean the sidecar hung.
    assert state["ExitCode"] == 0, podman_module.logs(played.sidecar)[-4000:]
    assert '"event": "sidecar.stopped"' in podman_module.logs(played.sidecar)
    podman_module.run("kube", "down", str(played.yaml_path), timeout=120)
    assert podman_module.run("pod", "exists", played.pod, check=False).returncode == 1
