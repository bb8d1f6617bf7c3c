"""The HTTP listener: binds before anything starts, caps connections, times out slow clients.

aiohttp accepts every connection it is offered and leaves a cap to the application
(aio-libs/aiohttp#675). So the sidecar binds its own sockets (errors surface before any part
starts, and port 0 is known at once), accepts on them itself, and hands each connection to
aiohttp's server, which is documented as the protocol factory of asyncio's servers. aiohttp's
keepalive_timeout runs from the moment a connection opens and closes a connection still
waiting for its request head, so it is the header timeout; body reads are bounded by the
request middleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import Callable

from aiohttp import web

from agent.config import ServerSettings
from agent.startup import StartupError
from agent.telemetry.logs import get_logger
from agent.web.connections import CONNECTIONS_KEY, Connections

BACKLOG = 511  # the kernel's accept queue, as nginx and Redis use
# Out of file descriptors or buffers: pause accepting briefly rather than spin.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FULL_POLL = 0.05  # how often a listener whose connections are all busy looks again
_REPORT_EVERY = 60.0  # at most one warning a minute about connections closed at the cap

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of `host`, all on one port (0: the kernel picks)."""
    where = f"{host}:{port} (server.host, server.port)"
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, _type, _proto, _name, address in infos:
            if (family, str(address[0])) in seen:
                continue
            seen.add((family, str(address[0])))
            chosen = sockets[0].getsockname()[1] if sockets else port
            sockets.append(_listen(family, (address[0], chosen, *address[2:])))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {where}: {exc.strerror}") from None
    return sockets


def _listen(family: int, address: tuple[object, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Listener:
    """Accepts connections on bound sockets for a protocol factory, at most `limit` at once."""

    def __init__(
        self, sockets: list[socket.socket], factory: ProtocolFactory, connections: Connections
    ) -> None:
        self._sockets = sockets
        self._factory = factory
        self.connections = connections
        self._tasks: list[asyncio.Task[None]] = []
        self._log = get_logger("http")
        self._reported_at = float("-inf")
        self._reported = 0

    def start(self) -> None:
        """Starts one accept loop per socket."""
        for sock in self._sockets:
            self._tasks.append(asyncio.ensure_future(self._accept(sock)))

    async def close(self) -> None:
        """Stops accepting and closes the listening sockets (open connections stay)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sock in self._sockets:
            sock.close()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room()
            try:
                conn, _peer = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._log.warning("http.accept_failed", error=exc.strerror)
                    await asyncio.sleep(0.1)
                continue
            try:
                transport, _protocol = await loop.connect_accepted_socket(self._factory, conn)
            except OSError:
                conn.close()
                continue
            self.connections.add(transport)

    async def _room(self) -> None:
        """Waits until one more connection fits, closing the oldest idle one at the cap."""
        connections = self.connections
        while connections.full():
            if connections.evict_idle():
                self._report()
                continue
            await asyncio.sleep(_FULL_POLL)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._reported_at < _REPORT_EVERY:
            return
        self._log.warning(
            "http.connection_limit",
            limit=self.connections.limit,
            closed_idle=self.connections.evicted - self._reported,
            closed_idle_total=self.connections.evicted,
        )
        self._reported_at = now
        self._reported = self.connections.evicted


class HttpServer:
    """The web app on bound sockets, with [server]'s timeouts and connection cap."""

    def __init__(
        self, app: web.Application, sockets: list[socket.socket], settings: ServerSettings
    ) -> None:
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
            keepalive_timeout=float(settings.header_timeout),
            lingering_time=min(float(settings.body_timeout), 10.0),
        )
        self._sockets = sockets
        self._connections = app[CONNECTIONS_KEY]
        self._listener: Listener | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every listening socket."""
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._sockets]

    async def start(self) -> None:
        """Starts the app and accepts connections."""
        await self._runner.setup()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the aiohttp runner has no server after setup()")
        self._listener = Listener(self._sockets, server, self._connections)
        self._listener.start()

    async def stop(self) -> None:
        """Stops accepting, then closes the open connections and the app."""
        if self._listener is not None:
            await self._listener.close()
        await self._runner.cleanup()
