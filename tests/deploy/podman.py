"""podman, as the deployment tests drive it: containers, volumes and pods they remove afterwards."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Every object a test creates carries this label, so a run cleans up what it made, and only that.
LABEL = "io.signal-sidecar.test"
# From a container on slirp4netns with allow_host_loopback, this address is the host's 127.0.0.1:
# the test's Dovecot and webhook receiver stay on loopback.
HOST_LOOPBACK = "10.0.2.2"
SLIRP = "slirp4netns:allow_host_loopback=true,port_handler=slirp4netns"
_counter = itertools.count()


class PodmanError(AssertionError):
    """A podman command failed; the message has its output."""


@dataclass
class Podman:
    """Runs podman and remembers the objects to remove when the test ends."""

    binary: str
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def run(
        self,
        *args: str,
        timeout: float = 120.0,
        check: bool = True,
        input_text: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """podman ARGS, bounded in time; raises PodmanError with the output when check fails."""
        result = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, timeout=timeout, check=False,
            input=input_text,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args[:3])} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def name(self, what: str) -> str:
        """A name no other test run on this machine uses."""
        return f"sst-{what}-{os.getpid()}-{next(_counter)}"

    def volume(self) -> str:
        """A new named volume."""
        name = self.name("data")
        self.run("volume", "create", "--label", LABEL, name)
        self.volumes.append(name)
        return name

    def start(self, image: str, *args: str, name: str, command: Sequence[str] = ()) -> str:
        """podman run --detach; returns the container's name."""
        self.containers.append(name)
        self.run("run", "--detach", "--name", name, "--label", LABEL, *args, image, *command)
        return name

    def inspect(self, container: str) -> dict[str, Any]:
        """`podman container inspect` of one container."""
        data = json.loads(self.run("container", "inspect", container).stdout)
        return dict(data[0])

    def logs(self, container: str) -> str:
        """Everything the container wrote to stdout and stderr (for failure messages)."""
        try:
            result = self.run("logs", container, check=False, timeout=30)
        except subprocess.TimeoutExpired:
            return f"(podman logs {container} did not answer in 30 s)"
        return result.stdout + result.stderr

    def remove_all(self) -> None:
        """Removes every container and volume this object created (running ones are killed)."""
        for container in reversed(self.containers):
            self.run("rm", "--force", "--time", "0", container, check=False)
        for volume in self.volumes:
            self.run("volume", "rm", "--force", volume, check=False)
        self.containers.clear()
        self.volumes.clear()


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status of GET url; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, TimeoutError):
        return 0


def http_json(url: str, timeout: float = 5.0) -> Any:
    """GET url and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(what: str, check: Callable[[], object], timeout: float, every: float = 0.25) -> Any:
    """Polls check until it returns something true; raises AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)
