"""`make demo`: the whole stack as local processes on loopback, so one command shows everything."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
# The test fixtures already know how to start Redis, Dovecot, Miniflare and the collector on
# loopback; the demo reuses their classes (they need pytest installed, not running).
sys.path.insert(0, str(ROOT))

from tests.fixtures.collector import JAEGER_BINARY, TelemetryStack  # noqa: E402
from tests.fixtures.dovecot import Dovecot  # noqa: E402
from tests.fixtures.miniflare import R2Worker, start_r2_worker, worker_installed  # noqa: E402
from tests.fixtures.redis import RedisServer  # noqa: E402
from tests.support.net import free_port, port_is_open  # noqa: E402

COLLECTOR_CONFIG = ROOT / "collector-config"
DEMO_USER = "demo"
# What the demo runs, named as the services of docker-compose.yml (tests/deploy checks both agree).
COMPONENTS = (
    "redis",
    "dovecot",
    "demo-app",
    "r2-worker",
    "jaeger",
    "otel-collector",
    "alertmanager",
    "prometheus",
    "sidecar",
)
# Ports people open, as compose publishes them; a busy one is replaced by a free one (and printed).
PREFERRED_PORTS = {
    "sidecar": 8080,
    "demo-app": 8000,
    "jaeger": 16686,
    "prometheus": 9090,
    "alertmanager": 9093,
}


class DemoError(RuntimeError):
    """A component is missing or did not start; the message says which and where its log is."""


def _binary(name: str, hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise DemoError(f"{name} is not installed ({hint})")
    return path


def _http_status(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, TimeoutError):
        return 0


def _http_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _inherited_env() -> dict[str, str]:
    # The caller's OTEL_*/SIDECAR_* settings would change what the demo shows; they are dropped.
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIDECAR_"))}


@dataclass
class Process:
    """A child process started by the demo, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL if it does not exit in time."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Stack:
    """Everything started so far; stop() undoes it in reverse order."""

    workdir: Path
    smoke: bool
    processes: list[Process] = field(default_factory=list)
    _stops: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def port(self, name: str) -> int:
        """The preferred port of a user-facing service when free (never in smoke mode)."""
        preferred = PREFERRED_PORTS.get(name)
        if self.smoke or preferred is None or port_is_open(preferred):
            return free_port()
        return preferred

    def on_stop(self, name: str, stop: Callable[[], None]) -> None:
        """Registers how to stop a component."""
        self._stops.append((name, stop))

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        """Starts a child in its own session (Ctrl-C reaches the demo, which stops it in order)."""
        log = self.workdir / f"{name}.log"
        with log.open("ab") as output:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**_inherited_env(), **(env or {})},
                cwd=self.workdir,
                start_new_session=True,
            )
        process = Process(name, proc, log)
        self.processes.append(process)
        self.on_stop(name, process.stop)
        return process

    def wait_http(self, process: Process, url: str, timeout: float = 60.0) -> None:
        """Waits until url answers 200, or raises with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process.alive():
                raise DemoError(f"{process.name} exited:\n{process.tail()}")
            if _http_status(url, timeout=1.0) == 200:
                return
            time.sleep(0.2)
        raise DemoError(f"{process.name} did not answer {url} in {timeout:g}s:\n{process.tail()}")

    def stop(self) -> None:
        """Stops every component, newest first; one failure does not keep the rest running."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # one failure must not keep the rest running
                print(f"demo: stopping {name} failed: {exc}", file=sys.stderr)


@dataclass(frozen=True)
class Secrets:
    """Per-run credentials shared by the components."""

    imap_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    webhook_secret: str = field(default_factory=lambda: secrets.token_hex(16))


def start_store(stack: Stack, kind: str) -> str:
    """Redis (REDIS_URL for the sidecar), or "" for the embedded SQLite store."""
    if kind == "sqlite":
        return ""
    binary = _binary("redis-server", "apt-get install redis-server, or DEMO_STORE=sqlite")
    workdir = stack.workdir / "redis"
    workdir.mkdir()
    server = RedisServer(binary, workdir)
    server.start()
    stack.on_stop("redis", server.stop)
    return server.url


def start_dovecot(stack: Stack, password: str) -> Dovecot:
    """Dovecot with one user, `demo`, on plain IMAP on loopback."""
    binary = _binary("dovecot", "apt-get install dovecot-imapd")
    # Dovecot's sockets need a short path that the unprivileged dovecot user can traverse.
    base = Path(tempfile.mkdtemp(prefix="demo-dovecot-"))
    base.chmod(0o755)
    server = Dovecot(binary=binary, base=base, port=free_port(), users={DEMO_USER: password})
    server.write_config()

    def stop() -> None:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

    stack.on_stop("dovecot", stop)
    server.start()
    return server


def demo_app_env(
    url: str, imap_host: str, imap_port: int, creds: Secrets, interval: float
) -> dict[str, str]:
    """The demo app's environment (the same variables compose sets)."""
    host, _, port = url.removeprefix("http://").partition(":")
    return {
        "DEMO_APP_HOST": host,
        "DEMO_APP_PORT": port,
        "DEMO_APP_ORIGIN": url,
        "DEMO_IMAP_HOST": imap_host,
        "DEMO_IMAP_PORT": str(imap_port),
        "DEMO_IMAP_USERNAME": DEMO_USER,
        "DEMO_IMAP_PASSWORD": creds.imap_password,
        "DEMO_MAIL_INTERVAL": f"{interval:g}",
        "WEBHOOK_SECRET": creds.webhook_secret,
    }


def start_demo_app(stack: Stack, dovecot: Dovecot, creds: Secrets, interval: float) -> str:
    """The app that receives webhooks, hosts the linked files and feeds the mailbox."""
    port = stack.port("demo-app")
    url = f"http://127.0.0.1:{port}"
    env = demo_app_env(url, dovecot.host, dovecot.port, creds, interval)
    process = stack.spawn(
        "demo-app",
        [sys.executable, "-m", "demo_app"],
        env={**env, "PYTHONPATH": str(SCRIPTS), "PYTHONUNBUFFERED": "1"},
    )
    stack.wait_http(process, url + "/health")
    return url


def start_worker(stack: Stack, allowed_origin: str) -> R2Worker:
    """The R2 fetch Worker under Miniflare, allowed to fetch from the demo app's origin."""
    _binary("node", "install Node.js 20 or later")
    if not worker_installed():
        raise DemoError("r2-worker/node_modules is missing (run `make worker-deps`)")
    workdir = stack.workdir / "r2-worker"
    workdir.mkdir()
    worker = start_r2_worker(workdir, allowed_hosts=allowed_origin)
    stack.on_stop("r2-worker", worker.stop)
    return worker


def start_telemetry(stack: Stack) -> TelemetryStack:
    """Jaeger (trace store and UI) and the collector, both from tools/bin/jaeger."""
    if not JAEGER_BINARY.exists():
        raise DemoError(f"{JAEGER_BINARY} is missing (run `make jaeger`)")
    workdir = stack.workdir / "telemetry"
    workdir.mkdir()
    telemetry = TelemetryStack(
        workdir=workdir, binary=JAEGER_BINARY, jaeger_query_port=stack.port("jaeger")
    )
    stack.on_stop("otel-collector and jaeger", telemetry.stop)
    telemetry.start()
    return telemetry


def prometheus_config(exporter: str, prometheus: str, alertmanager: str) -> dict[str, Any]:
    """collector-config/prometheus.yml with compose host names replaced by loopback addresses."""
    config: dict[str, Any] = yaml.safe_load((COLLECTOR_CONFIG / "prometheus.yml").read_text())
    targets = {"otel-collector": exporter, "prometheus": prometheus}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [targets[job["job_name"]]]
    for manager in config.get("alerting", {}).get("alertmanagers", []):
        for static in manager.get("static_configs", []):
            static["targets"] = [alertmanager]
    return config


def alertmanager_config(receiver_url: str) -> dict[str, Any]:
    """collector-config/alertmanager.yml with its webhook pointed at the local demo app."""
    config: dict[str, Any] = yaml.safe_load((COLLECTOR_CONFIG / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = receiver_url
    return config


def start_alertmanager(stack: Stack, app_url: str) -> str:
    """Debian's prometheus-alertmanager routing to the demo app's /alerts."""
    binary = _binary("prometheus-alertmanager", "apt-get install prometheus-alertmanager")
    port = stack.port("alertmanager")
    config = stack.workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(app_url + "/alerts")))
    storage = stack.workdir / "alertmanager-data"
    storage.mkdir()
    process = stack.spawn(
        "alertmanager",
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    stack.wait_http(process, url + "/-/ready")
    return url


def start_prometheus(stack: Stack, telemetry: TelemetryStack, alertmanager_url: str) -> str:
    """Debian's prometheus scraping the collector's Prometheus exporter."""
    binary = _binary("prometheus", "apt-get install prometheus")
    port = stack.port("prometheus")
    config = stack.workdir / "prometheus.yml"
    am_address = alertmanager_url.removeprefix("http://")
    exporter = f"127.0.0.1:{telemetry.prometheus_port}"
    config.write_text(yaml.safe_dump(prometheus_config(exporter, f"127.0.0.1:{port}", am_address)))
    storage = stack.workdir / "prometheus-data"
    storage.mkdir()
    process = stack.spawn(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    stack.wait_http(process, url + "/-/ready")
    return url


@dataclass(frozen=True)
class SidecarWiring:
    """Where the sidecar finds everything it talks to."""

    redis_url: str
    imap_host: str
    imap_port: int
    app_url: str
    worker_url: str
    worker_token: str
    otlp_endpoint: str
    jaeger_ui_url: str
    alertmanager_url: str
    poll_interval: float


def sidecar_env(wiring: SidecarWiring, creds: Secrets, data_dir: Path) -> dict[str, str]:
    """The environment of `signal-sidecar run` in the demo (the same variables compose sets)."""
    env = {
        "SIDECAR_DATA_DIR": str(data_dir),
        "IMAP_HOST": wiring.imap_host,
        "IMAP_PORT": str(wiring.imap_port),
        "IMAP_USERNAME": DEMO_USER,
        "IMAP_PASSWORD": creds.imap_password,
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": f"{wiring.poll_interval:g}",
        "WEBHOOK_URL": wiring.app_url + "/webhook",
        "WEBHOOK_SECRET": creds.webhook_secret,
        "R2_FETCH_ENDPOINT": wiring.worker_url,
        "R2_FETCH_TOKEN": wiring.worker_token,
        "LINK_ALLOWED_HOSTS": wiring.app_url,
        "ALERTMANAGER_URL": wiring.alertmanager_url,
        "JAEGER_UI_URL": wiring.jaeger_ui_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": wiring.otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "signal-sidecar",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=demo",
        "OTEL_METRIC_EXPORT_INTERVAL_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
    }
    if wiring.redis_url:
        env["REDIS_URL"] = wiring.redis_url
    return env


def start_sidecar(stack: Stack, wiring: SidecarWiring, creds: Secrets) -> str:
    """`python -m agent run` with the demo's wiring; waits for /livez."""
    port = stack.port("sidecar")
    data_dir = stack.workdir / "sidecar-data"
    data_dir.mkdir()
    process = stack.spawn(
        "sidecar",
        [sys.executable, "-m", "agent", "run", "--host", "127.0.0.1", "--port", str(port)],
        env={**sidecar_env(wiring, creds, data_dir), "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    stack.wait_http(process, url + "/livez")
    return url


def start_all(stack: Stack, *, store: str, mail_interval: float, poll_interval: float) -> None:
    """Starts every component in dependency order and records the URLs people open."""
    creds = Secrets()
    redis_url = start_store(stack, store)
    dovecot = start_dovecot(stack, creds.imap_password)
    app_url = start_demo_app(stack, dovecot, creds, mail_interval)
    worker = start_worker(stack, app_url)
    telemetry = start_telemetry(stack)
    alertmanager_url = start_alertmanager(stack, app_url)
    prometheus_url = start_prometheus(stack, telemetry, alertmanager_url)
    wiring = SidecarWiring(
        redis_url=redis_url,
        imap_host=dovecot.host,
        imap_port=dovecot.port,
        app_url=app_url,
        worker_url=worker.url,
        worker_token=worker.token,
        otlp_endpoint=telemetry.otlp_http_endpoint,
        # A Jaeger built from the Go module proxy has no UI assets (its UI is built from the
        # jaeger-ui repository at release time), so trace links open the query API's JSON.
        jaeger_ui_url=telemetry.jaeger_query_url + "/api/traces/{trace_id}",
        alertmanager_url=alertmanager_url,
        poll_interval=poll_interval,
    )
    sidecar_url = start_sidecar(stack, wiring, creds)
    stack.urls = {
        "dashboard": sidecar_url + "/",
        "health": sidecar_url + "/health",
        "jaeger-api": telemetry.jaeger_query_url + "/api/traces?service=signal-sidecar&limit=20",
        "prometheus": prometheus_url + "/graph?g0.expr=imap_messages_total",
        "alertmanager": alertmanager_url,
        "demo-app": app_url + "/",
    }


def smoke_check(stack: Stack, seconds: float) -> bool:
    """True once a signed webhook reached the demo app and /readyz is 200, within seconds."""
    deadline = time.monotonic() + seconds
    app = stack.urls["demo-app"]
    ready_url = stack.urls["dashboard"].removesuffix("/") + "/readyz"
    webhooks: list[Any] = []
    ready = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            webhooks = _http_json(app + "api/webhooks")["webhooks"]
        ready = _http_status(ready_url)
        if webhooks and ready == 200:
            newest = webhooks[0]["payload"]
            print(f"demo: smoke ok: {len(webhooks)} webhook(s), newest {newest.get('subject')!r}")
            return True
        if any(not p.alive() for p in stack.processes):
            break
        time.sleep(1.0)
    print(f"demo: smoke failed: {len(webhooks)} webhook(s), /readyz {ready}", file=sys.stderr)
    for process in stack.processes:
        state = "running" if process.alive() else f"exited {process.proc.returncode}"
        print(f"--- {process.name} ({state}) ---\n{process.tail()}", file=sys.stderr)
    return False


def _print_urls(stack: Stack, store: str) -> None:
    width = max(len(name) for name in stack.urls)
    print("\nsignal-sidecar demo is running (store: " + (store or "redis") + ")")
    for name, url in stack.urls.items():
        print(f"  {name.ljust(width)}  {url}")
    print(f"  {'logs'.ljust(width)}  {stack.workdir}")
    print("A new mail arrives every few seconds. Ctrl-C stops everything.\n", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--smoke",
        type=float,
        metavar="SECONDS",
        help="wait up to SECONDS for a webhook and /readyz 200, then stop; exit 0 or 1",
    )
    parser.add_argument(
        "--store",
        choices=("redis", "sqlite"),
        default=os.environ.get("DEMO_STORE", "redis"),
        help="state store (default: $DEMO_STORE or redis)",
    )
    parser.add_argument("--mail-interval", type=float, default=6.0, help="seconds between mails")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Starts the stack; runs until Ctrl-C/SIGTERM (or the smoke check ends)."""
    args = _parser().parse_args(argv)
    smoke = args.smoke is not None
    workdir = Path(tempfile.mkdtemp(prefix="signal-sidecar-demo-"))
    stack = Stack(workdir=workdir, smoke=smoke)

    def on_signal(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        start_all(
            stack,
            store=args.store,
            mail_interval=2.0 if smoke else args.mail_interval,
            poll_interval=2.0 if smoke else 5.0,
        )
        _print_urls(stack, args.store)
        if smoke:
            code = 0 if smoke_check(stack, args.smoke) else 1
        else:
            while True:
                time.sleep(1.0)
                dead = [p for p in stack.processes if not p.alive()]
                if dead:
                    for process in dead:
                        print(f"demo: {process.name} exited:\n{process.tail()}", file=sys.stderr)
                    code = 1
                    break
    except KeyboardInterrupt:
        pass
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        # A second Ctrl-C must not leave half the stack running.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("demo: stopping…", flush=True)
        stack.stop()
        if args.keep_logs or code:
            print(f"demo: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
