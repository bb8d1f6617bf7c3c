"""Async IMAP client with hard timeouts, one span and one duration per command, and reconnects."""

# Library choice: imapclient (IMAPClient), run in one dedicated worker thread per connection
# (a connection is not thread-safe, so every command of it goes through the same single-thread
# executor). stdlib imaplib on Python 3.11 has no public IDLE; imapclient is a well-kept
# synchronous wrapper over it with a public `idle()`, `idle_check(timeout)`, `idle_done()`,
# `oauth2_login`, `oauthbearer_login` and `starttls`, parsed FETCH/SEARCH responses and a socket
# timeout that bounds connect, the banner read and every read of every command. It fits the
# one-thread-per-connection design as it is; aioimaplib would mean rewriting the client around
# its own event-loop protocol for no behaviour we need: the agent watches a handful of
# mailboxes, so one thread each costs nothing and keeps the event loop free. An asyncio-level
# backstop (the timeout plus a little slack) still bounds each call, in case a server drips
# bytes slowly enough to defeat the per-read socket timeout.
#
# Folder names are sent in modified UTF-7 by folder_name.py, the one place that encodes them:
# imapclient's own encoding is switched off (`folder_encode = False`), so a name is never encoded
# twice.
#
# Folders are opened read-only (EXAMINE): the sidecar never changes mail, and BODY.PEEK leaves
# the \Seen flag alone too, so the user's mail client sees the mailbox as it was. Flags can
# still be read in a read-only folder, should the poller need them later.

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from agent.config import ImapSettings, MailboxSettings
from agent.pipeline.folder_name import FolderNameError, encode_folder
from agent.pipeline.oauth import AccessToken, AccessTokenSource, TokenError
from agent.retry import Backoff
from agent.telemetry.catalogue import Instruments

T = TypeVar("T")

# How far past the socket timeout the asyncio backstop fires.
_BACKSTOP_SLACK = 1.0
# A FETCH may legitimately outlast the timeout while bytes keep flowing; the backstop grants
# this throughput on top (bytes per second) before it calls the server stalled.
_MIN_FETCH_THROUGHPUT = 1_000_000
_DEFAULT_FETCH_BATCH = 50
# Untagged responses kept per IDLE wait, for spans and logs (a server may send many).
_IDLE_RESPONSES_KEPT = 20
# UIDs per RFC822.SIZE fetch: about 8 KB of command line, far below servers' line limits.
_SIZE_CHUNK = 1000


class ImapError(Exception):
    """An IMAP operation failed; `error_type` is a low-cardinality name for metrics and spans."""

    error_type = "imap"


class ImapAuthError(ImapError):
    """The server refused the credentials."""

    error_type = "auth"


class ImapTokenError(ImapAuthError):
    """No OAuth access token could be had for the login (the token endpoint failed)."""

    error_type = "oauth_refresh"


class ImapTimeoutError(ImapError):
    """Connect or a command did not finish within the timeout."""

    error_type = "timeout"


class ImapConnectionError(ImapError):
    """The TCP or TLS connection could not be made or was lost."""

    error_type = "connection"


class ImapProtocolError(ImapError):
    """The server answered NO/BAD or something this client cannot read."""

    error_type = "protocol"


@dataclass(frozen=True)
class MailboxStatus:
    """What SELECT (EXAMINE) reports about the folder."""

    uidvalidity: int
    exists: int
    uidnext: int | None


@dataclass
class FetchedMessage:
    """One fetched message; `partial` when only the first max_bytes of `size` were fetched."""

    uid: int
    size: int
    data: bytes
    partial: bool
    # The server's INTERNALDATE (Unix seconds), when it sent one: when the mail arrived.
    internal_date: float | None = None

    def take_data(self) -> bytes:
        """The raw bytes, handed over once: the message stops holding them.

        A batch's messages live until the whole batch is done; parsing takes the bytes so that
        raw mail is not held through R2 transfers and webhook retries.
        """
        data, self.data = self.data, b""
        return data


@dataclass(frozen=True)
class IdleEvents:
    """What the server said during one IDLE wait."""

    new_mail: bool = False
    # Whether the server sent anything at all (its "OK Still here" keepalives count).
    heard: bool = False
    # time.time_ns() when the first EXISTS or RECENT arrived.
    woke_ns: int | None = None
    responses: tuple[str, ...] = field(default_factory=tuple)


class IdleWake:
    """Ends an IDLE wait from another thread: set() wakes the waiting poll() at once."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)

    def set(self) -> None:
        """Wakes the wait (idempotent, callable from any thread)."""
        if not self._flag.is_set():
            self._flag.set()
            with contextlib.suppress(OSError):
                self._writer.send(b"!")

    def is_set(self) -> bool:
        """Whether set() was called."""
        return self._flag.is_set()

    def fileno(self) -> int:
        """For poll(): readable once set."""
        return self._reader.fileno()

    def close(self) -> None:
        """Releases the socket pair."""
        self._reader.close()
        self._writer.close()


class ImapClient:
    """One IMAP connection: connect, login, select, then search and fetch; close when done."""

    def __init__(
        self,
        mailbox: MailboxSettings,
        *,
        timeout: float,
        tracer: Tracer,
        instruments: Instruments,
        ssl_context: ssl.SSLContext | None = None,
        tokens: AccessTokenSource | None = None,
    ) -> None:
        self._mailbox = mailbox
        self._tokens = tokens
        self._timeout = float(timeout)
        self._tracer = tracer
        self._instruments = instruments
        self._ssl_context = ssl_context
        self._conn: IMAPClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._state = "new"  # new -> open -> (broken | closed)
        self._folder = mailbox.folder

    @property
    def connected(self) -> bool:
        """Whether the connection is open and has not been broken by an error."""
        return self._state == "open" and self._conn is not None

    @property
    def mailbox(self) -> MailboxSettings:
        """The mailbox this client talks to."""
        return self._mailbox

    async def connect(self) -> None:
        """Opens TCP (+ TLS per the mailbox's mode) and reads the server greeting."""
        if self._state == "open":
            raise RuntimeError("ImapClient.connect() called on an open connection")
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"imap-{self._mailbox.name}"
        )
        try:
            with self._operation("connect") as span:
                span.set_attribute("imap.tls", self._mailbox.tls)
                self._conn = await self._in_thread(self._open)
        except BaseException:
            self._state = "broken"
            await self.close()
            self._state = "broken"
            raise
        self._state = "open"

    async def login(self) -> None:
        """Authenticates: LOGIN with the password, or SASL XOAUTH2 / OAUTHBEARER with an access
        token; a refused token is refreshed once and tried again (when it can be refreshed)."""
        mailbox = self._mailbox
        if mailbox.auth == "password":
            await self._command("login", self._login)
            return
        tokens = self._tokens
        if tokens is None:
            raise RuntimeError(
                f"ImapClient: mailbox {mailbox.name} uses {mailbox.auth}, but has no token source"
            )
        token = await self._access_token(tokens.token())
        try:
            await self._sasl_login(token.value)
        except ImapAuthError:
            if not tokens.refreshable or not self.connected:
                raise
            token = await self._access_token(tokens.refresh(token))
            await self._sasl_login(token.value)

    async def _access_token(self, pending: Awaitable[AccessToken]) -> AccessToken:
        try:
            return await pending
        except TokenError as exc:
            with self._operation("login") as span:
                span.set_attribute("imap.auth", self._mailbox.auth)
                raise ImapTokenError(
                    f"{self._where()}: no access token for {self._mailbox.username!r}: {exc}"
                ) from None

    async def _sasl_login(self, token: str) -> None:
        user = self._mailbox.username

        def authenticate(conn: IMAPClient) -> None:
            if self._mailbox.auth == "oauthbearer":
                conn.oauthbearer_login(user, token)
            else:
                conn.oauth2_login(user, token)

        await self._command("login", authenticate, attributes={"imap.auth": self._mailbox.auth})

    async def select(self, folder: str | None = None) -> MailboxStatus:
        """Opens `folder` (default: the configured one) read-only and returns its status."""
        name = folder or self._mailbox.folder
        self._folder = name
        try:
            wire = encode_folder(name)
        except FolderNameError as exc:
            raise ImapProtocolError(f"EXAMINE {name}: {exc}") from None

        def examine(conn: IMAPClient) -> MailboxStatus:
            try:
                response = conn.select_folder(wire, readonly=True)
            except IMAPClientAbortError:
                raise
            except IMAPClientError as exc:  # NO/BAD: say which folder, by its real name
                raise ImapProtocolError(f"EXAMINE {name}: {_describe(exc)}") from None
            uidvalidity = response.get(b"UIDVALIDITY")
            if not isinstance(uidvalidity, int):
                raise ImapProtocolError(f"EXAMINE {name}: the server sent no UIDVALIDITY")
            exists = response.get(b"EXISTS")
            uidnext = response.get(b"UIDNEXT")
            return MailboxStatus(
                uidvalidity=uidvalidity,
                exists=exists if isinstance(exists, int) else 0,
                uidnext=uidnext if isinstance(uidnext, int) else None,
            )

        return await self._command("select", examine)

    async def search_uids_above(self, uid: int) -> list[int]:
        """UIDs greater than `uid` in the selected folder, ascending."""

        def search(conn: IMAPClient) -> list[int]:
            found = conn.search(["UID", f"{uid + 1}:*"])
            # "n:*" always matches the highest UID, even when it is below n (RFC 3501 6.4.8).
            return sorted({int(u) for u in found if int(u) > uid})

        return await self._command("search", search)

    async def fetch_sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID that still exists."""
        if not uids:
            return {}

        wanted = set(uids)

        def sizes(conn: IMAPClient) -> dict[int, int]:
            result: dict[int, int] = {}
            # imapclient lists UIDs one by one: chunks keep each command line short.
            ordered = sorted(wanted)
            for start in range(0, len(ordered), _SIZE_CHUNK):
                response = conn.fetch(ordered[start : start + _SIZE_CHUNK], ["RFC822.SIZE"])
                for uid, items in response.items():
                    size = items.get(b"RFC822.SIZE")
                    if isinstance(size, int):
                        result[uid] = size
            return result

        return await self._command(
            "fetch", sizes, attributes={"imap.fetch.items": "RFC822.SIZE"}, count=len(uids)
        )

    async def fetch(
        self,
        uids: Sequence[int],
        *,
        max_bytes: int,
        batch_size: int = _DEFAULT_FETCH_BATCH,
        sizes: Mapping[int, int] | None = None,
    ) -> list[FetchedMessage]:
        """Fetches whole messages, and only the first `max_bytes` of larger ones (flagged partial).

        Nothing is marked \\Seen (BODY.PEEK). UIDs that vanished meanwhile are left out.
        `sizes` (RFC822.SIZE by UID, as fetch_sizes returns them) saves asking the server again.
        """
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if sizes is None:
            sizes = await self.fetch_sizes(uids)
        whole = [u for u in uids if u in sizes and sizes[u] <= max_bytes]
        large = [u for u in uids if u in sizes and sizes[u] > max_bytes]
        bodies: dict[int, tuple[bytes, float | None]] = {}
        step = max(1, batch_size)
        for group, item in ((whole, "BODY.PEEK[]"), (large, f"BODY.PEEK[]<0.{max_bytes}>")):
            for start in range(0, len(group), step):
                batch = group[start : start + step]
                expected = sum(min(sizes[u], max_bytes) for u in batch)
                bodies.update(await self._fetch_bodies(batch, item, expected))
        return [
            FetchedMessage(
                uid=u,
                size=sizes[u],
                data=bodies[u][0],
                partial=sizes[u] > max_bytes,
                internal_date=bodies[u][1],
            )
            for u in uids
            if u in bodies
        ]

    async def _fetch_bodies(
        self, uids: list[int], item: str, expected: int
    ) -> dict[int, tuple[bytes, float | None]]:
        wanted = set(uids)

        def bodies(conn: IMAPClient) -> dict[int, tuple[bytes, float | None]]:
            response = conn.fetch(uids, [item, "INTERNALDATE"])
            result: dict[int, tuple[bytes, float | None]] = {}
            for uid, items in response.items():
                if uid not in wanted:
                    continue
                # BODY.PEEK[] answers as BODY[], a partial one as BODY[]<0>.
                body = next((v for k, v in items.items() if k.startswith(b"BODY[")), None)
                arrived = items.get(b"INTERNALDATE")
                if isinstance(body, bytes):
                    stamp = arrived.timestamp() if isinstance(arrived, datetime) else None
                    result[uid] = (body, stamp)
            return result

        return await self._command(
            "fetch",
            bodies,
            attributes={"imap.fetch.items": item.split("<")[0]},
            count=len(uids),
            extra_seconds=expected / _MIN_FETCH_THROUGHPUT,
        )

    async def noop(self) -> tuple[str, ...]:
        """NOOP: proves the connection is alive; returns the untagged responses it drew (new
        mail among them, see announces_mail)."""
        return await self._command("noop", lambda conn: _summaries(conn.noop()[1]))

    async def supports_idle(self) -> bool:
        """Whether the server advertises IDLE (RFC 2177) on this connection."""
        return await self._command("capability", lambda conn: conn.has_capability("IDLE"))

    async def idle_start(self) -> None:
        """Sends IDLE; until idle_done(), only idle_wait() may be called."""
        await self._command("idle", lambda conn: conn.idle())

    async def idle_wait(self, seconds: float, wake: IdleWake) -> IdleEvents:
        """Waits in IDLE up to `seconds` for the server to announce new mail (EXISTS or RECENT).

        The wait runs in the connection's thread and sleeps in poll() on the connection's
        socket (imapclient offers it for exactly this) and on `wake`, so it costs nothing while
        the server is silent and setting `wake` ends it at once. The command timeout does not
        bound this wait (silence is normal in IDLE), the asyncio backstop still does. A closed
        connection or BYE raises ImapConnectionError.
        """
        where = self._where()

        def wait(conn: IMAPClient) -> IdleEvents:
            end = time.monotonic() + seconds
            kept: list[str] = []
            heard = False
            woke_ns: int | None = None
            early = 0
            # poll(), not select(): select() refuses descriptors above FD_SETSIZE (1024), which a
            # busy process with a raised file limit reaches.
            watch = select.poll()
            watch.register(conn.socket(), select.POLLIN)
            watch.register(wake, select.POLLIN)
            while not wake.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                # A line that TLS or imaplib's reader already buffered is invisible to poll()
                # (as to idle_check itself): it is read with the server's next line, at the
                # latest when the keepalive check's DONE draws it (IdleSession.wait).
                readable = watch.poll(left * 1000)
                if wake.is_set() or not readable:
                    continue
                responses = conn.idle_check(timeout=0)
                if not responses:
                    # A readable socket with nothing to read is a closed connection
                    # (idle_check swallows EOF); once may be half a line, twice is not.
                    early += 1
                    if early >= 2:
                        raise ImapConnectionError(f"{where}: connection closed during IDLE")
                    continue
                early, heard = 0, True
                summaries = _summaries(responses)
                kept.extend(summaries[: _IDLE_RESPONSES_KEPT - len(kept)])
                if any(summary.startswith("BYE") for summary in summaries):
                    raise ImapConnectionError(f"{where}: the server ended IDLE with BYE")
                if announces_mail(summaries):
                    woke_ns = time.time_ns()
                    break
            return IdleEvents(
                new_mail=woke_ns is not None, heard=heard, woke_ns=woke_ns, responses=tuple(kept)
            )

        conn = self._require_open("idle_wait")
        async with self._lock:
            try:
                return await self._in_thread(lambda: wait(conn), max(0.0, seconds))
            except ImapError:
                self._break()
                raise
            except (OSError, IMAPClientError) as exc:
                error = self._translate(exc, "idle")
                self._break()
                raise error from None

    async def idle_done(self) -> tuple[str, ...]:
        """Sends DONE and reads the end of IDLE, bounded by the command timeout; returns the
        untagged responses that arrived meanwhile (a new-mail announcement may be among them)."""
        return await self._command("done", lambda conn: _summaries(conn.idle_done()[1]))

    async def logout(self) -> None:
        """LOGOUT, then closes the connection (which is closed even when LOGOUT fails)."""
        try:
            await self._command("logout", lambda conn: conn.logout())
        finally:
            await self.close()

    async def close(self) -> None:
        """Drops the connection without a goodbye; safe to call at any time, any number of times."""
        conn, executor = self._conn, self._executor
        self._conn, self._executor = None, None
        if self._state != "new":
            self._state = "closed"
        if conn is not None:
            _drop(conn)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _open(self) -> IMAPClient:
        """TCP, TLS per the mailbox's mode, and the greeting; runs in the connection's thread."""
        host, port, mode = self._mailbox.host, self._mailbox.effective_port, self._mailbox.tls
        context = self._ssl_context or ssl.create_default_context()
        conn = IMAPClient(
            host,
            port=port,
            ssl=mode == "ssl",
            ssl_context=context,
            timeout=SocketTimeout(connect=self._timeout, read=self._timeout),
        )
        conn.folder_encode = False  # folder_name.encode_folder() is the one encoder
        conn.normalise_times = False  # INTERNALDATE as an aware datetime, not local time
        if mode == "starttls":
            try:
                conn.starttls(ssl_context=context)
            except BaseException:
                _drop(conn)
                raise
        self._note_certificate(conn.socket())
        return conn

    def _note_certificate(self, sock: socket.socket) -> None:
        """The server certificate of this connection (ssl and starttls), for the expiry gauge."""
        if isinstance(sock, ssl.SSLSocket):
            self._instruments.certificates.record(
                "imap", self._mailbox.host, self._mailbox.effective_port, sock.getpeercert()
            )

    def _login(self, conn: IMAPClient) -> None:
        """The login step; runs in the connection's thread."""
        conn.login(self._mailbox.username, self._mailbox.password)

    async def _command(
        self,
        command: str,
        call: Callable[[IMAPClient], T],
        *,
        attributes: dict[str, str] | None = None,
        count: int | None = None,
        extra_seconds: float = 0.0,
    ) -> T:
        conn = self._require_open(command)
        with self._operation(command) as span:
            for key, value in (attributes or {}).items():
                span.set_attribute(key, value)
            if count is not None:
                span.set_attribute("imap.message.count", count)
            async with self._lock:
                return await self._in_thread(lambda: call(conn), extra_seconds)

    def _require_open(self, command: str) -> IMAPClient:
        if self._state == "new":
            raise RuntimeError(f"ImapClient.{command}() called before connect()")
        if self._state == "closed":
            raise RuntimeError(f"ImapClient.{command}() called after close()")
        if self._state == "broken" or self._conn is None:
            raise ImapConnectionError(
                f"{self._where()}: the connection was dropped after an earlier error; reconnect"
            )
        return self._conn

    async def _in_thread(self, fn: Callable[[], T], extra_seconds: float = 0.0) -> T:
        if self._executor is None:
            raise RuntimeError("ImapClient is not connected")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, fn)
        # An abandoned future's late exception is expected, not worth a warning.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            done, _ = await asyncio.wait(
                {future}, timeout=self._timeout + _BACKSTOP_SLACK + extra_seconds
            )
        except asyncio.CancelledError:
            # The command may be half-sent: this connection cannot be trusted any more.
            self._break()
            raise
        if future not in done:
            self._break()
            raise ImapTimeoutError(f"{self._where()}: no answer within {self._timeout:g}s")
        return future.result()

    def _break(self) -> None:
        conn = self._conn
        self._conn = None
        self._state = "broken"
        if conn is not None:
            _drop(conn)  # unblocks the worker thread if it still waits on the socket

    def _where(self) -> str:
        return f"IMAP {self._mailbox.host}:{self._mailbox.effective_port}"

    @contextlib.contextmanager
    def _operation(self, command: str) -> Iterator[Span]:
        attributes: dict[str, str | int] = {
            "server.address": self._mailbox.host,
            "server.port": self._mailbox.effective_port,
            "imap.mailbox": self._folder,
            "imap.command": command,
        }
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"imap.{command}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except asyncio.CancelledError:
                self._record(command, started, "cancelled")
                raise
            except ImapError as exc:
                self._fail(span, command, started, exc)
                raise
            except (OSError, IMAPClientError) as exc:
                error = self._translate(exc, command)
                self._fail(span, command, started, error)
                raise error from None
            self._record(command, started, None)

    def _fail(self, span: Span, command: str, started: float, error: ImapError) -> None:
        if isinstance(error, ImapTimeoutError | ImapConnectionError):
            self._break()
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)))
        span.set_attribute("error.type", error.error_type)
        self._record(command, started, error.error_type)

    def _record(self, command: str, started: float, error_type: str | None) -> None:
        attributes = {"imap.command": command, "outcome": "ok" if error_type is None else "error"}
        if error_type is not None:
            attributes["error.type"] = error_type
        self._instruments.imap_operation_duration.record(time.perf_counter() - started, attributes)

    def _translate(self, exc: BaseException, command: str) -> ImapError:
        """The one place library exceptions become ours; the password never appears."""
        detail = _scrub(_describe(exc), self._mailbox.password)
        where = self._where()
        if isinstance(exc, TimeoutError) or _caused_by_timeout(exc):
            return ImapTimeoutError(f"{where}: {command} timed out after {self._timeout:g}s")
        if isinstance(exc, IMAPClientAbortError):
            return ImapConnectionError(f"{where}: {command}: connection lost ({detail})")
        if isinstance(exc, IMAPClientError):
            if command == "login" or isinstance(exc, LoginError):
                user, how = self._mailbox.username, self._mailbox.auth
                return ImapAuthError(f"{where}: login as {user!r} ({how}) refused ({detail})")
            return ImapProtocolError(f"{where}: {command}: {detail}")
        if isinstance(exc, ssl.SSLError):
            return ImapConnectionError(f"{where}: {command}: TLS failed ({detail})")
        return ImapConnectionError(f"{where}: {command}: {detail}")


class ReconnectingSession:
    """Owns one ImapClient and hands out a connected, logged-in, selected one, reconnecting with
    exponential backoff and jitter after failures."""

    def __init__(
        self,
        mailbox: MailboxSettings,
        imap: ImapSettings,
        *,
        tracer: Tracer,
        instruments: Instruments,
        backoff: Backoff | None = None,
        ssl_context: ssl.SSLContext | None = None,
        tokens: AccessTokenSource | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._tokens = tokens
        base = backoff or Backoff(initial=1.0, maximum=float(imap.reconnect_max_backoff))
        self._backoff = Backoff(
            initial=base.initial,
            maximum=min(base.maximum, float(imap.reconnect_max_backoff)),
            factor=base.factor,
            jitter=base.jitter,
        )
        self._mailbox = mailbox
        self._timeout = float(imap.timeout)
        self._tracer = tracer
        self._instruments = instruments
        self._ssl_context = ssl_context
        self._sleep = sleep
        self._client: ImapClient | None = None
        self._broken = False
        self._closed = False
        self._failures = 0
        self._last_failure = 0.0
        self._last_delay = 0.0
        self._status: MailboxStatus | None = None
        self._ensuring = asyncio.Lock()

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last success."""
        return self._failures

    @property
    def last_delay(self) -> float:
        """The backoff delay chosen before the latest attempt (0 when none was needed)."""
        return self._last_delay

    @property
    def status(self) -> MailboxStatus | None:
        """The folder status from the latest successful select."""
        return self._status

    @property
    def current(self) -> ImapClient | None:
        """The open client, if there is one and it has not failed; never connects."""
        client = self._client
        if client is not None and client.connected and not self._broken:
            return client
        return None

    async def ensure(self) -> ImapClient:
        """A ready client; after failures, waits out the backoff first. Raises ImapError."""
        async with self._ensuring:
            return await self._ensure()

    async def _ensure(self) -> ImapClient:
        if self._closed:
            raise RuntimeError("ReconnectingSession.ensure() called after close()")
        client = self._client
        if client is not None and client.connected and not self._broken:
            return client
        await self._discard()
        self._last_delay = 0.0
        if self._failures:
            delay = self._backoff.delay(self._failures)
            self._last_delay = delay
            remaining = delay - (time.monotonic() - self._last_failure)
            if remaining > 0:
                await self._sleep(remaining)
        client = ImapClient(
            self._mailbox,
            timeout=self._timeout,
            tracer=self._tracer,
            instruments=self._instruments,
            ssl_context=self._ssl_context,
            tokens=self._tokens,
        )
        self._client = client
        try:
            await client.connect()
            await client.login()
            self._status = await client.select()
        except ImapError:
            self._failures += 1
            self._last_failure = time.monotonic()
            await self._discard()
            raise
        self._failures = 0
        self._broken = False
        return client

    def mark_broken(self) -> None:
        """The caller saw the connection fail: the next ensure() reconnects."""
        self._broken = True

    async def close(self) -> None:
        """Logs out if connected and releases the connection; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and client.connected:
            with contextlib.suppress(ImapError):
                await client.logout()
        if client is not None:
            await client.close()

    async def _discard(self) -> None:
        client, self._client = self._client, None
        self._broken = False
        if client is not None:
            await client.close()


def _drop(conn: IMAPClient) -> None:
    # Runs on the event loop while the worker thread may still be reading an answer. The
    # socket is shut down first: that ends the read at once (EOF). imaplib's shutdown() closes
    # the buffered reader first, and that close waits for the reader's lock, which a blocked
    # read holds until the socket timeout: the event loop would stall for the whole timeout.
    with contextlib.suppress(OSError, AttributeError, IMAPClientError):
        conn.socket().shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError, AttributeError, IMAPClientError):
        conn.shutdown()


def announces_mail(summaries: Sequence[str]) -> bool:
    """Whether untagged responses (as IdleEvents.responses) include EXISTS or RECENT."""
    return any(summary.split(" ")[1:2] in (["EXISTS"], ["RECENT"]) for summary in summaries)


def _summaries(responses: Sequence[tuple[object, ...]]) -> tuple[str, ...]:
    """imapclient's parsed untagged responses as short lines: (3, b"EXISTS") -> "3 EXISTS"."""
    return tuple(" ".join(_word(part) for part in response)[:200] for response in responses)


def _word(part: object) -> str:
    if isinstance(part, bytes):
        return part.decode("ascii", "replace")
    return str(part)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _caused_by_timeout(exc: BaseException) -> bool:
    # imaplib (under imapclient) turns a send that timed out into abort("socket error: ...").
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, TimeoutError)
