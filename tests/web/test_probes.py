"""/health, /livez and /readyz from a real app over a real Redis that goes down and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.config import Settings, settings_from_mapping
from agent.runtime import Sidecar
from agent.web.app import create_app
from tests.fixtures.redis import RedisServer
from tests.support.telemetry import telemetry_for_tests

Factory = Callable[..., Awaitable[tuple[Sidecar, TestClient[Any, Any]]]]


def _settings(tmp_path: Path, **env: str) -> Settings:
    return settings_from_mapping(
        {
            "health": {
                "interval": "200ms",
                "timeout": "1s",
                "failures_before_error": 1,
                "successes_before_ok": 1,
            }
        },
        env={
            "SIDECAR_DATA_DIR": str(tmp_path / "data"),
            "ENABLE_BACKGROUND_TASKS": "false",
            "OTEL_METRICS_EXPORTER": "none",
            **env,
        },
    )


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[tuple[Sidecar, TestClient[Any, Any]]] = []

    async def factory(**env: str) -> tuple[Sidecar, TestClient[Any, Any]]:
        settings = _settings(tmp_path, **env)
        telemetry, _spans, _reader, _logs = telemetry_for_tests(settings)
        sidecar = Sidecar(settings, telemetry)
        client = TestClient(TestServer(create_app(sidecar)))
        await client.start_server()
        await sidecar.start()
        made.append((sidecar, client))
        return sidecar, client

    yield factory
    for sidecar, client in made:
        await sidecar.stop(deadline=time.monotonic() + 2)
        await client.close()


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_health_follows_redis_down_and_back_with_a_masked_error(
    make_client: Factory, redis_server_with_password: RedisServer
) -> None:
    redis = redis_server_with_password
    _sidecar, client = await make_client(REDIS_URL=redis.url)

    async def status_is(code: int, redis_status: str) -> bool:
        response = await client.get("/health")
        body = await response.json()
        return response.status == code and body["services"]["redis"]["status"] == redis_status

    await _wait_for(lambda: status_is(200, "ok"))
    redis.kill()
    await _wait_for(lambda: status_is(503, "error"))
    response = await client.get("/health")
    text = await response.text()
    body = await response.json()
    assert body["status"] == "error"
    assert body["services"]["redis"]["error"]
    assert redis.password not in text
    readyz = await client.get("/readyz?verbose")
    assert readyz.status == 503
    assert "[-]redis failed" in await readyz.text()
    assert redis.password not in await readyz.text()
    redis.start()
    await _wait_for(lambda: status_is(200, "ok"))
    assert (await client.get("/readyz")).status == 200


async def test_health_has_the_seed_format(make_client: Factory) -> None:
    _sidecar, client = await make_client()
    response = await client.get("/health")
    body = await response.json()
    assert response.status == 200
    assert set(body) >= {"status", "timestamp", "version", "uptime", "services", "metrics"}
    assert set(body["services"]) >= {"redis", "imap", "r2", "collector", "background_tasks"}
    assert body["services"]["redis"]["status"] == "not_configured"
    assert body["services"]["background_tasks"]["imap_poller"]["status"] == "disabled"
    assert set(body["metrics"]) == {
        "memory_usage",
        "active_webhooks",
        "error_rate_24h",
        "last_webhook",
    }
    assert set(body["metrics"]["memory_usage"]) == {
        "rss_mb",
        "vms_mb",
        "percent",
        "available_mb",
        "limit_mb",
    }
    assert body["metrics"]["memory_usage"]["rss_mb"] > 0


async def test_health_json_format_on_request(make_client: Factory) -> None:
    _sidecar, client = await make_client()
    response = await client.get("/health", headers={"Accept": "application/health+json"})
    assert response.headers["Content-Type"].startswith("application/health+json")
    body = await response.json(content_type=None)
    assert body["status"] == "pass"
    assert "checks" in body
    assert "releaseId" in body


async def test_readyz_turns_503_at_once_when_draining(make_client: Factory) -> None:
    sidecar, client = await make_client()
    assert (await client.get("/readyz")).status == 200
    sidecar.begin_drain()
    # The plain answer is memoised for probes; draining must still show on the next request.
    assert (await client.get("/readyz")).status == 503
    response = await client.get("/readyz?verbose")
    assert response.status == 503
    assert "[-]shutdown failed: draining" in await response.text()
    assert (await client.get("/livez")).status == 200


async def test_probes_answer_while_a_check_hangs(make_client: Factory, blackhole: Any) -> None:
    _sidecar, client = await make_client(APP_HEALTH_URL=f"{blackhole.url}/health")
    started = time.monotonic()
    for path in ("/health", "/livez", "/readyz"):
        response = await client.get(path)
        assert response.status in (200, 503)
    assert time.monotonic() - started < 1.0


async def test_api_needs_the_token_when_one_is_set(make_client: Factory) -> None:
    _sidecar, client = await make_client(SIDECAR_API_TOKEN="tok-123456")
    assert (await client.get("/api/alerts")).status == 401
    wrong = await client.get("/api/alerts", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert (await client.get("/livez")).status == 200
