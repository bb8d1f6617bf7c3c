"""Self-signed certificates for loopback TLS servers in tests."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.components import require_binary


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 (an IP SAN) and its key."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """What a TLS server presents."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(directory: Path, *, days: int) -> Certificate:
    """A new certificate valid for `days` days, written to directory/cert.pem and key.pem."""
    openssl = require_binary("openssl", "apt-get install openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", str(days), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return Certificate(cert, key)
