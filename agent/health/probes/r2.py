"""R2 probe: the fetch Worker's own /health on the same origin, with its latency."""

from __future__ import annotations

from urllib.parse import urlsplit

from agent.health.base import ProbeContext, ProbeResult, not_configured
from agent.health.probes.http import get_ok
from agent.telemetry.certificates import observing_context


def health_url(endpoint: str) -> str:
    """GET /health on the origin of R2_FETCH_ENDPOINT."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}/health"


async def probe(ctx: ProbeContext) -> ProbeResult:
    """ok when the Worker answers 2xx; the HTTP status or error otherwise."""
    endpoint = ctx.settings.r2.fetch_endpoint
    if not endpoint:
        return not_configured("R2_FETCH_ENDPOINT is not set")
    url = health_url(endpoint)
    parts = urlsplit(url)
    certificates = ctx.certificates
    if parts.scheme != "https" or certificates is None:
        return await get_ok(ctx, url)
    host, port = parts.hostname or "", parts.port or 443

    def note(peercert: object) -> None:
        certificates.record("r2", host, port, peercert)

    # The Worker's certificate, from the probe's own connection to it (no extra connection).
    return await get_ok(ctx, url, tls=observing_context(note))
