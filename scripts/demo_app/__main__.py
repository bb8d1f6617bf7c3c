"""Runs the demo app (`python -m demo_app` in scripts/); settings from flags or DEMO_* env."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

from aiohttp import web

from demo_app.app import create_app
from demo_app.mail import ImapTarget, feed_mailbox


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="demo_app", description=__doc__)
    parser.add_argument("--host", default=env("DEMO_APP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("DEMO_APP_PORT", "8000")))
    parser.add_argument(
        "--origin",
        default=env("DEMO_APP_ORIGIN", ""),
        help="origin the links in demo mail point to (default http://HOST:PORT)",
    )
    parser.add_argument("--imap-host", default=env("DEMO_IMAP_HOST", ""))
    parser.add_argument("--imap-port", type=int, default=int(env("DEMO_IMAP_PORT", "143")))
    parser.add_argument("--imap-user", default=env("DEMO_IMAP_USERNAME", "demo"))
    parser.add_argument(
        "--mail-interval", type=float, default=float(env("DEMO_MAIL_INTERVAL", "8"))
    )
    return parser


async def _main(args: argparse.Namespace) -> None:
    app = create_app(os.environ.get("WEBHOOK_SECRET", ""))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    origin = args.origin or f"http://{args.host}:{args.port}"
    print(f"demo-app: listening on http://{args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    feeder = None
    if args.imap_host:
        target = ImapTarget(
            args.imap_host,
            args.imap_port,
            args.imap_user,
            os.environ.get("DEMO_IMAP_PASSWORD", ""),
        )
        feeder = asyncio.create_task(
            feed_mailbox(target, origin, interval=args.mail_interval, stop=stop)
        )
    await stop.wait()
    if feeder is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(feeder, timeout=5)
    await runner.cleanup()


def main() -> None:
    """Entry point."""
    asyncio.run(_main(_parser().parse_args()))


if __name__ == "__main__":
    main()
