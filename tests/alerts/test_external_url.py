"""externalURL and generatorURL in alerts name the port the sidecar actually listens on."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.alerts.wiring import external_url
from agent.config import Settings, settings_from_mapping
from tests.fixtures.receiver import Receiver
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(120)

ALWAYS_FIRING = """
[telemetry]
export_interval = "1s"
shutdown_timeout = "0.5s"

[alerts]
use_defaults = false

[[alerts.rules]]
alert = "AlwaysOn"
metric = "process.memory.usage"
function = "value"
op = ">"
threshold = 0
"""


def _with_server(settings: Settings, **changes: Any) -> Settings:
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, **changes))


def test_an_ipv6_listen_address_is_written_in_brackets() -> None:
    settings = _with_server(Settings(), host="::1", port=9100)
    assert external_url(settings) == "http://[::1]:9100"


def test_without_a_bound_port_the_url_names_none() -> None:
    settings = _with_server(Settings(), host="10.0.0.7", port=0)
    assert external_url(settings) == "http://10.0.0.7"


def test_the_configured_external_url_wins() -> None:
    settings = settings_from_mapping({}, env={"SIDECAR_EXTERNAL_URL": "https://ops.example/"})
    assert external_url(_with_server(settings, port=9100)) == "https://ops.example"


async def test_alert_urls_name_the_port_picked_for_port_zero(
    receiver: Receiver, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    env = {
        "ALERT_WEBHOOK_URL": receiver.url + "/alerts",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "ENABLE_BACKGROUND_TASKS": "false",
    }
    sidecar = await asyncio.to_thread(sidecar_process, env=env, config=ALWAYS_FIRING, port=0)
    deadline = time.monotonic() + 30
    while not receiver.requests and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert receiver.requests, "no alert notification in 30s"
    payload = receiver.requests[0].json
    assert sidecar.port not in (0, 8080)
    assert payload["externalURL"] == f"http://127.0.0.1:{sidecar.port}"
    assert payload["alerts"][0]["generatorURL"].startswith(
        f"http://127.0.0.1:{sidecar.port}/api/alerts?"
    )
