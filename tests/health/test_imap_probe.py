"""The imap probe against real Dovecot and a black hole: ok, auth error, down, timeout."""

from __future__ import annotations

import dataclasses
import time

import pytest
from opentelemetry.metrics import NoOpMeter

from agent.config import ImapSettings, MailboxSettings, Settings, settings_from_mapping
from agent.health.base import ProbeContext
from agent.health.probes.imap import probe
from agent.pipeline.oauth import TokenSources
from agent.telemetry.catalogue import Instruments
from agent.telemetry.certificates import CertificateExpiry
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.oauth_server import OAuthServer


def _context(*mailboxes: MailboxSettings, timeout: str = "2s") -> ProbeContext:
    settings = settings_from_mapping({"health": {"timeout": timeout}})
    return ProbeContext(settings=dataclasses.replace(settings, mailboxes=list(mailboxes)))


async def test_ok_when_every_mailbox_accepts_a_login(dovecot: Dovecot) -> None:
    result = await probe(_context(dovecot.settings("alice"), dovecot.settings("bob")))
    assert result.status == "ok"
    assert set(result.data["latency_ms"]) == {"alice-test", "bob-test"}


async def test_a_wrong_password_is_an_auth_error_naming_the_mailbox(dovecot: Dovecot) -> None:
    wrong = dataclasses.replace(dovecot.settings("alice"), password="wrong")
    result = await probe(_context(wrong))
    assert result.status == "error"
    assert result.data["error.type"] == "auth"
    assert result.detail.startswith("alice-test:")
    assert "wrong" not in result.detail


async def test_a_folder_that_does_not_exist_is_an_error_naming_it(dovecot: Dovecot) -> None:
    result = await probe(_context(dovecot.settings("alice", folder="Pi\u00e8ces")))
    assert result.status == "error"
    assert result.data["error.type"] == "protocol"
    assert "EXAMINE Pi\u00e8ces" in result.detail


async def test_a_non_ascii_folder_that_exists_is_ok(dovecot: Dovecot) -> None:
    dovecot.create_folder("alice", "Pi\u00e8ces")
    result = await probe(_context(dovecot.settings("alice", folder="Pi\u00e8ces")))
    assert result.status == "ok"


async def test_a_stopped_server_is_a_connection_error(dovecot: Dovecot) -> None:
    mailbox = dovecot.settings("alice")
    dovecot.stop()
    result = await probe(_context(mailbox))
    assert result.status == "error"
    assert result.data["error.type"] == "connection"


async def test_a_silent_server_is_a_timeout_within_the_health_timeout(blackhole: BlackHole) -> None:
    mailbox = MailboxSettings(name="hole", host="127.0.0.1", port=blackhole.port,
                              username="u", password="p", tls="none")  # fmt: skip
    started = time.monotonic()
    result = await probe(_context(mailbox, timeout="1s"))
    assert time.monotonic() - started < 1.0 + 3.0
    assert result.status == "error"
    assert result.data["error.type"] == "timeout"


async def test_no_mailbox_is_not_configured() -> None:
    result = await probe(ProbeContext(settings=Settings()))
    assert result.status == "not_configured"


async def test_an_oauth_mailbox_whose_grant_was_revoked_names_the_oauth_endpoint(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer
) -> None:
    box = dataclasses.replace(
        dovecot_oauth.settings("alice"),
        password="",
        auth="xoauth2",
        oauth_token_url=oauth_server.token_url,
        oauth_client_id=oauth_server.client_id,
        oauth_client_secret=oauth_server.client_secret,
        oauth_refresh_token=oauth_server.grant("alice"),
    )
    context = _context(box)
    context.tokens = TokenSources(
        [box], ImapSettings(), instruments=Instruments(NoOpMeter("t")), remember=lambda _: None
    )
    assert (await probe(context)).status == "ok"

    oauth_server.revoke_all("alice")  # the token in hand is refused, its refresh too
    result = await probe(context)
    await context.tokens.close()

    assert result.status == "error"
    assert result.data["error.type"] == "oauth_refresh"
    assert f"OAuth endpoint {oauth_server.url}: HTTP 400" in result.detail
    assert box.oauth_refresh_token not in result.detail


async def test_the_probe_notes_the_certificate_of_an_imaps_server(
    dovecot_tls: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot_tls.cert_path))
    context = _context(dovecot_tls.settings("alice", tls="ssl"))
    context.certificates = CertificateExpiry()

    assert (await probe(context)).status == "ok"

    (seen,) = context.certificates.health()
    assert (seen["endpoint"], seen["server"]) == ("imap", f"127.0.0.1:{dovecot_tls.tls_port}")
    assert 1.99 <= seen["days_left"] <= 2.0
