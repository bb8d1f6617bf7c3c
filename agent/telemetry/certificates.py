"""When the certificates of the servers the sidecar talks to expire, as seen on its own connections.

Clients report the peer certificate of a connection they made anyway (IMAP ssl/starttls, the
R2 Worker, the webhook); nothing here opens a connection of its own.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.metrics import Observation

Endpoint = Literal["imap", "r2", "webhook"]
_DAY = 86400.0


@dataclass(frozen=True)
class SeenCertificate:
    """The certificate one endpoint presented at its latest connection."""

    endpoint: Endpoint
    host: str
    port: int
    not_after: float
    seen_at: float


class CertificateExpiry:
    """The latest certificate per (endpoint, host, port); read by the gauge and /health."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, int], SeenCertificate] = {}

    def record(self, endpoint: Endpoint, host: str, port: int, peercert: object) -> None:
        """Notes a connection's peer certificate, as ssl.SSLSocket.getpeercert() returns it.

        An empty or unreadable one (no TLS, or a certificate that was not validated) is ignored.
        """
        not_after = _not_after(peercert)
        if not_after is None:
            return
        seen = SeenCertificate(endpoint, host, port, not_after, self._clock())
        with self._lock:
            self._seen[(endpoint, host, port)] = seen

    def seen(self) -> list[SeenCertificate]:
        """Every endpoint's latest certificate."""
        with self._lock:
            return sorted(self._seen.values(), key=lambda s: (s.endpoint, s.host, s.port))

    def observe(self) -> list[Observation]:
        """tls.certificate.expiry: seconds until notAfter, per endpoint."""
        now = self._clock()
        return [
            Observation(
                s.not_after - now,
                {"server.address": s.host, "server.port": s.port, "tls.endpoint": s.endpoint},
            )
            for s in self.seen()
        ]

    def health(self) -> list[dict[str, Any]]:
        """/health's view: days left per endpoint (negative once expired)."""
        now = self._clock()
        return [
            {
                "endpoint": s.endpoint,
                "server": f"{s.host}:{s.port}",
                "days_left": round((s.not_after - now) / _DAY, 2),
                "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.not_after)),
            }
            for s in self.seen()
        ]


def observing_context(on_handshake: Callable[[object], None]) -> ssl.SSLContext:
    """A default client context (SSL_CERT_FILE honoured) that hands every peer certificate to
    `on_handshake` once a handshake of an asyncio connection completes.

    aiohttp releases a connection as soon as a short answer is read, before the caller could
    ask the response for it; the context sees every handshake instead. `sslobject_class` is the
    documented hook for this (the class SSLContext.wrap_bio returns, which asyncio uses).
    """
    context = ssl.create_default_context()

    class _Observed(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # raises SSLWantReadError until the handshake is done
            on_handshake(self.getpeercert())

    context.sslobject_class = _Observed
    return context


def _not_after(peercert: object) -> float | None:
    if not isinstance(peercert, Mapping):
        return None
    value = peercert.get("notAfter")
    if not isinstance(value, str):
        return None
    try:
        return float(ssl.cert_time_to_seconds(value))
    except ValueError:
        return None
