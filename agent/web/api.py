"""The JSON API the dashboard and scripts read: metrics, alerts (logs and RUM join as they land)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from agent.runtime import Sidecar
    from agent.web.metrics_view import MetricsView


def setup_api_routes(app: web.Application, sidecar: Sidecar, metrics: MetricsView) -> None:
    """Adds /api/metrics and /api/alerts."""

    async def api_metrics(_request: web.Request) -> web.Response:
        return web.json_response(metrics.snapshot())

    async def api_alerts(_request: web.Request) -> web.Response:
        engine = sidecar.components.alerts
        instances = engine.instances() if engine is not None else []
        body = {"alerts": instances, **sidecar.health_sources.alerts_evaluator}
        return web.json_response(body, dumps=_dumps)

    app.router.add_get("/api/metrics", api_metrics)
    app.router.add_get("/api/alerts", api_alerts)


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)
