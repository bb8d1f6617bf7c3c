"""The factory picks Redis when REDIS_URL is set, else the SQLite file in the data dir."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import settings_from_mapping
from agent.store.base import DeadLetter, DeliveryRecord
from agent.store.factory import open_store
from agent.store.local import LocalStore
from agent.store.redis import RedisStore


def test_without_redis_url_the_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    settings = settings_from_mapping({"server": {"data_dir": str(tmp_path / "data")}})
    store = open_store(settings)
    assert isinstance(store, LocalStore)
    assert store.backend == "sqlite"
    assert store.path == tmp_path / "data" / "state.sqlite3"


def test_with_redis_url_the_store_is_redis() -> None:
    settings = settings_from_mapping({}, env={"REDIS_URL": "redis://127.0.0.1:6390/0"})
    store = open_store(settings)
    assert isinstance(store, RedisStore)
    assert store.backend == "redis"


async def test_the_store_is_returned_unstarted(tmp_path: Path) -> None:
    settings = settings_from_mapping({"server": {"data_dir": str(tmp_path)}})
    store = open_store(settings)
    with pytest.raises(RuntimeError, match="start"):
        await store.ping()
    assert not (tmp_path / "state.sqlite3").exists()


async def test_the_configured_retention_reaches_the_store(tmp_path: Path) -> None:
    settings = settings_from_mapping(
        {"server": {"data_dir": str(tmp_path)}, "store": {"delivery_log_retention": "1m"}}
    )
    store = open_store(settings)
    await store.start()
    try:
        now = time.time()
        await store.append_delivery(DeliveryRecord(now - 120, "failed", "box", "old"))
        await store.append_delivery(DeliveryRecord(now - 30, "delivered", "box", "new"))
        assert [r.email_id for r in await store.recent_deliveries(10)] == ["new"]
    finally:
        await store.close()


async def test_dead_letters_are_kept_as_long_as_processed_ids(tmp_path: Path) -> None:
    settings = settings_from_mapping(
        {"server": {"data_dir": str(tmp_path)}, "store": {"processed_ttl": "1m"}}
    )
    store = open_store(settings)
    await store.start()
    try:
        now = time.time()
        for email_id, at in (("old", now - 120), ("new", now - 30)):
            letter = DeadLetter(email_id, "box", 1, 1, "HTTP 400", "webhook_rejected", at)
            record = DeliveryRecord(at, "dead_lettered", "box", email_id)
            await store.record_dead_letter([email_id], 60, record, letter)
        assert [d.email_id for d in await store.dead_letters()] == ["new"]
    finally:
        await store.close()
