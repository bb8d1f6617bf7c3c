"""The sidecar image, run for real with podman: environment only, the embedded store on a volume.

The container is on slirp4netns with the host's loopback reachable at 10.0.2.2, so the test's
Dovecot and webhook receiver stay on 127.0.0.1; its port 8080 is published on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable

import pytest

from tests.deploy.conftest import ProjectImages
from tests.deploy.podman import HOST_LOOPBACK, SLIRP, Podman, http_status, wait_until
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.pipeline import hostile
from tests.support.net import free_port

# The session fixture that builds the images may run in any test here.
pytestmark = pytest.mark.timeout(1200)
SECRET = "container-webhook-secret"
DATA_DIR = "/var/lib/signal-sidecar"
# compose's stop_grace_period; Kubernetes gives 30 s. Exit code 0 means no SIGKILL was needed.
GRACE_SECONDS = 15
READY_TIMEOUT = 90.0


class Sidecar:
    """One sidecar container and the host port its 8080 is published on."""

    def __init__(self, podman: Podman, name: str, port: int) -> None:
        self.podman = podman
        self.name = name
        self.port = port

    def url(self, path: str) -> str:
        """The published URL of path."""
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self) -> None:
        """Until /readyz answers 200 on the published port (or the container has exited)."""

        def ready() -> bool:
            if not self.podman.inspect(self.name)["State"]["Running"]:
                raise AssertionError(f"{self.name} exited:\n{self.podman.logs(self.name)[-4000:]}")
            return http_status(self.url("/readyz")) == 200

        try:
            wait_until("/readyz 200 on the published port", ready, READY_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.podman.logs(self.name)[-4000:]}") from None


def _environment(dovecot: Dovecot, receiver: Receiver) -> dict[str, str]:
    """Everything the container is told: the embedded store, so no REDIS_URL."""
    return {
        "IMAP_HOST": HOST_LOOPBACK,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": "1",
        "WEBHOOK_URL": f"http://{HOST_LOOPBACK}:{receiver.port}/hook",
        "WEBHOOK_SECRET": SECRET,
        "OTEL_SDK_DISABLED": "true",
    }


StartSidecar = Callable[[str], Sidecar]


def _starter(
    podman: Podman, images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> StartSidecar:
    def start(volume: str) -> Sidecar:
        port = free_port()
        env = [f"--env={key}={value}" for key, value in _environment(dovecot, receiver).items()]
        name = podman.name("sidecar")
        podman.start(
            images.sidecar,
            "--network", SLIRP, "--publish", f"127.0.0.1:{port}:8080",
            "--volume", f"{volume}:{DATA_DIR}", *env, name=name,
        )  # fmt: skip
        return Sidecar(podman, name, port)

    return start


async def _started(start: StartSidecar, volume: str) -> Sidecar:
    # podman and the waits block; the receiver in this event loop must keep answering meanwhile.
    sidecar = await asyncio.to_thread(start, volume)
    await asyncio.to_thread(sidecar.wait_ready)
    return sidecar


def _signed(body: bytes, header: str) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


async def test_livez_and_readyz_answer_on_the_published_loopback_port(
    podman: Podman, project_images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> None:
    sidecar = await _started(_starter(podman, project_images, dovecot, receiver), podman.volume())
    assert http_status(sidecar.url("/livez")) == 200
    assert http_status(sidecar.url("/readyz")) == 200
    bindings = podman.inspect(sidecar.name)["HostConfig"]["PortBindings"]["8080/tcp"]
    assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}


async def test_the_image_healthcheck_passes_once_ready(
    podman: Podman, project_images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> None:
    sidecar = await _started(_starter(podman, project_images, dovecot, receiver), podman.volume())
    result = await asyncio.to_thread(podman.run, "healthcheck", "run", sidecar.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    health = podman.inspect(sidecar.name)["State"]["Health"]
    assert health["Status"] == "healthy", health


async def test_the_container_runs_as_the_non_root_user_and_writes_its_store_to_the_volume(
    podman: Podman, project_images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> None:
    sidecar = await _started(_starter(podman, project_images, dovecot, receiver), podman.volume())
    result = await asyncio.to_thread(
        podman.run, "exec", sidecar.name, "sh", "-c", f"id -u; find {DATA_DIR} -type f -user 10001"
    )
    uid, *files = result.stdout.split()
    assert uid == "10001"
    assert files, f"the sidecar wrote nothing to {DATA_DIR}"


async def test_mail_in_dovecot_becomes_a_signed_webhook_at_the_host(
    podman: Podman, project_images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> None:
    await _started(_starter(podman, project_images, dovecot, receiver), podman.volume())
    dovecot.append("alice", hostile.make_message(message_id="<container-1@deploy.example>"))
    (request,) = await receiver.wait_for(1, timeout=60)
    assert request.path == "/hook"
    assert _signed(request.body, request.headers["X-Signature-256"])
    assert request.json["message_id"] == "<container-1@deploy.example>"


async def test_the_state_volume_survives_a_new_container_and_no_mail_is_delivered_twice(
    podman: Podman, project_images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> None:
    start = _starter(podman, project_images, dovecot, receiver)
    volume = podman.volume()
    first = await _started(start, volume)
    dovecot.append("alice", hostile.make_message(message_id="<before@deploy.example>"))
    await receiver.wait_for(1, timeout=60)
    await asyncio.to_thread(podman.run, "rm", "--force", "--time", str(GRACE_SECONDS), first.name)
    await _started(start, volume)
    dovecot.append("alice", hostile.make_message(message_id="<after@deploy.example>"))
    # Mail is processed in UID order: had the state been lost, "before" would come again first.
    await receiver.wait_for(2, timeout=60)
    await asyncio.sleep(3)  # a few more poll cycles
    ids = [request.json["message_id"] for request in receiver.requests]
    assert ids == ["<before@deploy.example>", "<after@deploy.example>"]


async def test_podman_stop_ends_it_within_the_grace_period_with_a_clean_log_line(
    podman: Podman, project_images: ProjectImages, dovecot: Dovecot, receiver: Receiver
) -> None:
    sidecar = await _started(_starter(podman, project_images, dovecot, receiver), podman.volume())
    await asyncio.to_thread(podman.run, "stop", "--time", str(GRACE_SECONDS), sidecar.name)
    state = podman.inspect(sidecar.name)["State"]
    # podman stop sends SIGTERM, then SIGKILL after the grace period: 137 would mean killed.
    assert state["ExitCode"] == 0, podman.logs(sidecar.name)[-4000:]
    logs = podman.logs(sidecar.name)
    assert '"event": "sidecar.stopped"' in logs or '"event":"sidecar.stopped"' in logs, logs[-4000:]
