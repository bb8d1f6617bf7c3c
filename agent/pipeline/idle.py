"""IMAP IDLE between polls (RFC 2177): new mail is announced by the server instead of found later.

One IdleSession is one IDLE on the leader's open connection. wait() returns as soon as the
server announces new mail (EXISTS or RECENT); inside it, IDLE is issued again every
imap.idle_renew (servers end IDLE after 30 minutes), and a connection silent for
imap.idle_keepalive is checked with DONE + NOOP: a check that does not answer within
imap.timeout raises, and the caller reconnects and polls (black-holed networks, NAT timeouts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from agent.config import ImapSettings
from agent.pipeline.imap import IdleEvents, IdleWake, ImapClient, announces_mail


class IdleSession:
    """One IDLE on an open, selected connection; end() must be called before other commands."""

    def __init__(
        self,
        client: ImapClient,
        settings: ImapSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._renew = float(settings.idle_renew)
        self._keepalive = float(settings.idle_keepalive)
        self._clock = clock
        self._active = False
        self._since = 0.0
        self._heard = 0.0
        self.started_ns = 0
        self.reissued = 0
        self.keepalive_checks = 0

    @property
    def proven(self) -> bool:
        """Whether IDLE outlived a keepalive check or a re-issue on this connection: it works
        here, whatever failed before."""
        return bool(self.keepalive_checks or self.reissued)

    @property
    def active(self) -> bool:
        """Whether IDLE is in progress on the connection."""
        return self._active

    async def start(self) -> None:
        """Sends IDLE."""
        await self._client.idle_start()
        self._active = True
        self._since = self._heard = self._clock()
        self.started_ns = time.time_ns()

    async def wait(self, seconds: float, wake: IdleWake) -> IdleEvents | None:
        """Waits up to `seconds` (or until `wake` is set) for new mail; None when none came.

        Raises ImapError when the connection is dead (the keepalive check failed, or the
        server closed it); the caller drops the connection.
        """
        if not self._active:
            raise RuntimeError("IdleSession.wait() called before start() or after end()")
        end = self._clock() + seconds
        while not wake.is_set():
            now = self._clock()
            if now >= end:
                return None
            step = min(
                end - now, self._heard + self._keepalive - now, self._since + self._renew - now
            )
            if step > 0:
                events = await self._client.idle_wait(step, wake)
                if events.heard:
                    self._heard = self._clock()
                if events.new_mail:
                    return events
                continue
            drawn = await self._end()
            if now >= self._since + self._renew:
                self.reissued += 1
            else:
                # Silent past the budget: a NOOP answered in time proves the connection lives.
                self.keepalive_checks += 1
                drawn += await self._client.noop()
            if announces_mail(drawn):
                # Announced in the answer to DONE or NOOP: IDLE would not repeat it.
                return IdleEvents(
                    new_mail=True, heard=True, woke_ns=time.time_ns(), responses=drawn
                )
            await self.start()
        return None

    async def end(self) -> None:
        """Sends DONE if IDLE is in progress; the connection can take commands again."""
        if self._active:
            await self._end()

    async def _end(self) -> tuple[str, ...]:
        self._active = False
        return await self._client.idle_done()
