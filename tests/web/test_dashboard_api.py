"""/, /api/config, /api/status, /api/logs and /api/rum of a real app over the real log pipeline."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from agent.config import settings_from_mapping
from agent.runtime import Sidecar
from agent.telemetry.logs import configure_logging, get_logger
from agent.web.app import create_app
from agent.web.dashboard import LOG_BUFFER_KEY
from tests.support.telemetry import telemetry_for_tests

SECRET = "wh-secret-7c1d9e2f"
TOKEN = "api-token-5a9b3c7d"


@dataclass
class Running:
    """One app under test, its sidecar and the metric reader behind its telemetry."""

    sidecar: Sidecar
    client: TestClient[Any, Any]
    reader: InMemoryMetricReader


Factory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[Running] = []

    async def factory(
        config: dict[str, Any] | None = None, log_level: str = "debug", **env: str
    ) -> Running:
        settings = settings_from_mapping(
            {"health": {"interval": "200ms", "timeout": "1s"}, **(config or {})},
            env={
                "SIDECAR_DATA_DIR": str(tmp_path / f"data{len(made)}"),
                "ENABLE_BACKGROUND_TASKS": "false",
                "OTEL_METRICS_EXPORTER": "none",
                "WEBHOOK_SECRET": SECRET,
                **env,
            },
        )
        telemetry, _spans, reader, _logs = telemetry_for_tests(settings)
        configure_logging(telemetry, level=log_level, stream=io.StringIO())
        sidecar = Sidecar(settings, telemetry)
        client = TestClient(TestServer(create_app(sidecar)))
        await client.start_server()
        await sidecar.start()
        running = Running(sidecar, client, reader)
        made.append(running)
        return running

    yield factory
    for running in made:
        await running.sidecar.stop(deadline=time.monotonic() + 2)
        await running.client.close()
    configure_logging(None, stream=io.StringIO())


async def _logs(client: TestClient[Any, Any], **params: str) -> list[dict[str, Any]]:
    response = await client.get("/api/logs", params=params)
    assert response.status == 200
    events: list[dict[str, Any]] = (await response.json())["events"]
    return events


def _ours(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events if e["event"].startswith("t.")]


async def test_logs_api_serves_this_process_events_masked_and_newest_first(
    make_app: Factory,
) -> None:
    app = await make_app()
    log = get_logger("webhook")
    log.info("t.first")
    log.warning("t.second", detail=f"signature key {SECRET} leaked")
    events = await _logs(app.client)
    assert _ours(events) == ["t.second", "t.first"]
    assert SECRET not in json.dumps(events)
    assert events[0]["logger"] == "webhook"


async def test_logs_api_filters_by_level_logger_text_and_limit(make_app: Factory) -> None:
    app = await make_app()
    get_logger("imap").debug("t.debug", mailbox="Sales")
    get_logger("imap").error("t.error", mailbox="support")
    get_logger("webhook").warning("t.warning", reason="Timeout from SALES receiver")
    client = app.client
    assert _ours(await _logs(client, level="warning")) == ["t.warning", "t.error"]
    assert _ours(await _logs(client, logger="imap")) == ["t.error", "t.debug"]
    assert _ours(await _logs(client, q="sales")) == ["t.warning", "t.debug"]
    assert _ours(await _logs(client, q="sales", level="info")) == ["t.warning"]
    assert len(await _logs(client, limit="2")) == 2


async def test_logs_api_filters_by_since_and_trace_id(make_app: Factory) -> None:
    app = await make_app()
    log = get_logger("app")
    log.info("t.before")
    time.sleep(0.01)
    since = datetime.now(UTC).isoformat()
    with app.sidecar.telemetry.tracer("test").start_as_current_span("traced") as span:
        log.info("t.inside")
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert _ours(await _logs(app.client, since=since)) == ["t.inside"]
    assert _ours(await _logs(app.client, trace_id=trace_id)) == ["t.inside"]


async def test_logs_api_answers_400_for_a_bad_since_level_or_limit(make_app: Factory) -> None:
    client = (await make_app()).client
    for params in ({"since": "yesterday"}, {"level": "loud"}, {"limit": "x"}, {"limit": "0"}):
        response = await client.get("/api/logs", params=params)
        assert response.status == 400, params
        assert "error" in await response.json()


async def test_log_buffer_stops_receiving_events_once_the_app_is_cleaned_up(
    make_app: Factory,
) -> None:
    app = await make_app()
    buffer = app.client.app[LOG_BUFFER_KEY]
    get_logger("app").info("t.while_running")
    await app.client.close()
    get_logger("app").info("t.after_cleanup")
    assert _ours(buffer.query()) == ["t.while_running"]


async def test_config_api_gives_interval_jaeger_url_and_version_and_no_secret(
    make_app: Factory,
) -> None:
    app = await make_app(
        SIDECAR_DASHBOARD_POLL_INTERVAL="7", JAEGER_UI_URL="http://jaeger.local:16686/"
    )
    response = await app.client.get("/api/config")
    text = await response.text()
    body = json.loads(text)
    assert body["poll_interval"] == 7.0
    assert body["jaeger_ui_url"] == "http://jaeger.local:16686"
    assert body["version"]
    assert SECRET not in text


async def test_status_api_has_overall_status_checks_with_history_and_pollers(
    make_app: Factory,
) -> None:
    app = await make_app()
    await app.sidecar.registry.run_once("redis")
    response = await app.client.get("/api/status")
    body = await response.json()
    assert body["status"] == "ok"
    assert {"redis", "imap", "r2", "collector"} <= set(body["checks"])
    assert len(body["checks"]["redis"]["history"]) >= 2
    assert body["pollers"] == []
    assert body["background_tasks"]["status"] == "disabled"
    assert body["memory"]["rss_mb"] > 0


def _histogram(reader: InMemoryMetricReader, name: str) -> dict[str, HistogramDataPoint]:
    data = reader.get_metrics_data()
    points: dict[str, HistogramDataPoint] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        assert isinstance(point, HistogramDataPoint)
                        key = next(iter((point.attributes or {}).values()))
                        points[str(key)] = point
    return points


async def test_rum_records_page_and_api_timings_into_histograms_in_seconds(
    make_app: Factory,
) -> None:
    app = await make_app()
    body = {
        "page": [
            {"metric": "navigation", "seconds": 0.42},
            {"metric": "first-contentful-paint", "seconds": 0.2},
        ],
        "api": [{"route": "/api/status", "seconds": 0.015}],
    }
    response = await app.client.post("/api/rum", json=body)
    assert response.status == 202
    page = _histogram(app.reader, "browser.page.load.duration")
    assert page["navigation"].count == 1
    assert page["navigation"].sum == pytest.approx(0.42)
    assert page["first-contentful-paint"].count == 1
    api = _histogram(app.reader, "browser.api.request.duration")
    assert api["/api/status"].sum == pytest.approx(0.015)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"page": [{"metric": "navigation", "seconds": -1}]}, 400),
        ({"page": [{"metric": "navigation", "seconds": 1e9}]}, 400),
        ({"page": [{"metric": "navigation", "seconds": "1"}]}, 400),
        ({"page": [{"metric": "made-up", "seconds": 1}]}, 400),
        ({"api": [{"route": "/any/path/the/browser/likes", "seconds": 1}]}, 400),
        ({"page": [{"metric": "navigation", "seconds": 1}], "extra": 1}, 400),
        ({"api": [{"route": "/api/status", "seconds": 0.1}] * 101}, 413),
        ([1, 2, 3], 400),
    ],
)
async def test_rum_refuses_an_invalid_batch_and_records_nothing(
    make_app: Factory, body: Any, status: int
) -> None:
    app = await make_app()
    response = await app.client.post("/api/rum", json=body)
    assert response.status == status
    assert _histogram(app.reader, "browser.page.load.duration") == {}
    assert _histogram(app.reader, "browser.api.request.duration") == {}


async def test_rum_refuses_a_body_over_its_size_bound(make_app: Factory) -> None:
    app = await make_app()
    padding = " " * (17 * 1024)
    response = await app.client.post(
        "/api/rum", data=padding + "{}", headers={"Content-Type": "application/json"}
    )
    assert response.status == 413


async def test_index_is_public_and_embeds_no_secret(make_app: Factory) -> None:
    app = await make_app(SIDECAR_API_TOKEN=TOKEN)
    response = await app.client.get("/")
    html = await response.text()
    assert response.status == 200
    assert '<script type="module" src="static/app.js">' in html
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert TOKEN not in html
    assert SECRET not in html
    script = await app.client.get("/static/app.js")
    assert script.status == 200
    assert TOKEN not in await script.text()


def _non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        address = str(sock.getsockname()[0])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None


async def test_api_refuses_requests_without_the_token_from_any_address(make_app: Factory) -> None:
    app = await make_app(SIDECAR_API_TOKEN=TOKEN)
    await app.client.close()
    server = TestServer(create_app(app.sidecar), host="0.0.0.0")
    await server.start_server()
    hosts = ["127.0.0.1"]
    other = _non_loopback_address()
    if other is not None:
        hosts.append(other)
    try:
        async with aiohttp.ClientSession() as session:
            for host in hosts:
                for path in ("/api/logs", "/api/status", "/api/config", "/api/metrics"):
                    url = f"http://{host}:{server.port}{path}"
                    async with session.get(url) as response:
                        assert response.status == 401, (host, path)
                    async with session.post(
                        f"http://{host}:{server.port}/api/rum", json={"page": []}
                    ) as response:
                        assert response.status == 401, host
                    headers = {"Authorization": f"Bearer {TOKEN}"}
                    async with session.get(url, headers=headers) as response:
                        assert response.status == 200, (host, path)
    finally:
        await server.close()
    assert len(hosts) == 2, "no non-loopback address to test from"


async def test_the_dashboards_own_polling_is_logged_at_debug_other_requests_at_info(
    make_app: Factory,
) -> None:
    app = await make_app(log_level="info")
    for path in ("/api/status", "/api/config", "/static/app.js", "/"):
        assert (await app.client.get(path)).status == 200, path
    assert (await app.client.get("/api/logs", params={"limit": "many"})).status == 400
    buffer = app.client.app[LOG_BUFFER_KEY]
    logged = [
        (e["route"], e["status"], e["level"])
        for e in reversed(buffer.query(limit=1000))
        if e["event"] == "http.request"
    ]
    assert logged == [("/", 200, "info"), ("/api/logs", 400, "info")]
