"""Picks the state-store backend from the settings: Redis when REDIS_URL is set, else SQLite."""

from __future__ import annotations

from pathlib import Path

from agent.config import Settings
from agent.store.base import Store
from agent.store.local import LocalStore
from agent.store.redis import RedisStore

STATE_FILE = "state.sqlite3"


def open_store(settings: Settings, *, tool: bool = False) -> Store:
    """The configured store, not yet started (the caller awaits start() and close()).

    `tool`: for a command that reads or writes a few records beside a running sidecar; the
    embedded store is then opened without the one-sidecar lock (see agent/store/local.py).
    """
    store = settings.store
    # A dead letter is kept as long as its processed id: both say what became of the mail.
    if store.redis_url:
        return RedisStore(
            store.redis_url,
            timeout=float(store.timeout),
            delivery_retention=float(store.delivery_log_retention),
            delivery_max_records=store.delivery_log_max_records,
            dead_letter_retention=float(store.processed_ttl),
        )
    return LocalStore(
        Path(settings.server.data_dir) / STATE_FILE,
        timeout=float(store.timeout),
        delivery_retention=float(store.delivery_log_retention),
        delivery_max_records=store.delivery_log_max_records,
        dead_letter_retention=float(store.processed_ttl),
        instance_lock=not tool,
    )
