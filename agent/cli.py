"""The `signal-sidecar` command: run, check, config, alerts, redrive, deliveries.

Each command is one function taking the parsed arguments and returning the exit code. A bad
configuration exits 2, a machine that cannot run it (port taken, data directory not writable)
exits 1; either way with one line on stderr that names the setting, and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent import __version__, gc_settings
from agent.config import ConfigError, Override, Settings, effective_config, load_settings
from agent.startup import StartupError, check_data_dir
from agent.telemetry.masking import Masker

if TYPE_CHECKING:
    from agent.telemetry.setup import Telemetry
    from agent.web.listener import HttpServer

# Seconds from SIGTERM to exit, plus up to webhook.timeout while a webhook request is in flight
# (its answer is awaited and recorded); Kubernetes' grace period is longer than both.
SHUTDOWN_BUDGET = 4.5
EXIT_ENVIRONMENT = 1
EXIT_CONFIGURATION = 2

Command = Callable[[argparse.Namespace], int]
_DESCRIPTION = (
    "The signal-sidecar command: run, check, config check, alerts test, alerts export, redrive, "
    "deliveries."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-sidecar", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"signal-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    run.add_argument("--host", help="bind address (default 0.0.0.0, or SIDECAR_HOST)")
    run.add_argument("--port", help="port, 0 for any free one (default 8080, or SIDECAR_PORT)")
    run.set_defaults(handler=_run)
    check = sub.add_parser("check", help="exit 0 when the local sidecar is ready, 1 otherwise")
    check.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    check.add_argument("--url", help="readiness URL (default http://127.0.0.1:PORT/readyz)")
    check.add_argument("--timeout", type=float, default=3.0)
    check.set_defaults(handler=_check)
    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser(
        "check", help="validate and print the configuration (exit 2: invalid, 1: cannot run here)"
    )
    config_check.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    config_check.set_defaults(handler=_config_check)
    alerts = sub.add_parser("alerts", help="alerting commands")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    alerts_test = alerts_sub.add_parser("test", help="send one test notification to each notifier")
    alerts_test.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    alerts_test.set_defaults(handler=_alerts_test)
    alerts_export = alerts_sub.add_parser(
        "export", help="write the effective alert rules for Prometheus or the Prometheus Operator"
    )
    alerts_export.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    alerts_export.add_argument(
        "--format", choices=("prometheus", "prometheus-operator"), default="prometheus"
    )
    alerts_export.add_argument("--output", "-o", help="file to write (default: standard output)")
    alerts_export.add_argument(
        "--job", help="the sidecars' job label (default: from OTEL_SERVICE_NAME and the resource)"
    )
    alerts_export.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the PrometheusRule (e.g. release=prometheus); repeatable",
    )
    alerts_export.set_defaults(handler=_alerts_export)
    redrive = sub.add_parser(
        "redrive",
        help="re-drive a dead-lettered mail once its cause is fixed, or list dead letters",
        description="Asks the mailbox's poller to deliver a dead-lettered mail again, with its "
        "original Idempotency-Key. Exit 0: delivered (or requested, with --wait 0); 1: not "
        "delivered; 2: bad configuration.",
    )
    redrive.add_argument("email_id", nargs="?", help="the dead letter's email id (Idempotency-Key)")
    redrive.add_argument("--list", action="store_true", help="list dead letters, newest first")
    redrive.add_argument("--all", action="store_true", help="--list also delivered and gone ones")
    redrive.add_argument("--mailbox", help="--list only this mailbox's")
    redrive.add_argument("--json", action="store_true", help="--list as one JSON object a line")
    redrive.add_argument("--limit", type=int, default=100, help="--list at most this many")
    redrive.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the outcome (0: do not)"
    )
    redrive.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    redrive.set_defaults(handler=_redrive)
    deliveries = sub.add_parser(
        "deliveries",
        help="search the delivery log: what became of each mail",
        description="Searches the delivery log in the state store, newest first, as the "
        "dashboard and GET /api/deliveries do. Exit 0: searched (even with no match); 1: the "
        "store is unavailable; 2: a bad option or configuration.",
    )
    deliveries.add_argument("-q", "--q", help="text in the sender, subject or Message-ID")
    deliveries.add_argument("--mailbox", help="only this mailbox's mail")
    deliveries.add_argument(
        "--outcome", help="delivered, dead_lettered, failed, skipped or duplicate"
    )
    deliveries.add_argument(
        "--status",
        help="mail with a link in this status: transferred, failed, unresolved, unavailable, "
        "rejected, skipped",
    )
    deliveries.add_argument("--since", help="ISO 8601 time or date (UTC), or Unix seconds")
    deliveries.add_argument("--until", help="ISO 8601 time or date (UTC), or Unix seconds")
    deliveries.add_argument("--limit", type=int, help="entries a page (default 50, at most 500)")
    deliveries.add_argument("--pages", type=int, default=1, help="pages to print (default 1)")
    deliveries.add_argument("--json", action="store_true", help="one JSON object a line")
    deliveries.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    deliveries.set_defaults(handler=_deliveries)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "redrive" and args.list == bool(args.email_id):
        parser.error("redrive: give either an email id or --list")
    handler: Command = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        _fail(f"invalid configuration: {exc}")
        return EXIT_CONFIGURATION
    except StartupError as exc:
        _fail(f"cannot start: {exc}")
        return EXIT_ENVIRONMENT


def _fail(message: str) -> None:
    print(f"signal-sidecar: {' '.join(message.split())}", file=sys.stderr)


def _load(path: str | None, overrides: dict[str, Override] | None = None) -> Settings:
    settings = load_settings(path, overrides=overrides)
    from agent.alerts.rules import load_alert_config

    load_alert_config(
        settings.alerts, source=settings.source, default_interval=settings.telemetry.export_interval
    )
    return settings


def _config_check(args: argparse.Namespace) -> int:
    """Validates everything that needs no network, and prints the effective configuration."""
    settings = _load(args.config)
    try:
        check_data_dir(settings, create=False)
    except StartupError as exc:
        _fail(f"the configuration is valid but cannot run here: {exc}")
        return EXIT_ENVIRONMENT
    masker = Masker(settings.secrets())
    print(json.dumps(masker.mask_value(effective_config(settings)), indent=2, default=str))
    return 0


def _check(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        server = _load(args.config).server
        if server.port == 0:
            raise ConfigError(
                "server.port (SIDECAR_PORT): 0 picks a port at start; pass --url with the port "
                "the sidecar logged"
            )
        url = f"http://{_local_host(server.host)}:{server.port}/readyz?verbose"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:  # noqa: S310 - local URL
            print(response.read().decode(errors="replace"))
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"))
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


def _local_host(host: str) -> str:
    """Where a local client reaches a listener bound to host."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _alerts_test(args: argparse.Namespace) -> int:
    from agent.alerts.wiring import send_test_notifications

    return asyncio.run(send_test_notifications(_load(args.config)))


def _redrive(args: argparse.Namespace) -> int:
    from agent.redrive_command import redrive_command

    return asyncio.run(redrive_command(_load(args.config), args))


def _deliveries(args: argparse.Namespace) -> int:
    from agent.deliveries_command import deliveries_command

    if args.pages < 1:
        _fail("--pages: expected a positive integer")
        return EXIT_CONFIGURATION
    return asyncio.run(deliveries_command(_load(args.config), args))


def _alerts_export(args: argparse.Namespace) -> int:
    from agent.alerts.export import export_command

    text = export_command(
        _load(args.config),
        output_format=args.format,
        job=args.job,
        labels=args.label,
        env=os.environ,
    )
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            _fail(f"--output: cannot write {args.output}: {exc}")
            return EXIT_ENVIRONMENT
    else:
        sys.stdout.write(text)
    return 0


def _run(args: argparse.Namespace) -> int:
    overrides = {}
    if args.host is not None:
        overrides["server.host"] = Override("--host", args.host)
    if args.port is not None:
        overrides["server.port"] = Override("--port", args.port)
    settings = _load(args.config, overrides)
    check_data_dir(settings, create=True)
    from agent.web.listener import bind

    # Bound before anything starts: a taken port fails fast, and port 0 is known to every part.
    sockets = bind(settings.server.host, settings.server.port)
    port = int(sockets[0].getsockname()[1])
    settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=port))
    try:
        return _serve_until_stopped(settings, sockets)
    finally:
        for sock in sockets:
            sock.close()


def _serve_until_stopped(settings: Settings, sockets: list[socket.socket]) -> int:
    from agent.telemetry.logs import configure_logging
    from agent.telemetry.setup import setup_telemetry

    gc_settings.tune()
    telemetry = setup_telemetry(settings, install_global=True)
    exit_by = time.monotonic() + SHUTDOWN_BUDGET
    try:
        configure_logging(telemetry, level=settings.telemetry.log_level)
        exit_by = asyncio.run(_serve(settings, telemetry, sockets))
    finally:
        # Telemetry gets what is left of the budget: a dead or black-hole collector cannot hold us.
        left = exit_by - time.monotonic()
        telemetry.shutdown(timeout=max(0.3, min(settings.telemetry.shutdown_timeout, left)))
    return 0


async def _serve(settings: Settings, telemetry: Telemetry, sockets: list[socket.socket]) -> float:
    """Serves until SIGTERM/SIGINT, drains, and returns the monotonic time to exit by."""
    from agent.components import start_components
    from agent.runtime import Sidecar
    from agent.web.app import create_app
    from agent.web.listener import HttpServer

    sidecar = Sidecar(settings, telemetry)
    server: HttpServer = HttpServer(create_app(sidecar), sockets, settings.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await sidecar.start(start_components(settings))
    frozen = gc_settings.freeze_startup_heap()
    sidecar.log.info(
        "http.listening",
        host=settings.server.host,
        port=settings.server.port,
        addresses=[f"{host}:{port}" for host, port in server.addresses],
        max_connections=settings.server.max_connections,
        gc_frozen_objects=frozen,
        gc_thresholds=list(gc_settings.thresholds()),
    )
    await stop.wait()
    exit_by = time.monotonic() + SHUTDOWN_BUDGET
    flush_reserve = min(settings.telemetry.shutdown_timeout, 2.0)
    deadline = exit_by - flush_reserve - 0.5
    # Readiness fails at once; the listener stays up while in-flight work drains.
    sidecar.begin_drain()
    await sidecar.stop(deadline=min(deadline, time.monotonic() + settings.server.drain_timeout))
    await server.stop()
    return exit_by
