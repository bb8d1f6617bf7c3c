"""R2 probe: the fetch Worker's own /health on the same origin, with its latency."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import aiohttp

from agent.health.base import ProbeContext, ProbeResult, not_configured


def health_url(endpoint: str) -> str:
    """GET /health on the origin of R2_FETCH_ENDPOINT."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}/health"


async def probe(ctx: ProbeContext) -> ProbeResult:
    """ok when the Worker answers 2xx; the HTTP status or error otherwise."""
    endpoint = ctx.settings.r2.fetch_endpoint
    if not endpoint:
        return not_configured("R2_FETCH_ENDPOINT is not set")
    if ctx.http is None:
        raise RuntimeError("the r2 probe needs the shared HTTP session")
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=ctx.settings.health.timeout)
    async with ctx.http.get(
        health_url(endpoint), timeout=timeout, allow_redirects=False
    ) as response:
        latency = time.perf_counter() - started
        if 200 <= response.status < 300:
            return ProbeResult(status="ok", latency=latency)
        return ProbeResult(status="error", latency=latency, detail=f"HTTP {response.status}")
