"""Request middleware: a server span and duration for non-probe routes, and the API auth policy."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger
from agent.web.connections import Connections

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBE_PATHS = frozenset({"/health", "/livez", "/readyz"})
# The dashboard polls these itself: their access lines would drown the log view it shows.
QUIET_PREFIXES = ("/api/", "/static/")


def _route_of(request: web.Request) -> str:
    info = request.match_info.route.resource
    canonical = info.canonical if info is not None else ""
    return canonical or "unmatched"


def request_middleware(
    tracer: trace.Tracer,
    instruments: Instruments,
    *,
    token: str,
    trace_probes: bool,
    connections: Connections,
    body_timeout: float,
) -> Middleware:
    """One middleware for every request: its connection counts as busy while it runs;
    probes take a fast path; /api/* is authorised; the rest gets a SERVER span, an access log
    event and http.server.request.duration, and its body must arrive within body_timeout."""
    log = get_logger("http")
    authorise = _authoriser(token)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        connections.begin(transport)
        try:
            path = request.path
            if path in PROBE_PATHS and not trace_probes:
                # Probes are polled often and must stay as cheap as a bare handler.
                return await handler(request)
            if path.startswith("/api/"):
                refusal = authorise(request)
                if refusal is not None:
                    return refusal
            return await _traced(request, handler)
        finally:
            connections.end(transport)

    async def _traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = _route_of(request)
        status = 500
        try:
            ctx = propagate.extract(dict(request.headers))
            with tracer.start_as_current_span(
                f"{request.method} {route}",
                context=ctx,
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": request.method,
                    "url.path": request.path,
                    "http.route": route,
                    "url.scheme": request.scheme,
                },
            ) as span:
                try:
                    late = await _read_body(request, body_timeout)
                    response = late if late is not None else await handler(request)
                except web.HTTPException as exc:
                    status = exc.status
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                    raise
                status = response.status
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
                quiet = status < 400 and request.path.startswith(QUIET_PREFIXES)
                (log.debug if quiet else log.info)(
                    "http.request",
                    method=request.method,
                    route=route,
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
                return response
        finally:
            instruments.http_server_duration.record(
                time.perf_counter() - started,
                {
                    "http.request.method": request.method,
                    "http.route": route,
                    "http.response.status_code": status,
                },
            )

    return middleware


async def _read_body(request: web.Request, seconds: float) -> web.Response | None:
    """Reads the body (aiohttp keeps it for the handler); None, or a 408 closing the connection."""
    if not request.can_read_body:
        return None
    try:
        async with asyncio.timeout(seconds):
            await request.read()
    except TimeoutError:
        response = web.json_response(
            {"error": f"request body not received within {seconds:g}s"}, status=408
        )
        response.force_close()
        return response
    return None


def is_loopback(remote: str | None) -> bool:
    """Whether the peer address is on the loopback range (unix sockets count as local)."""
    if not remote:
        return True
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def _authoriser(token: str) -> Callable[[web.Request], web.Response | None]:
    """/api/* needs the bearer token when one is set, and a loopback client otherwise."""
    expected = f"Bearer {token}".encode() if token else b""

    def authorise(request: web.Request) -> web.Response | None:
        if token:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "unauthorized: send Authorization: Bearer <SIDECAR_API_TOKEN>"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="signal-sidecar"'},
                )
        elif not is_loopback(request.remote):
            return web.json_response(
                {"error": "forbidden: without SIDECAR_API_TOKEN the API answers loopback only"},
                status=403,
            )
        return None

    return authorise
