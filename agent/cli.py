"""The `signal-sidecar` command: run, check, config check, alerts test, alerts export."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from agent import __version__, gc_settings
from agent.config import ConfigError, Settings, effective_config, load_settings
from agent.telemetry.masking import Masker

if TYPE_CHECKING:
    from agent.telemetry.setup import Telemetry

SHUTDOWN_BUDGET = 4.5  # seconds from SIGTERM to exit; Kubernetes' grace period is longer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signal-sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=f"signal-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    run.add_argument("--host", help="bind address (default 0.0.0.0, or SIDECAR_HOST)")
    run.add_argument("--port", type=int, help="port (default 8080, or SIDECAR_PORT)")
    check = sub.add_parser("check", help="exit 0 when the local sidecar is ready, 1 otherwise")
    check.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    check.add_argument("--url", help="readiness URL (default http://127.0.0.1:PORT/readyz)")
    check.add_argument("--timeout", type=float, default=3.0)
    config = sub.add_parser("config", help="configuration commands")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_check = config_sub.add_parser("check", help="validate and print the configuration")
    config_check.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
    alerts = sub.add_parser("alerts", help="alerting commands")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    alerts_test = alerts_sub.add_parser("test", help="send one test notification to each notifier")
    alerts_test.add_argument("--config", help="TOML file (default: $SIDECAR_CONFIG)")
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
    return parser


def _load(path: str | None) -> Settings:
    settings = load_settings(path)
    from agent.alerts.rules import load_alert_config

    load_alert_config(
        settings.alerts, source=settings.source, default_interval=settings.telemetry.export_interval
    )
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            return _config_check(args.config)
        if args.command == "check":
            return _check(args)
        settings = _load(args.config)
        if args.command == "run":
            return _run(settings, host=args.host, port=args.port)
        if args.command == "alerts" and args.alerts_command == "export":
            return _alerts_export(settings, args)
        if args.command == "alerts":
            return _alerts_test(settings)
    except ConfigError as exc:
        print(f"signal-sidecar: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return 2


def _config_check(path: str | None) -> int:
    try:
        settings = _load(path)
    except ConfigError as exc:
        print(f"signal-sidecar: invalid configuration: {exc}", file=sys.stderr)
        return 1
    masker = Masker(settings.secrets())
    print(json.dumps(masker.mask_value(effective_config(settings)), indent=2, default=str))
    return 0


def _check(args: argparse.Namespace) -> int:
    url = args.url
    if url is None:
        try:
            settings = load_settings(args.config)
            port = settings.server.port
        except ConfigError:
            port = int(os.environ.get("SIDECAR_PORT", "8080"))
        url = f"http://127.0.0.1:{port}/readyz?verbose"
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


def _alerts_test(settings: Settings) -> int:
    from agent.alerts.wiring import send_test_notifications

    return asyncio.run(send_test_notifications(settings))


def _alerts_export(settings: Settings, args: argparse.Namespace) -> int:
    from agent.alerts.export import export_command

    text = export_command(
        settings, output_format=args.format, job=args.job, labels=args.label, env=os.environ
    )
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            print(f"signal-sidecar: --output: cannot write {args.output}: {exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


def _run(settings: Settings, *, host: str | None, port: int | None) -> int:
    from agent.telemetry.logs import configure_logging
    from agent.telemetry.setup import setup_telemetry

    gc_settings.tune()
    telemetry = setup_telemetry(settings, install_global=True)
    configure_logging(telemetry, level=settings.telemetry.log_level)
    exit_by = asyncio.run(_serve(settings, telemetry, host=host, port=port))
    # Telemetry gets what is left of the budget: a dead or black-hole collector cannot hold us.
    left = exit_by - time.monotonic()
    telemetry.shutdown(timeout=max(0.3, min(settings.telemetry.shutdown_timeout, left)))
    return 0


async def _serve(
    settings: Settings, telemetry: Telemetry, *, host: str | None, port: int | None
) -> float:
    """Serves until SIGTERM/SIGINT, drains, and returns the monotonic time to exit by."""
    from agent.components import start_components
    from agent.runtime import Sidecar
    from agent.web.app import create_app

    sidecar = Sidecar(settings, telemetry)
    app = create_app(sidecar)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host or settings.server.host, port or settings.server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await site.start()
    await sidecar.start(start_components(settings))
    frozen = gc_settings.freeze_startup_heap()
    sidecar.log.info(
        "http.listening",
        host=host or settings.server.host,
        port=port or settings.server.port,
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
    await runner.cleanup()
    return exit_by
