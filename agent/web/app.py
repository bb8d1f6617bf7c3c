"""The aiohttp application factory: probes, APIs and the dashboard, behind tracing and auth."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from agent.web.api import setup_api_routes
from agent.web.connections import CONNECTIONS_KEY, Connections
from agent.web.dashboard import setup_dashboard_routes
from agent.web.dead_letters import setup_dead_letter_routes
from agent.web.deliveries import setup_delivery_routes
from agent.web.metrics_view import MetricsView
from agent.web.middleware import request_middleware
from agent.web.probes import setup_probe_routes

if TYPE_CHECKING:
    from agent.runtime import Sidecar

SIDECAR_KEY = web.AppKey("sidecar", object)


def create_app(sidecar: Sidecar) -> web.Application:
    """Builds the application for one sidecar."""
    telemetry = sidecar.telemetry
    server = sidecar.settings.server
    connections = Connections(server.max_connections)
    app = web.Application(
        middlewares=[
            request_middleware(
                telemetry.tracer("agent.web"),
                telemetry.instruments,
                token=server.api_token,
                trace_probes=sidecar.settings.health.trace_probes,
                connections=connections,
                body_timeout=float(server.body_timeout),
            ),
        ],
        client_max_size=256 * 1024,
    )
    app[SIDECAR_KEY] = sidecar
    app[CONNECTIONS_KEY] = connections
    setup_probe_routes(app, sidecar)
    metrics = MetricsView()
    telemetry.add_metric_listener(metrics)
    setup_api_routes(app, sidecar, metrics)
    setup_dead_letter_routes(app, sidecar)
    setup_delivery_routes(app, sidecar)
    setup_dashboard_routes(app, sidecar)
    return app
