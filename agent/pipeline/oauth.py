"""OAuth 2.0 access tokens for IMAP login: a static one, or the refresh grant, renewed early."""

# HTTP client: aiohttp, the sidecar's async HTTP client already. The refresh-token grant is one
# form POST and one JSON answer (RFC 6749 sections 6 and 5.1/5.2), which Google and Microsoft
# document for daemons. oauthlib would only build that four-field body and read that answer,
# and brings process-wide switches of its own (OAUTHLIB_INSECURE_TRANSPORT,
# OAUTHLIB_RELAX_TOKEN_SCOPE) that would become hidden configuration; authlib's async client is
# built on httpx, a second HTTP stack. The answer is read with a size bound, every request has a
# timeout, and retries of a failed refresh have an attempt budget with backoff.
#
# Every access token is handed to `remember` before it is used, so the masking rules know it
# the moment it exists (a refreshed token is not part of the configuration).

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from opentelemetry.metrics import Observation

from agent.config import ImapSettings, MailboxSettings
from agent.retry import Backoff
from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger

_MAX_ANSWER_BYTES = 64 * 1024
# An answer without expires_in: assume the token lives this long, the common default (1 h).
_ASSUMED_LIFETIME = 3600.0
# OAuth error codes (RFC 6749 section 5.2) that no retry can fix: the grant itself is refused.
_FINAL_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "unsupported_grant_type"}
)


class TokenError(Exception):
    """No access token could be had; the message names the endpoint and the reason, no secret."""

    error_type = "oauth_refresh"

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final  # no retry can help: the endpoint refused the grant itself


@dataclass(frozen=True)
class AccessToken:
    """One access token and the wall-clock time it expires (None: not known)."""

    value: str
    expires_at: float | None = None

    def lifetime_left(self, now: float) -> float | None:
        """Seconds until it expires, or None when the expiry is not known."""
        return None if self.expires_at is None else self.expires_at - now


class AccessTokenSource(Protocol):
    """Where IMAP login gets an access token; `refresh` after the server refused one."""

    @property
    def refreshable(self) -> bool:
        """Whether a refused token can be replaced by a fresh one."""
        ...

    async def token(self) -> AccessToken:
        """A token that is not about to expire. Raises TokenError."""
        ...

    async def refresh(self, refused: AccessToken) -> AccessToken:
        """A new token, once the server refused `refused` (one refresh for concurrent callers)."""
        ...

    async def close(self) -> None:
        """Releases the HTTP session, if any."""
        ...


@dataclass(frozen=True)
class RefreshGrant:
    """The refresh-token grant's parameters (client_secret_post, as Google and Microsoft take)."""

    token_url: str
    client_id: str
    client_secret: str
    refresh_token: str
    scope: str = ""


class StaticToken:
    """A token managed outside the sidecar (IMAP_ACCESS_TOKEN): used as given, never refreshed."""

    refreshable = False

    def __init__(self, value: str) -> None:
        self._token = AccessToken(value)

    async def token(self) -> AccessToken:
        """The configured token."""
        return self._token

    async def refresh(self, refused: AccessToken) -> AccessToken:
        """A static token cannot be replaced."""
        raise TokenError(
            "the server refused the static access token (IMAP_ACCESS_TOKEN), which cannot be "
            "refreshed: renew it, or configure the refresh grant",
            final=True,
        )

    async def close(self) -> None:
        """Nothing to release."""


class RefreshingToken:
    """The refresh-token grant: a token fetched on first use and again `refresh_before` ahead of
    its expiry; concurrent callers share one request."""

    refreshable = True

    def __init__(
        self,
        grant: RefreshGrant,
        *,
        mailbox: str,
        refresh_before: float,
        timeout: float,
        max_attempts: int,
        instruments: Instruments,
        remember: Callable[[str], None],
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._grant = grant
        self._mailbox = mailbox
        self._refresh_before = refresh_before
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._instruments = instruments
        self._remember = remember
        self._backoff = backoff or Backoff(initial=1.0, maximum=10.0)
        self._clock = clock
        self._sleep = sleep
        self._log = get_logger("imap")
        self._current: AccessToken | None = None
        # After a failed refresh, callers get the same error without a request until the
        # cooldown (growing with each consecutive failure) is over: the poller and the health
        # probe both ask, and a refused grant must not be hammered.
        self._failure: TokenError | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._cooldown = Backoff(initial=5.0, maximum=300.0)
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.last_error = ""
        instruments.publish("imap.oauth.token.lifetime", self._observe_lifetime)
        for outcome in ("ok", "error"):
            instruments.oauth_refreshes.add(0, {"imap.mailbox": mailbox, "outcome": outcome})

    @property
    def current(self) -> AccessToken | None:
        """The token in hand, if any."""
        return self._current

    async def token(self) -> AccessToken:
        """The token in hand, or a new one when it expires within refresh_before."""
        async with self._lock:
            current = self._current
            if current is not None and not self._expiring(current):
                return current
            return await self._fetch("expiring" if current is not None else "first use")

    async def refresh(self, refused: AccessToken) -> AccessToken:
        """A new token unless another caller already replaced the refused one."""
        async with self._lock:
            current = self._current
            if current is not None and current.value != refused.value:
                return current
            self._current = None
            return await self._fetch("refused by the server")

    async def close(self) -> None:
        """Closes the HTTP session; the instruments stop reporting this token."""
        self._instruments.unpublish("imap.oauth.token.lifetime", self._observe_lifetime)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _expiring(self, token: AccessToken) -> bool:
        left = token.lifetime_left(self._clock())
        return left is not None and left <= self._refresh_before

    async def _fetch(self, reason: str) -> AccessToken:
        if self._failure is not None and time.monotonic() < self._retry_at:
            raise self._failure
        attempt = 0
        while True:
            attempt += 1
            try:
                token = await self._request()
            except TokenError as exc:
                if exc.final or attempt >= self._max_attempts:
                    self._failed(exc, attempt, reason)
                    raise
                await self._sleep(self._backoff.delay(attempt))
                continue
            self._current = token
            self.last_error = ""
            self._failure, self._failures = None, 0
            self._instruments.oauth_refreshes.add(
                1, {"imap.mailbox": self._mailbox, "outcome": "ok"}
            )
            left = token.lifetime_left(self._clock())
            self._log.info(
                "oauth.token_refreshed",
                mailbox=self._mailbox,
                reason=reason,
                expires_in_s=None if left is None else round(left),
                attempts=attempt,
            )
            return token

    def _failed(self, exc: TokenError, attempts: int, reason: str) -> None:
        self.last_error = str(exc)
        self._failure = exc
        self._failures += 1
        self._retry_at = time.monotonic() + self._cooldown.delay(self._failures)
        self._instruments.oauth_refreshes.add(
            1, {"imap.mailbox": self._mailbox, "outcome": "error"}
        )
        self._log.error(
            "oauth.refresh_failed",
            mailbox=self._mailbox,
            reason=reason,
            error=str(exc),
            attempts=attempts,
        )

    async def _request(self) -> AccessToken:
        grant = self._grant
        form = {
            "grant_type": "refresh_token",
            "refresh_token": grant.refresh_token,
            "client_id": grant.client_id,
        }
        if grant.client_secret:  # a public client has none
            form["client_secret"] = grant.client_secret
        if grant.scope:
            form["scope"] = grant.scope
        where = f"OAuth endpoint {_origin(grant.token_url)}"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                grant.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                allow_redirects=False,
            ) as response:
                body = await response.content.read(_MAX_ANSWER_BYTES + 1)
                status = response.status
        except TimeoutError:
            raise TokenError(f"{where}: no answer within {self._timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise TokenError(f"{where}: unreachable ({type(exc).__name__})") from None
        return self._read_answer(status, body, where)

    def _read_answer(self, status: int, body: bytes, where: str) -> AccessToken:
        if len(body) > _MAX_ANSWER_BYTES:
            raise TokenError(f"{where}: HTTP {status}, answer larger than 64 KiB")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise TokenError(f"{where}: HTTP {status}, answer is not a JSON object")
        if status != 200:
            code = answer.get("error")
            code = code if isinstance(code, str) and code.isascii() else "unknown"
            final = code in _FINAL_ERRORS or (400 <= status < 500 and status != 429)
            reason = f"{where}: HTTP {status}, the grant was refused: {code[:64]}"
            raise TokenError(reason, final=final)
        value = answer.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenError(f"{where}: the answer has no access_token")
        # Masked from here on, before anything could quote it.
        self._remember(value)
        token_type = answer.get("token_type", "Bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenError(f"{where}: token_type {str(token_type)[:32]!r}, expected Bearer")
        expires_in = answer.get("expires_in", _ASSUMED_LIFETIME)
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # some servers send the number as a string
        if not isinstance(expires_in, int | float) or isinstance(expires_in, bool):
            raise TokenError(f"{where}: expires_in is not a number")
        return AccessToken(value, self._clock() + max(0.0, float(expires_in)))

    def _observe_lifetime(self) -> list[Observation]:
        current = self._current
        left = None if current is None else current.lifetime_left(self._clock())
        if left is None:
            return []
        return [Observation(max(0.0, left), {"imap.mailbox": self._mailbox})]


def token_source(
    mailbox: MailboxSettings,
    imap: ImapSettings,
    *,
    instruments: Instruments,
    remember: Callable[[str], None],
) -> AccessTokenSource | None:
    """The mailbox's token source (None for password login): the refresh grant when it is
    configured, else the static token."""
    if mailbox.auth == "password":
        return None
    if mailbox.oauth_refresh_token:
        grant = RefreshGrant(
            token_url=mailbox.oauth_token_url,
            client_id=mailbox.oauth_client_id,
            client_secret=mailbox.oauth_client_secret,
            refresh_token=mailbox.oauth_refresh_token,
            scope=mailbox.oauth_scope,
        )
        return RefreshingToken(
            grant,
            mailbox=mailbox.name,
            refresh_before=float(imap.oauth_refresh_before),
            timeout=float(imap.oauth_timeout),
            max_attempts=imap.oauth_max_attempts,
            instruments=instruments,
            remember=remember,
        )
    return StaticToken(mailbox.access_token)


class TokenSources:
    """One token source per OAuth mailbox, shared by its poller and the IMAP health probe."""

    def __init__(
        self,
        mailboxes: list[MailboxSettings],
        imap: ImapSettings,
        *,
        instruments: Instruments,
        remember: Callable[[str], None],
    ) -> None:
        self._sources: dict[str, AccessTokenSource] = {}
        for mailbox in mailboxes:
            source = token_source(mailbox, imap, instruments=instruments, remember=remember)
            if source is not None:
                self._sources[mailbox.name] = source

    def get(self, mailbox: MailboxSettings) -> AccessTokenSource | None:
        """The mailbox's source (None for password login)."""
        return self._sources.get(mailbox.name)

    async def close(self) -> None:
        """Closes every source."""
        for source in self._sources.values():
            await source.close()


def _origin(url: str) -> str:
    # The endpoint is named by its origin only: a token URL may carry a tenant or a key.
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}"
