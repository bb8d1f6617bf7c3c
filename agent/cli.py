"""The `signal-sidecar` command: run, check, config check, alerts test, redrive."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "redrive" and args.list == bool(args.email_id):
        parser.error("redrive: give either an email id or --list")
    try:
        if args.command == "config":
            return _config_check(args.config)
        if args.command == "check":
            return _check(args)
        settings = _load(args.config)
        if args.command == "run":
            return _run(settings, host=args.host, port=args.port)
        if args.command == "alerts":
            return _alerts_test(settings)
        if args.command == "redrive":
            return asyncio.run(_redrive(settings, args))
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


async def _redrive(settings: Settings, args: argparse.Namespace) -> int:
    """`signal-sidecar redrive`: lists dead letters, or asks for one re-drive and waits for it."""
    from agent.pipeline.redrive import AWAITING, request_redrive, wait_for_outcome
    from agent.store.base import StoreError
    from agent.store.factory import open_store

    masker = Masker(settings.secrets())
    store = open_store(settings)
    try:
        await store.start()
        if args.list:
            statuses = () if args.all else AWAITING
            letters = await store.dead_letters(
                mailbox=args.mailbox, statuses=statuses, limit=max(1, args.limit)
            )
            for letter in letters:
                row = dataclasses.asdict(letter)
                if args.json:
                    print(masker.mask(json.dumps(row)))
                    continue
                at = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(letter.at))
                why = f"{letter.error_type}: {letter.reason}" + (
                    f" ({letter.note})" if letter.note else ""
                )
                print(
                    masker.mask(
                        f"{letter.email_id}  {letter.mailbox}  UID {letter.uid}  {at}  "
                        f"{letter.status}  re-driven {letter.redrives}x  {why}"
                    )
                )
            if not letters and not args.json:
                print("no dead letters" if args.all else "no dead letters waiting for a re-drive")
            return 0
        # Without mailboxes in this configuration (a tooling host), nothing can be judged.
        mailboxes = [box.name for box in settings.mailboxes] or None
        request = await request_redrive(store, args.email_id, mailboxes=mailboxes)
        print(masker.mask(f"{args.email_id}: {request.describe()}"))
        if not request.accepted:
            return 0 if request.answer == "already_delivered" else 1
        if args.wait <= 0:
            return 0
        settled = await wait_for_outcome(store, args.email_id, seconds=args.wait)
        if settled is not None and settled.status == "delivered":
            print(f"{args.email_id}: delivered")
            return 0
        if settled is None or settled.status == "redrive_requested":
            print(
                f"{args.email_id}: still pending after {args.wait:g}s; it is delivered at the "
                "next cycle of whichever replica polls the mailbox"
            )
            return 1
        print(masker.mask(f"{args.email_id}: {settled.status}: {settled.note or settled.reason}"))
        return 1
    except StoreError as exc:
        print(f"signal-sidecar: the state store is unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


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
