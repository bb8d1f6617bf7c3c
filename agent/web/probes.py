"""/health, /livez and /readyz, answered from cached check results without waiting."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from agent.health.liveness import liveness, readiness
from agent.health.report import health_json_report, http_status, overall_status, seed_report

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
        status = http_status(overall_status(sources))
        report = health_json_report(sources) if health_json else seed_report(sources)
        body = json.dumps(report, default=str).encode()
        self._cache[health_json] = (now, status, body)
        return status, body


class _Memo:
    """The plain probe answer, recomputed at most every `ttl` seconds (probes poll often; the
    facts behind them change at the watchdog's tick and the checks' intervals)."""

    def __init__(self, compute: Callable[[], tuple[int, bytes]], ttl: float = 0.2) -> None:
        self._compute = compute
        self._ttl = ttl
        self._at = -1.0
        self._value: tuple[int, bytes] = (500, b"")

    def get(self) -> tuple[int, bytes]:
        now = time.monotonic()
        if now - self._at >= self._ttl:
            self._value = self._compute()
            self._at = now
        return self._value


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

    def live(verbose: bool, exclude: set[str]) -> tuple[int, bytes]:
        verdict = liveness(
            sidecar.watchdog,
            sidecar.liveness_hooks,
            lag_threshold=sidecar.settings.health.loop_lag_threshold,
            exclude=exclude,
        )
        return 200 if verdict.ok else 500, verdict.render("livez", verbose=verbose).encode()

    def ready(verbose: bool, exclude: set[str]) -> tuple[int, bytes]:
        verdict = readiness(
            sidecar.lifecycle,
            sidecar.registry,
            required=sidecar.settings.health.required,
            exclude=exclude,
        )
        return 200 if verdict.ok else 503, verdict.render("readyz", verbose=verbose).encode()

    plain_live = _Memo(lambda: live(False, set()))
    plain_ready = _Memo(lambda: ready(False, set()))

    async def livez(request: web.Request) -> web.Response:
        if request.query_string:
            status, body = live(*_flags(request))
        else:
            status, body = plain_live.get()
        return web.Response(body=body, status=status, content_type="text/plain",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    async def readyz(request: web.Request) -> web.Response:
        if request.query_string or sidecar.lifecycle.draining:
            # Draining must show at once: never answer it from the memo.
            status, body = ready(*_flags(request))
        else:
            status, body = plain_ready.get()
        return web.Response(body=body, status=status, content_type="text/plain",
                            headers={"Cache-Control": "no-store"})  # fmt: skip

    app.router.add_get("/health", health)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
