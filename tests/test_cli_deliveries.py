"""`signal-sidecar deliveries`: the delivery log's search as a table or JSON lines, both stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.store.base import DeliveryRecord, LoggedLink, Store
from agent.store.local import LocalStore
from agent.store.redis import RedisStore
from tests.fixtures.redis import RedisServer
from tests.support.components import ROOT

pytestmark = pytest.mark.timeout(120)

SECRET = "whsec-cli-deliveries-81f2"


def _deliveries(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIDECAR_"))}
    return subprocess.run(
        [sys.executable, "-m", "agent", "deliveries", *args],
        cwd=ROOT,
        env={**base, "OTEL_SDK_DISABLED": "true", "WEBHOOK_SECRET": SECRET, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _fill(store: Store) -> None:
    await store.start()
    try:
        now = time.time()
        await store.append_delivery(DeliveryRecord(
            now - 20, "delivered", "alice", "a" * 32, status_code=200,
            sender="Ann <ann@example.org>", subject="Tuesday files", message_id="<t@x>",
            received_at=now - 80,
            links=(LoggedLink("wetransfer", "https://we.tl/t-1", "transferred"),),
        ))  # fmt: skip
        await store.append_delivery(DeliveryRecord(
            now - 10, "dead_lettered", "alice", "b" * 32, status_code=400,
            error=f"HTTP 400: permanent failure {SECRET}", sender="Bob <bob@example.org>",
            subject="Invoice\nnext line", message_id="<i@x>",
        ))  # fmt: skip
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of a sidecar whose store holds two deliveries."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        await _fill(RedisStore(server.url))
        return {"REDIS_URL": server.url, "SIDECAR_DATA_DIR": str(tmp_path)}
    await _fill(LocalStore(tmp_path / "state.sqlite3"))
    return {"SIDECAR_DATA_DIR": str(tmp_path)}


async def test_json_lines_hold_the_api_entries_newest_first(env: dict[str, str]) -> None:
    done = _deliveries(env, "--json")
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["email_id"] for e in entries] == ["b" * 32, "a" * 32]
    assert entries[1]["links"][0]["status"] == "transferred"
    assert entries[1]["lag_seconds"] == pytest.approx(60, abs=0.01)
    assert SECRET not in done.stdout


async def test_the_search_filters_like_the_api(env: dict[str, str]) -> None:
    found = _deliveries(env, "--json", "-q", "TUESDAY")
    assert [json.loads(line)["message_id"] for line in found.stdout.splitlines()] == ["<t@x>"]
    dead = _deliveries(env, "--json", "--outcome", "dead_lettered", "--mailbox", "alice")
    assert [json.loads(line)["message_id"] for line in dead.stdout.splitlines()] == ["<i@x>"]


async def test_the_table_shows_one_row_a_mail_at_a_glance(env: dict[str, str]) -> None:
    done = _deliveries(env)
    assert done.returncode == 0, done.stderr
    header, first, second = done.stdout.splitlines()
    assert header.split()[:3] == ["RECORDED", "OUTCOME", "SENDER"]
    assert "dead_lettered" in first
    assert "Invoice next line" in first  # a newline in a header stays in its row
    assert "wetransfer transferred" in second
    assert "1m" in second or "60s" in second
    assert SECRET not in done.stdout


async def test_no_match_says_so(env: dict[str, str]) -> None:
    done = _deliveries(env, "-q", "nothing like this")
    assert (done.returncode, done.stdout.strip()) == (0, "no deliveries match")


@pytest.mark.parametrize(
    ("args", "named"),
    [(("--outcome", "lost"), "--outcome"), (("--since", "yesterday"), "--since"),
     (("--limit", "9999"), "--limit")],
)  # fmt: skip
def test_a_bad_option_exits_2_naming_it(tmp_path: Path, args: tuple[str, ...], named: str) -> None:
    done = _deliveries({"SIDECAR_DATA_DIR": str(tmp_path)}, *args)
    assert done.returncode == 2
    assert done.stderr.startswith(f"signal-sidecar deliveries: {named}:")
    assert "Traceback" not in done.stderr
