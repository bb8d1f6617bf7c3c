"""The dashboard's routes: its static page, and the config, status, logs and RUM APIs it reads."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent import __version__
from agent.health.report import certificates_report, overall_status
from agent.telemetry.logs import add_log_sink, remove_log_sink
from agent.web.logbuffer import LogBuffer, parse_time

if TYPE_CHECKING:
    from agent.runtime import Sidecar

STATIC_DIR = Path(__file__).parent / "static"
LOG_BUFFER_KEY = web.AppKey("log_buffer", LogBuffer)

# The page's own headers: it loads only its own files and talks only to its own origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_LOG_LIMIT_DEFAULT = 200
_LOG_LIMIT_MAX = 1000

# RUM: what one batch may hold. Browsers report milliseconds; the page sends seconds.
RUM_MAX_BODY = 16 * 1024
RUM_MAX_ENTRIES = 100
RUM_MAX_SECONDS = 300.0
PAGE_METRICS = frozenset({"navigation", "first-paint", "first-contentful-paint",
                          "dom-content-loaded"})  # fmt: skip


def setup_dashboard_routes(app: web.Application, sidecar: Sidecar) -> None:
    """Adds /, /static/*, /api/config, /api/status, /api/logs and /api/rum; owns the log buffer."""
    dashboard = sidecar.settings.dashboard
    buffer = LogBuffer(dashboard.log_buffer_events, dashboard.log_buffer_bytes)
    app[LOG_BUFFER_KEY] = buffer
    add_log_sink(buffer)

    async def remove_sink(_app: web.Application) -> None:
        remove_log_sink(buffer)

    app.on_cleanup.append(remove_sink)

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def api_config(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "poll_interval": float(dashboard.poll_interval),
                "jaeger_ui_url": dashboard.jaeger_ui_url.rstrip("/"),
                "version": __version__,
                "rum": {"max_entries": RUM_MAX_ENTRIES},
            }
        )

    async def api_status(_request: web.Request) -> web.Response:
        return web.json_response(status_view(sidecar), dumps=_dumps)

    async def api_logs(request: web.Request) -> web.Response:
        try:
            filters = _log_filters(request.query)
            events = buffer.query(**filters)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"events": events, "buffer": buffer.stats()}, dumps=_dumps)

    async def api_rum(request: web.Request) -> web.Response:
        routes = _api_routes(request.app)
        try:
            body = await _read_bounded_json(request)
            page, api = _validate_rum(body, routes)
        except _RumError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status)
        instruments = sidecar.telemetry.instruments
        for metric, seconds in page:
            instruments.browser_page_load.record(seconds, {"browser.metric": metric})
        for route, seconds in api:
            instruments.browser_api_duration.record(seconds, {"http.route": route})
        return web.json_response({"accepted": len(page) + len(api)}, status=202)

    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.router.add_get("/api/config", api_config)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/logs", api_logs)
    app.router.add_post("/api/rum", api_rum)


def status_view(sidecar: Sidecar) -> dict[str, Any]:
    """What the page shows at the top: overall status, each check with history, each poller."""
    sources = sidecar.health_sources
    pollers = sidecar.components.pollers
    view = {
        "status": overall_status(sources),
        "version": sources.version,
        "time": time.time(),
        "uptime": round(time.time() - sources.lifecycle.started_at, 3),
        "checks": {name: state.as_dict() for name, state in sources.registry.states().items()},
        "pollers": [{"mailbox": poller.mailbox.name, **poller.status()} for poller in pollers],
        "background_tasks": sources.poller(),
        "memory": sources.memory(),
        "deliveries": sources.deliveries(),
        "alerts_firing": sources.alerts_firing(),
        "alerts_evaluator": sources.alerts_evaluator,
        "certificates": certificates_report(sources),
    }
    masked: dict[str, Any] = sidecar.telemetry.masker.mask_value(view)
    return masked


def _log_filters(query: Any) -> dict[str, Any]:
    limit_text = query.get("limit", "")
    try:
        limit = int(limit_text) if limit_text else _LOG_LIMIT_DEFAULT
    except ValueError:
        raise ValueError(f"limit: expected an integer, got {limit_text!r}") from None
    if limit < 1:
        raise ValueError("limit: expected a positive integer")
    since_text = query.get("since", "")
    try:
        since = parse_time(since_text) if since_text else None
    except ValueError:
        raise ValueError(f"since: expected an ISO 8601 time, got {since_text!r}") from None
    return {
        "level": query.get("level") or None,
        "logger": query.get("logger") or None,
        "since": since,
        "q": query.get("q") or None,
        "trace_id": query.get("trace_id") or None,
        "limit": min(limit, _LOG_LIMIT_MAX),
    }


class _RumError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _api_routes(app: web.Application) -> frozenset[str]:
    """The API routes the page may report timings for (a closed set keeps cardinality low)."""
    routes = set()
    for resource in app.router.resources():
        canonical = resource.canonical
        if canonical.startswith("/api/") and canonical != "/api/rum":
            routes.add(canonical)
    return frozenset(routes)


async def _read_bounded_json(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > RUM_MAX_BODY:
        raise _RumError(f"body larger than {RUM_MAX_BODY} bytes", status=413)
    # The request middleware has read the body already, within [server] body_timeout and the
    # app's client_max_size; read() returns that copy.
    raw = await request.read()
    if len(raw) > RUM_MAX_BODY:
        raise _RumError(f"body larger than {RUM_MAX_BODY} bytes", status=413)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _RumError("body is not JSON") from None


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RumError(f"{where}.seconds: expected a number")
    seconds = float(value)
    if not math.isfinite(seconds) or not 0.0 <= seconds <= RUM_MAX_SECONDS:
        raise _RumError(f"{where}.seconds: expected 0..{RUM_MAX_SECONDS:g}")
    return seconds


def _entries(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    entries = body.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _RumError(f"{key}: expected a list of objects")
    return entries


def _validate_rum(
    body: Any, routes: frozenset[str]
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """Checks a whole batch; one bad entry rejects it, so nothing half-valid is recorded."""
    if not isinstance(body, dict):
        raise _RumError("expected an object with 'page' and 'api' lists")
    unknown = set(body) - {"page", "api"}
    if unknown:
        raise _RumError(f"unknown keys: {', '.join(sorted(unknown))}")
    page_entries, api_entries = _entries(body, "page"), _entries(body, "api")
    if len(page_entries) + len(api_entries) > RUM_MAX_ENTRIES:
        raise _RumError(f"more than {RUM_MAX_ENTRIES} entries", status=413)
    page: list[tuple[str, float]] = []
    for index, entry in enumerate(page_entries):
        metric = entry.get("metric")
        if metric not in PAGE_METRICS:
            raise _RumError(f"page[{index}].metric: expected one of {', '.join(PAGE_METRICS)}")
        page.append((str(metric), _seconds(entry.get("seconds"), f"page[{index}]")))
    api: list[tuple[str, float]] = []
    for index, entry in enumerate(api_entries):
        route = entry.get("route")
        if route not in routes:
            raise _RumError(f"api[{index}].route: not an API route of this sidecar")
        api.append((str(route), _seconds(entry.get("seconds"), f"api[{index}]")))
    return page, api


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
