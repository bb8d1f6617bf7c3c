"""A sidecar process logging in to Dovecot by OAuth 2.0: delivery, a revoked grant, no leaks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.oauth_server import OAuthServer
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.net import free_port
from tests.support.sidecar import SidecarProcess

pytestmark = pytest.mark.timeout(120)

Start = Callable[..., SidecarProcess]

CONFIG = """
[imap]
timeout = "5s"
reconnect_max_backoff = "1s"

[health]
interval = "1s"
"""


@pytest.fixture
async def app() -> AsyncIterator[Receiver]:
    """The app's webhook endpoint."""
    server = Receiver(port=free_port())
    await server.start()
    yield server
    await server.close()


def oauth_env(dovecot: Dovecot, oauth: OAuthServer, app: Receiver, **extra: str) -> dict[str, str]:
    """alice's INBOX over imaps, logging in with XOAUTH2 and the refresh grant."""
    return {
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.tls_port),
        "IMAP_USERNAME": "alice",
        "IMAP_TLS": "ssl",
        "IMAP_AUTH": "xoauth2",
        "IMAP_POLL_INTERVAL": "0.5",
        "IMAP_OAUTH_TOKEN_URL": oauth.token_url,
        "IMAP_OAUTH_CLIENT_ID": oauth.client_id,
        "IMAP_OAUTH_CLIENT_SECRET": oauth.client_secret,
        "IMAP_OAUTH_REFRESH_TOKEN": oauth.grant("alice"),
        # The test bed's self-signed certificate, trusted as a private CA would be.
        "SSL_CERT_FILE": str(dovecot.cert_path),
        "WEBHOOK_URL": app.url + "/hook",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        **extra,
    }


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first truthy result of check(), polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s")


def stored_bytes(data_dir: Path) -> bytes:
    """Every file the sidecar keeps in its data directory (the SQLite store and its journal)."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


async def test_a_revoked_grant_stops_login_with_a_clear_error_and_no_secret_leaks(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, app: Receiver, sidecar_process: Start
) -> None:
    env = oauth_env(dovecot_oauth, oauth_server, app)
    sidecar = await asyncio.to_thread(sidecar_process, env=env, config=CONFIG)
    await asyncio.to_thread(
        dovecot_oauth.append, "alice", make_message(subject="first", message_id="<first@oauth>")
    )
    (delivery,) = await app.wait_for(1, timeout=30)
    assert delivery.json["subject"] == "first"

    oauth_server.revoke_all("alice")
    await asyncio.to_thread(dovecot_oauth.kick, "alice")  # the poller must log in again
    await asyncio.to_thread(
        dovecot_oauth.append, "alice", make_message(subject="second", message_id="<second@oauth>")
    )

    def imap_failing() -> dict[str, Any] | None:
        _, health = sidecar.get_json("/health")
        poller = health["services"]["background_tasks"]["imap_poller"]
        error = poller["mailboxes"]["default"]["error"] or ""
        failing = health["services"]["imap"]["status"] == "error" and "oauth_refresh" in error
        return health if failing else None

    health = await until(imap_failing, 30, "services.imap and the poller in error")
    expected = f"OAuth endpoint {oauth_server.url}: HTTP 400, the grant was refused: invalid_grant"
    assert expected in health["services"]["imap"]["error"]
    poller = health["services"]["background_tasks"]["imap_poller"]
    assert poller["status"] == "error"
    assert "imap oauth_refresh" in poller["mailboxes"]["default"]["error"]
    assert expected in poller["mailboxes"]["default"]["error"]
    events = await until(
        lambda: [e for e in sidecar.log_events() if e["event"] == "oauth.refresh_failed"],
        10,
        "oauth.refresh_failed in the log",
    )
    assert expected in events[0]["error"]

    # The default rule sees the failing login at once; it fires after 10 minutes of it.
    def pending() -> list[dict[str, Any]]:
        _, alerts = sidecar.get_json("/api/alerts")
        return [a for a in alerts["alerts"] if a["alertname"] == "MailboxAuthFailing"]

    (alert,) = await until(pending, 20, "MailboxAuthFailing")
    assert alert["state"] == "pending"
    assert alert["labels"]["imap_mailbox"] == "default"
    assert alert["labels"]["imap_auth"] == "xoauth2"
    assert alert["value"] == 1
    assert len(app.requests) == 1, "mail was fetched without a login"

    secrets = [env["IMAP_OAUTH_REFRESH_TOKEN"], env["IMAP_OAUTH_CLIENT_SECRET"]]
    secrets += oauth_server.issued_by_grant()
    _, status = sidecar.get_json("/api/status")
    _, health = sidecar.get_json("/health")
    outputs = [sidecar.log_text(), repr(status), repr(health), repr(pending())]
    outputs.append(stored_bytes(Path(sidecar.env["SIDECAR_DATA_DIR"])).decode(errors="replace"))
    leaked = [(i, secret) for i, text in enumerate(outputs) for secret in secrets if secret in text]
    assert leaked == []


async def test_a_static_token_logs_in_by_oauthbearer_and_mail_is_delivered(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, app: Receiver, sidecar_process: Start
) -> None:
    env = oauth_env(dovecot_oauth, oauth_server, app, IMAP_AUTH="oauthbearer")
    for grant in ("TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN"):
        del env[f"IMAP_OAUTH_{grant}"]
    env["IMAP_ACCESS_TOKEN"] = oauth_server.issue("alice")
    await asyncio.to_thread(sidecar_process, env=env, config=CONFIG)
    await asyncio.to_thread(
        dovecot_oauth.append, "alice", make_message(subject="static", message_id="<static@oauth>")
    )

    (delivery,) = await app.wait_for(1, timeout=30)

    assert delivery.json["subject"] == "static"
    assert "method=OAUTHBEARER" in dovecot_oauth.log()
    assert oauth_server.grants == [], "a static token is never refreshed"


async def test_a_running_sidecar_refreshes_its_token_ahead_of_expiry_without_a_refused_login(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, app: Receiver, sidecar_process: Start
) -> None:
    oauth_server.lifetime = 4.0  # refreshed when 2 s are left: about every 2 s
    env = oauth_env(dovecot_oauth, oauth_server, app)
    config = CONFIG.replace("[imap]\n", '[imap]\noauth_refresh_before = "2s"\n')
    await asyncio.to_thread(sidecar_process, env=env, config=config)

    await until(lambda: len(oauth_server.issued_by_grant()) >= 4, 30, "four refreshes")
    await asyncio.to_thread(dovecot_oauth.kick, "alice")  # the next login uses the newest token
    await asyncio.to_thread(
        dovecot_oauth.append, "alice", make_message(subject="fresh", message_id="<fresh@oauth>")
    )

    (delivery,) = await app.wait_for(1, timeout=30)
    assert delivery.json["subject"] == "fresh"
    log = dovecot_oauth.log()
    assert log.count("Login: user=<alice>, method=XOAUTH2") >= 2  # before and after the kick
    assert "auth failed" not in log, "a token reached the server after it had expired"


async def test_no_oauth_secret_reaches_jaeger_or_the_collector(
    dovecot_oauth: Dovecot,
    oauth_server: OAuthServer,
    app: Receiver,
    sidecar_process: Start,
    telemetry_stack: TelemetryStack,
) -> None:
    service = f"sidecar-oauth-{uuid.uuid4().hex[:8]}"
    env = oauth_env(dovecot_oauth, oauth_server, app)
    for signal in ("TRACES", "LOGS", "METRICS"):
        del env[f"OTEL_{signal}_EXPORTER"]
    env |= {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": telemetry_stack.otlp_http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    sidecar = await asyncio.to_thread(sidecar_process, env=env, config=CONFIG)
    await asyncio.to_thread(
        dovecot_oauth.append, "alice", make_message(subject="traced", message_id="<tr@oauth>")
    )
    await app.wait_for(1, timeout=30)
    oauth_server.revoke_all("alice")
    await asyncio.to_thread(dovecot_oauth.kick, "alice")
    await until(
        lambda: [e for e in sidecar.log_events() if e["event"] == "oauth.refresh_failed"],
        30,
        "the failed refresh",
    )
    await asyncio.to_thread(sidecar.terminate)  # flushes what is queued

    logins = await until(
        lambda: [
            span
            for trace in telemetry_stack.traces(service, limit=500)
            for span in trace["spans"]
            if span["operationName"] == "imap.login"
        ],
        30,
        "imap.login spans in Jaeger",
    )
    assert any(
        tag["key"] == "imap.auth" and tag["value"] == "xoauth2"
        for span in logins
        for tag in span.get("tags", [])
    )
    await until(
        lambda: "oauth.refresh_failed" in telemetry_stack.debug_output(),
        30,
        "the failed refresh in the collector's log output",
    )
    outputs = [
        json.dumps(telemetry_stack.traces(service, limit=500)),
        telemetry_stack.prometheus_text(),
        telemetry_stack.debug_output(),
    ]
    secrets = [env["IMAP_OAUTH_REFRESH_TOKEN"], env["IMAP_OAUTH_CLIENT_SECRET"]]
    secrets += oauth_server.issued_by_grant()
    assert len(secrets) >= 3
    assert [secret for secret in secrets for text in outputs if secret in text] == []
