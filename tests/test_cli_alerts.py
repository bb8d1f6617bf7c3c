"""`signal-sidecar alerts test`: a test notification through every notifier, each outcome shown."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.alertmanager import RECEIVER_PATH, Alertmanager
from tests.fixtures.receiver import Receiver
from tests.support.sidecar import ROOT

pytestmark = pytest.mark.timeout(120)

PASSWORD = "hunter2-alert-pw-41c9"
HOOK_PATH = "/hook"


def _hook_url(receiver: Receiver) -> str:
    return f"http://ops:{PASSWORD}@127.0.0.1:{receiver.port}{HOOK_PATH}"


async def _alerts_test(env: dict[str, str], tmp_path: Path) -> tuple[int, str]:
    """Runs the real command without blocking the loop the receiver answers on."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "SIDECAR_", "ALERT_", "ALERTMANAGER_"))
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "alerts",
        "test",
        cwd=ROOT,
        env={**base, "SIDECAR_DATA_DIR": str(tmp_path / "data"), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_alerts_test_notifies_every_notifier_and_exits_zero(
    receiver: Receiver, alertmanager: Alertmanager, tmp_path: Path
) -> None:
    code, output = await _alerts_test(
        {"ALERT_WEBHOOK_URL": _hook_url(receiver), "ALERTMANAGER_URL": alertmanager.url},
        tmp_path,
    )

    assert code == 0, output
    lines = output.strip().splitlines()
    assert any(line.startswith("webhook: ok") for line in lines), output
    assert any(line.startswith("alertmanager: ok") for line in lines), output
    [hook] = [r for r in receiver.requests if r.path == HOOK_PATH]
    assert hook.json["version"] == "4"
    assert hook.json["alerts"][0]["labels"]["alertname"] == "SidecarTestAlert"
    assert hook.headers.get("Authorization", "").startswith("Basic ")
    forwarded = await receiver.wait_for(2, timeout=20)
    via_alertmanager = [r.json for r in forwarded if r.path == RECEIVER_PATH]
    assert via_alertmanager, "Alertmanager did not forward the test alert"
    labels = via_alertmanager[0]["alerts"][0]["labels"]
    assert labels["alertname"] == "SidecarTestAlert"
    assert PASSWORD not in output


async def test_alerts_test_exits_one_after_bounded_retries_when_the_receiver_answers_500(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.default = 500
    code, output = await _alerts_test({"ALERT_WEBHOOK_URL": _hook_url(receiver)}, tmp_path)

    assert code == 1, output
    attempts = len([r for r in receiver.requests if r.path == HOOK_PATH])
    assert 1 < attempts <= 4, f"{attempts} attempts"
    assert f"webhook: failed: http_500 (attempts {attempts}, status 500)" in output
    assert PASSWORD not in output
