"""Runs the real `signal-sidecar run` process for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


class SidecarProcess:
    """One sidecar process on a free loopback port, its output captured to a file."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        config: str | None = None,
        name: str = "sidecar",
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        # port=0 lets the sidecar pick one; start() reads it from the http.listening line.
        self.port = free_port() if port is None else port
        self._ephemeral = port == 0
        self.log_path = workdir / f"{name}.log"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / f"{name}.toml"
            self.config_path.write_text(config)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIDECAR_"))}
        self.env = {
            **base,
            "SIDECAR_DATA_DIR": str(workdir / f"{name}-data"),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 30.0) -> SidecarProcess:
        """Starts the process; by default waits until /livez answers."""
        args = [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        handle = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        if wait:
            if self._ephemeral:
                self.port = self.listening_port(timeout)
            self.wait_live(timeout)
        return self

    def listening_port(self, timeout: float = 30.0) -> int:
        """The port its http.listening log line names, once it has printed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.log_events():
                if event.get("event") == "http.listening":
                    return int(event["port"])
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} logged no http.listening line:\n{self.log_tail()}")

    def wait_live(self, timeout: float = 30.0) -> None:
        """Blocks until /livez answers 200, or raises with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                status, _ = self.get("/livez", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not become live:\n{self.log_tail()}")

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, str]:
        """GET path; returns (status, body) for any HTTP status."""
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """GET path and decode JSON."""
        status, body = self.get(path, headers)
        return status, json.loads(body)

    def terminate(self, timeout: float = 15.0) -> float:
        """SIGTERM; returns the seconds until the process exited."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        """Everything the process printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines it printed."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        """Its JSON log lines, decoded."""
        events = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return events

    def stop(self) -> None:
        """Ends the process whatever its state."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
