"""The open HTTP connections, oldest first, and which of them are inside a request."""

from __future__ import annotations

import asyncio

from aiohttp import web


class Connections:
    """Tracks accepted connections so the listener can hold them to a cap.

    A connection is idle while it waits for a request head (the whole of a slow-header attack)
    or sits in keep-alive; at the cap the oldest idle one is closed to make room, so clients
    that send their requests promptly, such as the kubelet's probes, are always served.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.evicted = 0
        self._open: dict[asyncio.BaseTransport, None] = {}  # insertion order: oldest first
        self._in_request: dict[asyncio.BaseTransport, int] = {}

    def add(self, transport: asyncio.BaseTransport) -> None:
        """Tracks a newly accepted connection."""
        self._open[transport] = None

    def prune(self) -> None:
        """Forgets connections that have closed."""
        for transport in [t for t in self._open if t.is_closing()]:
            del self._open[transport]
            self._in_request.pop(transport, None)

    def full(self) -> bool:
        """Whether the cap is reached once closed connections are forgotten."""
        if len(self._open) >= self.limit:
            self.prune()
        return len(self._open) >= self.limit

    def evict_idle(self) -> bool:
        """Closes the oldest connection not inside a request; False when every one is busy."""
        for transport in self._open:
            if transport not in self._in_request:
                del self._open[transport]
                if isinstance(transport, asyncio.WriteTransport):
                    transport.abort()
                else:
                    transport.close()
                self.evicted += 1
                return True
        return False

    def begin(self, transport: asyncio.BaseTransport | None) -> None:
        """Marks the connection busy: a request on it is being handled."""
        if transport is not None:
            self._in_request[transport] = self._in_request.get(transport, 0) + 1

    def end(self, transport: asyncio.BaseTransport | None) -> None:
        """The request begun on the connection is done."""
        if transport is None:
            return
        left = self._in_request.get(transport, 1) - 1
        if left > 0:
            self._in_request[transport] = left
        else:
            self._in_request.pop(transport, None)


CONNECTIONS_KEY = web.AppKey("connections", Connections)
