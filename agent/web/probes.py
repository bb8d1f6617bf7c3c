"""/health, /livez and /readyz, answered from cached check results without waiting."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from aiohttp import web

from agent.health.liveness import liveness, readiness
from agent.health.report import health_json_report, overall_status, seed_report

if TYPE_CHECKING:
    from agent.runtime import Sidecar

HEALTH_JSON = "application/health+json"


def _flags(request: web.Request) -> tuple[bool, set[str]]:
    verbose = "verbose" in request.query and request.query.get("verbose", "") not in ("0", "false")
    exclude = {
        name for value in request.query.getall("exclude", []) for name in value.split(",") if name
    }
    return verbose, exclude


class _Rendered:
    """/health bodies rendered at most every `ttl` seconds: every fact in them is cached anyway."""

    def __init__(self, sidecar: Sidecar, ttl: float = 0.5) -> None:
        self._sidecar = sidecar
        self._ttl = ttl
        self._cache: dict[bool, tuple[float, int, bytes]] = {}

    def get(self, health_json: bool) -> tuple[int, bytes]:
        now = time.monotonic()
        hit = self._cache.get(health_json)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1], hit[2]
        sources = self._sidecar.health_sources
        status = 200 if overall_status(sources) == "ok" else 503
        report = health_json_report(sources) if health_json else seed_report(sources)
        body = json.dumps(report, default=str).encode()
        self._cache[health_json] = (now, status, body)
        return status, body


def setup_probe_routes(app: web.Application, sidecar: Sidecar) -> None:
    """Adds the three probe routes."""
    rendered = _Rendered(sidecar)

    async def health(request: web.Request) -> web.Response:
        health_json = HEALTH_JSON in request.headers.get("Accept", "")
        status, body = rendered.get(health_json)
        return web.Response(
            body=body,
            status=status,
            content_type=HEALTH_JSON if health_json else "application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def livez(request: web.Request) -> web.Response:
        verbose, exclude = _flags(request)
        verdict = liveness(
            sidecar.watchdog,
            sidecar.liveness_hooks,
            lag_threshold=sidecar.settings.health.loop_lag_threshold,
            exclude=exclude,
        )
        return web.Response(
            text=verdict.render("livez", verbose=verbose),
            status=200 if verdict.ok else 500,
            headers={"Cache-Control": "no-store"},
        )

    async def readyz(request: web.Request) -> web.Response:
        verbose, exclude = _flags(request)
        verdict = readiness(
            sidecar.lifecycle,
            sidecar.registry,
            required=sidecar.settings.health.required,
            exclude=exclude,
        )
        return web.Response(
            text=verdict.render("readyz", verbose=verbose),
            status=200 if verdict.ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    app.router.add_get("/health", health)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
