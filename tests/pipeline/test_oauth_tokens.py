"""The refresh-token grant against a real OAuth server: retries, timeouts and the cooldown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from agent.config import Settings
from agent.pipeline.oauth import RefreshGrant, RefreshingToken, TokenError
from agent.retry import Backoff
from agent.telemetry.setup import Telemetry
from tests.fixtures.oauth_server import OAuthServer
from tests.support.telemetry import telemetry_for_tests

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """The sidecar's telemetry, exporting to memory."""
    telemetry, _spans, _reader, _logs = telemetry_for_tests(Settings())
    yield telemetry
    telemetry.shutdown(2.0)


@pytest.fixture
async def tokens(oauth_server: OAuthServer, telemetry: Telemetry) -> AsyncIterator[RefreshingToken]:
    """alice's refresh grant: 3 attempts 10-50 ms apart, a 1 s timeout per request."""
    source = RefreshingToken(
        RefreshGrant(
            oauth_server.token_url,
            oauth_server.client_id,
            oauth_server.client_secret,
            oauth_server.grant("alice"),
        ),
        mailbox="support",
        refresh_before=300.0,
        timeout=1.0,
        max_attempts=3,
        instruments=telemetry.instruments,
        remember=telemetry.masker.remember,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )
    yield source
    await source.close()


async def test_a_struggling_endpoint_is_retried_within_the_attempt_budget(
    oauth_server: OAuthServer, tokens: RefreshingToken
) -> None:
    oauth_server.failures = [503, 500]

    token = await tokens.token()

    assert len(oauth_server.grants) == 3
    assert oauth_server.issued_by_grant() == [token.value]


async def test_an_endpoint_failing_every_attempt_is_one_error_then_a_cooldown(
    oauth_server: OAuthServer, tokens: RefreshingToken
) -> None:
    oauth_server.failures = [503] * 10

    with pytest.raises(TokenError, match="HTTP 503, the grant was refused: temporarily_unava"):
        await tokens.token()
    assert len(oauth_server.grants) == 3
    # Asked again at once (by the health probe, say): the same error, no request.
    with pytest.raises(TokenError, match="HTTP 503"):
        await tokens.token()
    assert len(oauth_server.grants) == 3


async def test_a_refused_grant_is_not_retried(
    oauth_server: OAuthServer, tokens: RefreshingToken
) -> None:
    oauth_server.revoke_all("alice")

    with pytest.raises(TokenError, match="HTTP 400, the grant was refused: invalid_grant"):
        await tokens.token()

    assert len(oauth_server.grants) == 1


async def test_an_endpoint_that_does_not_answer_times_out(
    oauth_server: OAuthServer, tokens: RefreshingToken
) -> None:
    oauth_server.hang = 1.5

    with pytest.raises(TokenError, match=r"no answer within 1s"):
        await tokens.token()

    assert tokens.current is None


async def test_the_masker_knows_each_token_as_soon_as_it_is_issued(
    tokens: RefreshingToken, telemetry: Telemetry
) -> None:
    token = await tokens.token()

    assert telemetry.masker.mask(f"login with {token.value}") == "login with ***"
