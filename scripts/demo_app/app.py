"""The demo app's HTTP side: signed webhooks and alerts in, provider files out, one page."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).parent / "static"
MAX_FILE_BYTES = 64 * 1024 * 1024
_KEEP = 200
_BLOCK = bytes(range(256)) * 256  # 64 KiB of a fixed pattern


@dataclass
class Inbox:
    """What the app received, newest last; bounded so a long demo does not grow."""

    secret: str
    webhooks: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_KEEP))
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_KEEP))
    seen_keys: set[str] = field(default_factory=set)
    rejected: int = 0

    def verify(self, body: bytes, header: str) -> bool:
        """X-Signature-256 is sha256=<hex HMAC-SHA256 of the raw body> under the shared secret."""
        if not self.secret:
            return True
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, header)


@dataclass(frozen=True)
class Webhook:
    """One accepted webhook as the page shows it."""

    received_at: float
    idempotency_key: str
    duplicate: bool
    signed: bool
    traceparent: str
    payload: dict[str, Any]


async def _webhook(request: web.Request) -> web.Response:
    inbox: Inbox = request.app[INBOX]
    body = await request.read()
    signature = request.headers.get("X-Signature-256", "")
    if not inbox.verify(body, signature):
        inbox.rejected += 1
        return web.json_response({"error": "bad signature"}, status=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    key = request.headers.get("Idempotency-Key", "")
    duplicate = bool(key) and key in inbox.seen_keys
    inbox.seen_keys.add(key)
    record = Webhook(
        received_at=time.time(),
        idempotency_key=key,
        duplicate=duplicate,
        signed=bool(inbox.secret),
        traceparent=request.headers.get("traceparent", ""),
        payload=payload,
    )
    inbox.webhooks.append(asdict(record))
    links = payload.get("delivery_links") or []
    print(
        f"demo-app: webhook {payload.get('subject')!r} with {len(links)} link(s)"
        + (" (duplicate, ignored)" if duplicate else ""),
        flush=True,
    )
    return web.json_response({"accepted": not duplicate})


async def _alerts(request: web.Request) -> web.Response:
    inbox: Inbox = request.app[INBOX]
    payload = await request.json()
    inbox.alerts.append({"received_at": time.time(), "payload": payload})
    for alert in payload.get("alerts", []):
        name = alert.get("labels", {}).get("alertname")
        print(f"demo-app: alert {name} {alert.get('status')}", flush=True)
    return web.json_response({"ok": True})


async def _api_webhooks(request: web.Request) -> web.Response:
    inbox: Inbox = request.app[INBOX]
    return web.json_response(
        {
            "webhooks": list(reversed(inbox.webhooks)),
            "alerts": list(reversed(inbox.alerts)),
            "rejected": inbox.rejected,
        }
    )


async def _file(request: web.Request) -> web.StreamResponse:
    """A provider's download: size bytes of a fixed pattern, named by the last path segment."""
    size = int(request.match_info["size"])
    if size > MAX_FILE_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FILE_BYTES, actual_size=size)
    name = request.match_info["name"]
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name}"',
        }
    )
    await response.prepare(request)
    remaining = size
    while remaining > 0:
        chunk = _BLOCK[: min(remaining, len(_BLOCK))]
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


INBOX = web.AppKey("inbox", Inbox)


def create_app(secret: str) -> web.Application:
    """The demo app; `secret` is the WEBHOOK_SECRET the sidecar signs with."""
    app = web.Application()
    app[INBOX] = Inbox(secret=secret)
    app.router.add_get("/", _index)
    app.router.add_static("/static", STATIC)
    app.router.add_post("/webhook", _webhook)
    app.router.add_post("/alerts", _alerts)
    app.router.add_get("/api/webhooks", _api_webhooks)
    app.router.add_get(r"/files/{size:\d+}/{name}", _file)
    app.router.add_get("/health", _health)
    return app
