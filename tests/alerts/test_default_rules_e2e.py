"""The default MailDeadLettered and R2TransfersFailing rules in a real sidecar, on real failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.fixtures.alertmanager import RECEIVER_PATH, Alertmanager
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.fileserver import FileServer
from tests.fixtures.miniflare import R2Worker
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(150)

Start = Callable[..., SidecarProcess]
LINKS = 5  # R2TransfersFailing judges from 5 transfers in its window
FIRST_EXPORT = 15.0  # seconds from start to the first periodic metric export

# The default rules as shipped (use_defaults); only the timing and attempts are made short.
CONFIG = """
[imap]
max_attempts = 1
timeout = "5s"

[webhook]
max_attempts = 1
retry_budget = "1s"
timeout = "3s"

[r2]
max_attempts = 1
retry_budget = "5s"

[links]
timeout_default = "20s"

[health]
interval = "1s"
"""


@pytest.fixture
async def app() -> AsyncIterator[Receiver]:
    """The app's webhook endpoint; the `receiver` fixture is where Alertmanager sends alerts."""
    server = Receiver(port=free_port())
    await server.start()
    yield server
    await server.close()


def _env(dovecot: Dovecot, app: Receiver, file_server: FileServer, **extra: str) -> dict[str, str]:
    return {
        **dovecot.env("alice"),
        "WEBHOOK_URL": app.url + "/hook",
        "LINK_ALLOWED_HOSTS": file_server.origin,
        # Nothing leaves for a collector; the alert engine reads every export through the tee.
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        **extra,
    }


def _mail(links: list[str]) -> bytes:
    return make_message(
        subject="Files for you", links=links, message_id=f"<{uuid.uuid4().hex}@alerts.e2e>"
    )


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s")


def _forwarded(receiver: Receiver, path: str, name: str) -> list[dict[str, Any]]:
    """Firing alerts of that name in the notifications that reached the receiver at path."""
    return [
        alert
        for request in receiver.requests
        if request.path == path and request.method == "POST" and request.json
        for alert in request.json.get("alerts", [])
        if alert["labels"].get("alertname") == name and alert["status"] == "firing"
    ]


@pytest.mark.parametrize("refusal", ["401", "5xx"])
async def test_a_refused_mail_and_a_worker_failing_every_file_reach_alertmanager_with_their_labels(
    refusal: str,
    receiver: Receiver,
    alertmanager: Alertmanager,
    app: Receiver,
    dovecot: Dovecot,
    r2_worker: R2Worker,
    file_server: FileServer,
    sidecar_process: Start,
) -> None:
    app.default = 400
    if refusal == "401":
        # A token the Worker does not know: it answers 401 before touching the source.
        token = "not-the-workers-token"
        links = [file_server.url(f"/bytes/{1000 + n}") for n in range(LINKS)]
    else:
        # The right token, but every source answers 500: the Worker answers 502 for each file.
        token = r2_worker.token
        links = [file_server.url(f"/status/500?file={n}") for n in range(LINKS)]
    env = _env(
        dovecot,
        app,
        file_server,
        R2_FETCH_ENDPOINT=r2_worker.url,
        R2_FETCH_TOKEN=token,
        ALERTMANAGER_URL=alertmanager.url,
    )
    await asyncio.to_thread(sidecar_process, env=env, config=CONFIG)
    await asyncio.to_thread(dovecot.append, "alice", _mail(links))

    (delivery,) = await app.wait_for(1, timeout=60)
    statuses = [(link["status"], link["error"]) for link in delivery.json["delivery_links"]]
    expected = "refused the token" if refusal == "401" else "HTTP 502"
    assert len(statuses) == LINKS
    assert all(status == "failed" and expected in error for status, error in statuses), statuses
    keys = await asyncio.to_thread(r2_worker.list_objects)
    assert not [key for key in keys if delivery.json["email_id"] in key], "nothing reached R2"

    dead = await _until(
        lambda: _forwarded(receiver, RECEIVER_PATH, "MailDeadLettered"),
        40,
        "MailDeadLettered from Alertmanager",
    )
    assert dead[0]["labels"] == {
        "alertname": "MailDeadLettered",
        "imap_mailbox": "default",
        "outcome": "dead_lettered",
        "error_type": "webhook_rejected",
        "severity": "critical",
    }
    assert dead[0]["annotations"]["summary"] == (
        "1 mail dead-lettered in mailbox default in the last hour (webhook_rejected)"
    )
    failing = await _until(
        lambda: _forwarded(receiver, RECEIVER_PATH, "R2TransfersFailing"),
        40,
        "R2TransfersFailing from Alertmanager",
    )
    assert failing[0]["labels"] == {"alertname": "R2TransfersFailing", "severity": "warning"}
    assert failing[0]["annotations"]["summary"].startswith("1 of the R2 transfers of the last 15m")


async def test_a_mail_dead_lettered_before_the_first_metric_export_still_fires(
    receiver: Receiver,
    app: Receiver,
    dovecot: Dovecot,
    file_server: FileServer,
    sidecar_process: Start,
) -> None:
    app.default = 400
    # Waiting when the sidecar starts: it is dead-lettered long before the first export (15 s
    # after the process started, which is after `started`).
    await asyncio.to_thread(dovecot.append, "alice", _mail([]))
    env = _env(
        dovecot,
        app,
        file_server,
        OTEL_METRIC_EXPORT_INTERVAL=str(int(FIRST_EXPORT * 1000)),
        ALERT_WEBHOOK_URL=receiver.url + "/alerts",
    )
    started = time.monotonic()
    sidecar = await asyncio.to_thread(sidecar_process, env=env, config=CONFIG)
    await app.wait_for(1, timeout=30)
    assert time.monotonic() - started < FIRST_EXPORT, "dead-lettered after the first export"

    dead = await _until(
        lambda: _forwarded(receiver, "/alerts", "MailDeadLettered"), 40, "MailDeadLettered"
    )
    assert dead[0]["labels"]["imap_mailbox"] == "default"
    assert dead[0]["labels"]["error_type"] == "webhook_rejected"
    assert [e["event"] for e in sidecar.log_events() if e["event"] == "email.dead_lettered"] == [
        "email.dead_lettered"
    ]
