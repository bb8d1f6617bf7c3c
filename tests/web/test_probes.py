"""/health, /livez and /readyz from a real app over a real Redis that goes down and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.components import start_components
from agent.config import Settings, settings_from_mapping
from agent.runtime import Sidecar
from agent.web.app import create_app
from agent.web.probes import HEALTH_JSON
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.support.net import free_port
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
        "delivery_log",
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


async def test_an_optional_check_in_error_answers_200_degraded_and_health_json_warn(
    make_client: Factory, receiver: Receiver
) -> None:
    receiver.default = 503
    _sidecar, client = await make_client(APP_HEALTH_URL=f"{receiver.url}/health")

    async def http_check_failed() -> bool:
        body = await (await client.get("/health")).json()
        return bool(body["services"]["http"]["status"] == "error")

    await _wait_for(http_check_failed)
    response = await client.get("/health")
    assert (response.status, (await response.json())["status"]) == (200, "degraded")
    response = await client.get("/health", headers={"Accept": HEALTH_JSON})
    body = await response.json(content_type=None)
    assert (response.status, body["status"]) == (200, "warn")
    assert body["checks"]["http:responseTime"][0]["status"] == "warn"


async def test_a_required_check_in_error_answers_503_error_and_health_json_fail(
    make_client: Factory,
) -> None:
    _sidecar, client = await make_client(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    async def redis_check_failed() -> bool:
        body = await (await client.get("/health")).json()
        return bool(body["services"]["redis"]["status"] == "error")

    await _wait_for(redis_check_failed)
    response = await client.get("/health")
    assert (response.status, (await response.json())["status"]) == (503, "error")
    response = await client.get("/health", headers={"Accept": HEALTH_JSON})
    body = await response.json(content_type=None)
    assert (response.status, body["status"]) == (503, "fail")
    (entry,) = [v[0] for k, v in body["checks"].items() if k.startswith("redis:")]
    assert entry["status"] == "fail"


async def test_a_poller_task_that_ends_fails_livez_and_health_says_so(
    tmp_path: Path, dovecot: Dovecot, receiver: Receiver
) -> None:
    settings = _settings(tmp_path, ENABLE_BACKGROUND_TASKS="true", IMAP_HOST=dovecot.host,
                         IMAP_PORT=str(dovecot.port), IMAP_USERNAME="alice",
                         IMAP_PASSWORD=dovecot.users["alice"], IMAP_TLS="none",
                         IMAP_POLL_INTERVAL="0.2", WEBHOOK_URL=receiver.url)  # fmt: skip
    telemetry, _spans, _reader, _logs = telemetry_for_tests(settings)
    sidecar = Sidecar(settings, telemetry)
    client = TestClient(TestServer(create_app(sidecar)))
    await client.start_server()
    await sidecar.start(start_components(settings))
    try:

        async def leads() -> bool:
            body = await (await client.get("/health")).json()
            return bool(body["services"]["background_tasks"]["imap_poller"]["leader"])

        await _wait_for(leads)
        assert (await client.get("/livez")).status == 200
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "poller:default"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.6)  # past the memos of /livez (0.2 s) and /health (0.5 s)
        assert (await client.get("/livez")).status == 500
        verbose = await (await client.get("/livez?verbose")).text()
        assert "[-]poller:default failed: poller task ended: cancelled" in verbose
        response = await client.get("/health")
        body = await response.json()
        assert (response.status, body["status"]) == (503, "error")
        poller = body["services"]["background_tasks"]["imap_poller"]
        assert poller["status"] == "dead"
        assert poller["mailboxes"]["default"]["error"] == "poller task ended: cancelled"
    finally:
        await sidecar.stop(deadline=time.monotonic() + 2)
        await client.close()


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
