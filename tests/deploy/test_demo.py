"""`make demo` starts the whole stack, delivers a signed webhook, and stops all it started."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.deploy import load_script
from tests.fixtures.collector import JAEGER_BINARY
from tests.fixtures.miniflare import worker_installed
from tests.support.components import ROOT, missing, require_binary, require_file
from tests.support.net import free_port, port_is_open

DEMO = ROOT / "scripts" / "demo.py"
SMOKE_SECONDS = 90
# Startup (Miniflare is the slowest part) plus the smoke window plus a bounded shutdown.
RUN_TIMEOUT = 180


def _require_stack() -> None:
    for binary in ("redis-server", "dovecot", "prometheus", "prometheus-alertmanager", "node"):
        require_binary(binary, "run `make deps`")
    require_file(JAEGER_BINARY, "run `make jaeger`")
    if not worker_installed():
        missing("r2-worker/node_modules", "run `make worker-deps`")


def _demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIDECAR_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_smoke_run_delivers_a_webhook_and_becomes_ready(store: str) -> None:
    _require_stack()
    result = subprocess.run(
        [sys.executable, str(DEMO), "--smoke", str(SMOKE_SECONDS)],
        cwd=ROOT, env=_demo_env(DEMO_STORE=store), capture_output=True, text=True,
        timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "smoke ok" in result.stdout
    assert f"store: {store}" in result.stdout


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_sigterm_stops_every_component_and_exits_0() -> None:
    _require_stack()
    proc = subprocess.Popen(
        [sys.executable, str(DEMO)],
        cwd=ROOT, env=_demo_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        urls = re.findall(r"http://127\.0\.0\.1:(\d+)", "".join(lines))
        assert urls, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + output
    for port in {int(p) for p in urls}:
        assert not port_is_open(port), f"port {port} still open after the demo stopped"


def test_generated_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    demo = load_script("demo")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            demo.prometheus_config("127.0.0.1:18889", "127.0.0.1:19090", "127.0.0.1:19093")
        )
    )
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "127.0.0.1:18889" in config.read_text()


def test_generated_alertmanager_config_routes_to_the_demo_app(tmp_path: Path) -> None:
    amtool = require_binary("amtool", "apt-get install prometheus-alertmanager")
    demo = load_script("demo")
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(demo.alertmanager_config("http://127.0.0.1:18000/alerts")))
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "http://127.0.0.1:18000/alerts" in config.read_text()


async def _post_webhook(secret: str, signature_secret: str) -> tuple[int, int]:
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo_app.app import create_app

    runner = aiohttp.web.AppRunner(create_app(secret))
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    body = json.dumps({"subject": "hello", "delivery_links": []}).encode()
    digest = hmac.new(signature_secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Signature-256": f"sha256={digest}", "Idempotency-Key": "k1",
               "Content-Type": "application/json"}  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            async with session.post(url + "/webhook", data=body, headers=headers) as response:
                status = response.status
            async with session.get(url + "/api/webhooks") as response:
                stored = len((await response.json())["webhooks"])
    finally:
        await runner.cleanup()
    return status, stored


def test_demo_app_accepts_a_correctly_signed_webhook() -> None:
    assert asyncio.run(_post_webhook("s3cret", "s3cret")) == (200, 1)


def test_demo_app_rejects_a_webhook_signed_with_another_secret() -> None:
    assert asyncio.run(_post_webhook("s3cret", "wrong")) == (401, 0)
