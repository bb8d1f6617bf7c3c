"""`signal-sidecar redrive`: a dead-lettered mail reaches the app exactly once after its fix."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.sidecar import ROOT, SidecarProcess

pytestmark = pytest.mark.timeout(150)

Start = Callable[..., SidecarProcess]
SECRET = "whsec-redrive-3d7e21"


async def _redrive(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Runs the real command without blocking the loop the receiver answers on."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIDECAR_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "redrive",
        *args,
        cwd=ROOT,
        env={**base, "OTEL_SDK_DISABLED": "true", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _env(dovecot: Dovecot, store: dict[str, str]) -> dict[str, str]:
    """What the sidecar and the command share: the mailbox and the store."""
    return {
        **dovecot.env("alice"),
        "WEBHOOK_SECRET": SECRET,
        **store,
    }


async def _listed(env: dict[str, str], *flags: str) -> list[dict[str, Any]]:
    code, output = await _redrive(env, "--list", "--json", *flags)
    assert code == 0, output
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _keyed(receiver: Receiver, key: str) -> int:
    return sum(1 for r in receiver.requests if r.headers.get("Idempotency-Key") == key)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_dead_lettered_mail_is_delivered_exactly_once_after_a_cli_redrive(
    backend: str,
    request: pytest.FixtureRequest,
    receiver: Receiver,
    dovecot: Dovecot,
    sidecar_process: Start,
    tmp_path: Path,
) -> None:
    if backend == "redis":
        store = {"REDIS_URL": request.getfixturevalue("redis_server").url}
    else:
        store = {"SIDECAR_DATA_DIR": str(tmp_path / "shared-data")}
    env = _env(dovecot, store)
    receiver.default = 400
    sidecar = await asyncio.to_thread(
        sidecar_process,
        env={**env, "WEBHOOK_URL": receiver.url + "/hook", "OTEL_SDK_DISABLED": "true"},
    )
    message_id = f"<{uuid.uuid4().hex}@redrive.e2e>"
    await asyncio.to_thread(dovecot.append, "alice", make_message(message_id=message_id))
    (refused,) = await receiver.wait_for(1, timeout=30)
    key = refused.headers["Idempotency-Key"]

    deadline = time.monotonic() + 20
    while not (waiting := await _listed(env)) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    assert [(d["email_id"], d["status"], d["uid"], d["error_type"]) for d in waiting] == [
        (key, "dead_lettered", 1, "webhook_rejected")
    ]
    assert waiting[0]["reason"] == "HTTP 400: permanent failure"

    receiver.default = 200
    code, output = await _redrive(env, key, "--wait", "30")
    assert code == 0, output
    assert output.strip().splitlines()[-1] == f"{key}: delivered"
    assert _keyed(receiver, key) == 2, "refused once, then delivered once"
    redriven = [r for r in receiver.requests if r.headers.get("Idempotency-Key") == key][-1]
    assert redriven.body == refused.body
    assert redriven.headers["X-Signature-256"] == refused.headers["X-Signature-256"]

    code, output = await _redrive(env, key)
    assert code == 0, output
    assert "already delivered" in output
    assert SECRET not in output
    await asyncio.sleep(2.0)  # four poll cycles: nothing more may reach the app
    assert _keyed(receiver, key) == 2
    assert await _listed(env) == []
    [done] = await _listed(env, "--all")
    assert (done["status"], done["redrives"]) == ("delivered", 1)
    assert "email.redrive" in [e["event"] for e in sidecar.log_events()]


async def test_redrive_of_an_unknown_id_says_so_and_exits_one(tmp_path: Path) -> None:
    code, output = await _redrive({"SIDECAR_DATA_DIR": str(tmp_path)}, "0" * 32)
    assert code == 1
    assert (
        output.strip()
        == f"{'0' * 32}: no dead letter has this id: never dead-lettered, or kept no longer"
    )


async def test_redrive_without_an_id_or_list_is_a_usage_error(tmp_path: Path) -> None:
    code, output = await _redrive({"SIDECAR_DATA_DIR": str(tmp_path)})
    assert code == 2
    assert "give either an email id or --list" in output
    assert "Traceback" not in output
