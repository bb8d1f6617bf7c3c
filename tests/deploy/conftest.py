"""The deployment tests' expensive parts, shared: the images are built (or found) once a session."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import pytest

from tests.deploy import load_script
from tests.deploy.podman import Podman
from tests.support.components import require_binary

_HINT = "`make system` installs podman, runc, slirp4netns, catatonit and mmdebstrap"


@dataclass(frozen=True)
class ProjectImages:
    """The images `make image` builds, by content tag."""

    base: str
    sidecar: str
    demo_app: str


@pytest.fixture(scope="session")
def image_script() -> ModuleType:
    """scripts/image.py, the code behind `make image`."""
    return load_script("image")


@pytest.fixture(scope="session")
def podman_binary() -> str:
    """podman and what it needs here, or fail (CI) / skip."""
    for binary in ("runc", "slirp4netns", "catatonit", "mmdebstrap"):
        require_binary(binary, _HINT)
    return require_binary("podman", _HINT)


@pytest.fixture(scope="session")
def project_images(podman_binary: str, image_script: ModuleType) -> ProjectImages:
    """The sidecar and demo-app images, as `make image` builds them with podman."""
    log = image_script.Log(quiet=True)
    engine = image_script.Engine(podman_binary)
    base, sidecar, demo_app = image_script.build_project_images(log, engine)
    return ProjectImages(base=base, sidecar=sidecar.ref, demo_app=demo_app.ref)


@pytest.fixture(scope="session")
def machine_wide(image_script: ModuleType) -> Iterator[None]:
    """Held while a test uses names or host ports every run on this machine would use.

    The Kubernetes pod, its podman secret and the compose stack's published ports are fixed; a
    second test run on the same machine waits here (up to 15 minutes) instead of colliding.
    """
    image_script.CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (image_script.CACHE_DIR / "deploy-tests.lock").open("w") as handle:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another test run holds the deployment tests' lock", pytrace=False)
                time.sleep(1)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def podman(podman_binary: str) -> Iterator[Podman]:
    """podman for one test; what the test created is removed afterwards."""
    engine = Podman(podman_binary)
    yield engine
    engine.remove_all()
