"""DeliveryStats over a real store: the 24 h window behind webhook.error_ratio and /health."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from agent.config import Settings
from agent.pipeline.delivery_stats import DeliveryStats
from agent.store.base import DeliveryRecord
from agent.store.redis import RedisStore
from agent.telemetry.setup import Telemetry
from tests.fixtures.redis import RedisServer
from tests.support.telemetry import telemetry_for_tests


@pytest.fixture
def telemetry() -> Iterator[tuple[Telemetry, InMemoryMetricReader]]:
    telemetry, _spans, reader, _logs = telemetry_for_tests(Settings())
    yield telemetry, reader
    telemetry.shutdown(2.0)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, timeout=1.0)
    await store.start()
    yield store
    await store.close()


def _record(outcome: Any, at: float, status: int | None = 200) -> DeliveryRecord:
    return DeliveryRecord(at=at, outcome=outcome, mailbox="box", email_id=f"e{at}",
                          status_code=status)  # fmt: skip


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], float]]:
    data = reader.get_metrics_data()
    found: list[tuple[dict[str, Any], float]] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found.append((dict(point.attributes or {}), point.value))  # type: ignore[union-attr]
    return found


async def test_error_ratio_counts_failed_and_dead_lettered_over_all_in_24h(
    store: RedisStore, telemetry: tuple[Telemetry, InMemoryMetricReader]
) -> None:
    now = time.time()
    for outcome in ("delivered", "delivered", "failed", "dead_lettered"):
        await store.append_delivery(_record(outcome, now - 10))
    stats = DeliveryStats(store, telemetry[0].instruments)
    await stats.refresh()
    assert stats.health()["error_rate_24h"] == 0.5
    assert _points(telemetry[1], "webhook.error_ratio") == [({}, 0.5)]


async def test_deliveries_older_than_24h_leave_the_window(
    store: RedisStore, telemetry: tuple[Telemetry, InMemoryMetricReader]
) -> None:
    now = time.time()
    await store.append_delivery(_record("failed", now - 25 * 3600, status=500))
    await store.append_delivery(_record("delivered", now - 60))
    stats = DeliveryStats(store, telemetry[0].instruments)
    await stats.refresh()
    health = stats.health()
    assert (health["error_rate_24h"], health["deliveries_24h"]) == (0.0, 1)


async def test_window_counts_are_published_per_outcome(
    store: RedisStore, telemetry: tuple[Telemetry, InMemoryMetricReader]
) -> None:
    now = time.time()
    for outcome in ("delivered", "delivered", "dead_lettered"):
        await store.append_delivery(_record(outcome, now - 5))
    stats = DeliveryStats(store, telemetry[0].instruments)
    await stats.refresh()
    counts = {attrs["outcome"]: value for attrs, value in
              _points(telemetry[1], "webhook.window.deliveries")}  # fmt: skip
    assert counts == {"delivered": 2, "failed": 0, "dead_lettered": 1}


async def test_last_webhook_in_health_is_the_newest_record(
    store: RedisStore, telemetry: tuple[Telemetry, InMemoryMetricReader]
) -> None:
    now = time.time()
    await store.append_delivery(_record("delivered", now - 20))
    await store.append_delivery(_record("dead_lettered", now - 1, status=400))
    stats = DeliveryStats(store, telemetry[0].instruments, active=lambda: 3)
    await stats.refresh()
    health = stats.health()
    assert health["active_webhooks"] == 3
    assert health["last_webhook"]["outcome"] == "dead_lettered"
    assert health["last_webhook"]["status_code"] == 400
    assert health["last_webhook"]["at"].endswith("Z")


async def test_no_deliveries_report_zero_ratio_and_publish_no_ratio(
    store: RedisStore, telemetry: tuple[Telemetry, InMemoryMetricReader]
) -> None:
    stats = DeliveryStats(store, telemetry[0].instruments)
    await stats.refresh()
    assert stats.health()["error_rate_24h"] == 0.0
    assert stats.health()["last_webhook"] is None
    assert _points(telemetry[1], "webhook.error_ratio") == []


async def test_a_store_outage_keeps_the_previous_window(
    store: RedisStore,
    redis_server: RedisServer,
    telemetry: tuple[Telemetry, InMemoryMetricReader],
) -> None:
    await store.append_delivery(_record("failed", time.time() - 1, status=500))
    stats = DeliveryStats(store, telemetry[0].instruments)
    await stats.refresh()
    redis_server.kill()
    await stats.refresh()
    assert stats.health()["error_rate_24h"] == 1.0


async def test_health_shows_how_many_records_the_delivery_log_holds_and_since_when(
    store: RedisStore, telemetry: tuple[Telemetry, InMemoryMetricReader]
) -> None:
    stats = DeliveryStats(store, telemetry[0].instruments)
    assert stats.health()["delivery_log"] is None  # not read yet: no claim
    await stats.refresh()
    assert stats.health()["delivery_log"] == {"records": 0, "oldest": None}
    await store.append_delivery(_record("skipped", time.time() - 3 * 86400))
    await store.append_delivery(_record("delivered", time.time() - 60))
    await stats.refresh()
    log = stats.health()["delivery_log"]
    assert log["records"] == 2
    assert log["oldest"].startswith(
        time.strftime("%Y-%m-%dT", time.gmtime(time.time() - 3 * 86400))
    )
