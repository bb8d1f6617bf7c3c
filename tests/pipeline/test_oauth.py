"""OAuth 2.0 IMAP login against a real Dovecot whose oauth2 passdb asks a real OAuth server."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import AuthMode, ImapSettings, MailboxSettings, Settings
from agent.pipeline.imap import ImapAuthError, ImapClient, ImapTokenError
from agent.pipeline.oauth import AccessTokenSource, RefreshGrant, RefreshingToken, StaticToken
from agent.retry import Backoff
from agent.telemetry.logs import configure_logging
from agent.telemetry.setup import Telemetry
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.oauth_server import OAuthServer
from tests.support.telemetry import metric_points, telemetry_for_tests

pytestmark = pytest.mark.timeout(60)


@dataclass
class Captured:
    """The sidecar's telemetry, exported to memory through its masking exporters."""

    telemetry: Telemetry
    mailbox: MailboxSettings
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
    stdout: io.StringIO
    sources: list[RefreshingToken] = dataclasses.field(default_factory=list)

    def everything(self) -> str:
        """Every span (name, attributes, events, status) and log record, as one text."""
        self.telemetry.force_flush(5.0)
        parts: list[str] = []
        for span in self.spans.get_finished_spans():
            parts.append(span.to_json())
        for record in self.logs.get_finished_logs():
            parts.append(record.to_json())
        parts.append(self.stdout.getvalue())
        return "\n".join(parts)

    def points(self, name: str) -> list[tuple[dict[str, object], float]]:
        """(attributes, value) of each point of metric `name` now."""
        data = self.reader.get_metrics_data()
        return [(dict(p.attributes or {}), p.value) for p in metric_points(data, name)]


class FakeClock:
    """Wall-clock time that a test moves by hand (the tokens' expiry is judged by it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mailbox(dovecot: Dovecot, auth: AuthMode, **oauth: str) -> MailboxSettings:
    """alice's INBOX over implicit TLS with OAuth login."""
    box = dataclasses.replace(dovecot.settings("alice", tls="ssl"), password="", auth=auth)
    return dataclasses.replace(box, **oauth)


def grant_settings(box: MailboxSettings, server: OAuthServer) -> MailboxSettings:
    """The mailbox with the refresh grant of a fresh refresh token."""
    return dataclasses.replace(
        box,
        oauth_token_url=server.token_url,
        oauth_client_id=server.client_id,
        oauth_client_secret=server.client_secret,
        oauth_refresh_token=server.grant("alice"),
    )


@pytest.fixture
async def captured(dovecot_oauth: Dovecot, oauth_server: OAuthServer) -> AsyncIterator[Captured]:
    """Telemetry whose masker knows the configured secrets, as the sidecar's does."""
    box = grant_settings(mailbox(dovecot_oauth, "xoauth2"), oauth_server)
    telemetry, spans, reader, logs = telemetry_for_tests(Settings(mailboxes=[box]))
    stdout = io.StringIO()
    configure_logging(telemetry, stream=stdout)
    captured = Captured(telemetry, box, spans, reader, logs, stdout)
    yield captured
    for source in captured.sources:
        await source.close()
    configure_logging(None, stream=io.StringIO())
    telemetry.shutdown(5.0)


def refreshing(
    box: MailboxSettings, captured: Captured, *, clock: FakeClock | None = None
) -> RefreshingToken:
    """The refresh grant of `box`, fast retries, reporting to the captured telemetry."""
    source = RefreshingToken(
        RefreshGrant(
            box.oauth_token_url,
            box.oauth_client_id,
            box.oauth_client_secret,
            box.oauth_refresh_token,
        ),
        mailbox=box.name,
        refresh_before=float(ImapSettings().oauth_refresh_before),
        timeout=5.0,
        max_attempts=2,
        instruments=captured.telemetry.instruments,
        remember=captured.telemetry.masker.remember,
        backoff=Backoff(initial=0.01, maximum=0.05),
        **({"clock": clock} if clock is not None else {}),
    )
    captured.sources.append(source)
    return source


@pytest.fixture
async def clients(dovecot_oauth: Dovecot, captured: Captured) -> AsyncIterator[list[ImapClient]]:
    """Clients a test opens, closed afterwards."""
    opened: list[ImapClient] = []
    yield opened
    for client in opened:
        await client.close()


async def login(
    box: MailboxSettings,
    tokens: AccessTokenSource,
    dovecot: Dovecot,
    captured: Captured,
    clients: list[ImapClient],
) -> ImapClient:
    """A connected, logged-in client with alice's INBOX selected."""
    client = ImapClient(
        box,
        timeout=5.0,
        tracer=captured.telemetry.tracer("test"),
        instruments=captured.telemetry.instruments,
        ssl_context=dovecot.ssl_context(),
        tokens=tokens,
    )
    clients.append(client)
    await client.connect()
    await client.login()
    await client.select()
    return client


def logins(dovecot: Dovecot) -> list[str]:
    """The OAuth mechanisms of alice's successful logins, in order (the test bed's own APPENDs
    log in with her password, which Dovecot logs as PLAIN)."""
    methods = [
        line.split("method=")[1].split(",")[0]
        for line in dovecot.log().splitlines()
        if "Login: user=<alice>" in line
    ]
    return [method for method in methods if method != "PLAIN"]


async def test_xoauth2_with_a_static_token_opens_the_mailbox(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    dovecot_oauth.append("alice", b"Subject: one\r\n\r\nbody\r\n")
    token = oauth_server.issue("alice")
    box = mailbox(dovecot_oauth, "xoauth2", access_token=token)

    client = await login(box, StaticToken(token), dovecot_oauth, captured, clients)

    assert await client.search_uids_above(0) == [1]
    assert logins(dovecot_oauth) == ["XOAUTH2"]
    assert oauth_server.introspections == 1


async def test_oauthbearer_with_the_refresh_grant_logs_in_with_the_token_it_issued(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    box = grant_settings(mailbox(dovecot_oauth, "oauthbearer"), oauth_server)
    tokens = refreshing(box, captured)

    await login(box, tokens, dovecot_oauth, captured, clients)

    assert logins(dovecot_oauth) == ["OAUTHBEARER"]
    (grant,) = oauth_server.grants
    assert grant["grant_type"] == "refresh_token"
    assert grant["refresh_token"] == box.oauth_refresh_token
    assert tokens.current is not None
    assert tokens.current.value == grant["issued"]


async def test_a_token_is_refreshed_ahead_of_its_expiry_and_not_before(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    oauth_server.lifetime = 3600.0
    box = grant_settings(mailbox(dovecot_oauth, "xoauth2"), oauth_server)
    clock = FakeClock(1_000_000.0)
    tokens = refreshing(box, captured, clock=clock)
    early = float(ImapSettings().oauth_refresh_before)  # 5 min

    first = await tokens.token()
    assert first.lifetime_left(clock()) == 3600.0
    clock.now += 3600.0 - early - 1
    assert await tokens.token() == first, "refreshed while more than 5 min were left"
    lifetime = captured.points("imap.oauth.token.lifetime")
    assert lifetime == [({"imap.mailbox": box.name}, early + 1)]

    clock.now += 2  # 5 min minus a second left: time to refresh
    second = await tokens.token()

    assert second.value != first.value
    assert oauth_server.issued_by_grant() == [first.value, second.value]
    await login(box, tokens, dovecot_oauth, captured, clients)
    assert logins(dovecot_oauth) == ["XOAUTH2"]
    refreshes = captured.points("imap.oauth.refreshes")
    assert ({"imap.mailbox": box.name, "outcome": "ok"}, 2) in refreshes


async def test_a_token_the_server_refuses_is_refreshed_once_and_the_login_retried(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    box = grant_settings(mailbox(dovecot_oauth, "xoauth2"), oauth_server)
    tokens = refreshing(box, captured)
    stale = await tokens.token()
    oauth_server.revoke(stale.value)  # revoked at the server, still unexpired here

    await login(box, tokens, dovecot_oauth, captured, clients)

    assert len(oauth_server.issued_by_grant()) == 2
    assert tokens.current is not None
    assert tokens.current.value != stale.value
    assert logins(dovecot_oauth) == ["XOAUTH2"]


async def test_a_refused_static_token_is_an_auth_error_that_says_it_cannot_be_refreshed(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    token = oauth_server.issue("alice")
    oauth_server.revoke(token)
    box = mailbox(dovecot_oauth, "xoauth2", access_token=token)

    with pytest.raises(ImapAuthError, match=r"login as 'alice' \(xoauth2\) refused"):
        await login(box, StaticToken(token), dovecot_oauth, captured, clients)
    assert logins(dovecot_oauth) == []


async def test_a_revoked_grant_is_a_clear_error_and_no_secret_reaches_any_output(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    box = captured.mailbox
    tokens = refreshing(box, captured)
    token = await tokens.token()
    await login(box, tokens, dovecot_oauth, captured, clients)
    oauth_server.revoke_all("alice")  # the access token and the refresh token

    with pytest.raises(ImapTokenError) as raised:
        await login(box, tokens, dovecot_oauth, captured, clients)

    message = str(raised.value)
    assert f"OAuth endpoint {oauth_server.url}" in message
    assert "HTTP 400, the grant was refused: invalid_grant" in message
    assert raised.value.error_type == "oauth_refresh"
    refreshes = captured.points("imap.oauth.refreshes")
    assert ({"imap.mailbox": box.name, "outcome": "error"}, 1) in refreshes
    output = captured.everything()
    assert "oauth.refresh_failed" in output
    assert "invalid_grant" in output
    secrets = [box.oauth_refresh_token, box.oauth_client_secret, token.value]
    secrets += oauth_server.issued_by_grant()
    assert len(set(secrets)) == 3
    leaked = [secret for secret in secrets if secret in output or secret in message]
    assert leaked == []


def test_a_token_endpoint_answer_quoted_in_text_is_masked(captured: Captured) -> None:
    answer = json.dumps({"access_token": "at-not-configured-anywhere", "token_type": "Bearer"})

    masked = captured.telemetry.masker.mask(f"unexpected answer {answer}")

    assert "at-not-configured-anywhere" not in masked
    assert '"token_type": "Bearer"' in masked


async def test_the_imap_certificate_expiry_is_read_from_the_connection_ssl_and_starttls(
    dovecot_oauth: Dovecot, oauth_server: OAuthServer, captured: Captured, clients: list[ImapClient]
) -> None:
    token = oauth_server.issue("alice")
    box = mailbox(dovecot_oauth, "xoauth2", access_token=token)
    starttls = dataclasses.replace(box, tls="starttls", port=dovecot_oauth.port)

    await login(box, StaticToken(token), dovecot_oauth, captured, clients)
    await login(starttls, StaticToken(token), dovecot_oauth, captured, clients)

    seen = {
        (attrs["server.port"], attrs["tls.endpoint"]): value
        for attrs, value in captured.points("tls.certificate.expiry")
    }
    assert set(seen) == {(dovecot_oauth.tls_port, "imap"), (dovecot_oauth.port, "imap")}
    # The test bed's certificate is made with -days 2.
    assert all(2 * 86400 - 600 < left <= 2 * 86400 for left in seen.values()), seen
    health = captured.telemetry.instruments.certificates.health()
    assert [entry["endpoint"] for entry in health] == ["imap", "imap"]
    assert all(1.99 <= entry["days_left"] <= 2.0 for entry in health), health


async def test_a_plain_connection_reports_no_certificate(
    dovecot_oauth: Dovecot, captured: Captured
) -> None:
    box = dataclasses.replace(dovecot_oauth.settings("alice"), tls="none")
    client = ImapClient(
        box,
        timeout=5.0,
        tracer=captured.telemetry.tracer("test"),
        instruments=captured.telemetry.instruments,
    )
    await client.connect()
    await client.login()
    await client.logout()

    assert captured.points("tls.certificate.expiry") == []
