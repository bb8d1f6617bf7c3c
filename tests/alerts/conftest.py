"""Fixtures the alert tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.store.local import LocalStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    """The real embedded SQLite store."""
    local = LocalStore(tmp_path / "state.db")
    await local.start()
    yield local
    await local.close()
