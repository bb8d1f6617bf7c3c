"""GET /api/deliveries: what became of each mail, searched in the delivery log."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.delivery_search import entry, parse_query
from agent.store.base import StoreError

if TYPE_CHECKING:
    from agent.runtime import Sidecar


def setup_delivery_routes(app: web.Application, sidecar: Sidecar) -> None:
    """Adds GET /api/deliveries."""
    masker = sidecar.telemetry.masker
    jaeger = sidecar.settings.dashboard.jaeger_ui_url

    async def search(request: web.Request) -> web.Response:
        try:
            query = parse_query(request.query)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            page = await sidecar.store.search_deliveries(query)
        except ValueError:
            return web.json_response(
                {"error": "cursor: expected the next_cursor of an earlier page"}, status=400
            )
        except StoreError as exc:
            error = f"the state store is unavailable: {masker.mask(str(exc))}"
            return web.json_response({"error": error}, status=503)
        body = {
            "deliveries": [entry(record, masker, jaeger) for record in page.records],
            "next_cursor": page.next_cursor,
        }
        return web.json_response(body, dumps=_dumps)

    app.router.add_get("/api/deliveries", search)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
