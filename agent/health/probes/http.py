"""Generic HTTP probe: GET the app's own health URL when one is configured."""

from __future__ import annotations

import ssl
import time

import aiohttp

from agent.health.base import ProbeContext, ProbeResult, not_configured


async def get_ok(ctx: ProbeContext, url: str, *, tls: ssl.SSLContext | bool = True) -> ProbeResult:
    """GET url within the check timeout: 2xx is ok, anything else an error with the status.

    `tls` is aiohttp's `ssl` argument: True for its default verification, or a context."""
    if ctx.http is None:
        raise RuntimeError("HTTP probes need the shared HTTP session")
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=ctx.settings.health.timeout)
    async with ctx.http.get(url, timeout=timeout, allow_redirects=False, ssl=tls) as response:
        latency = time.perf_counter() - started
        data = {"status_code": response.status}
        if 200 <= response.status < 300:
            return ProbeResult(status="ok", latency=latency, data=data)
        return ProbeResult(
            status="error", latency=latency, detail=f"HTTP {response.status}", data=data
        )


async def probe(ctx: ProbeContext) -> ProbeResult:
    """The app's own health URL, when one is configured."""
    url = ctx.settings.health.app_health_url
    if not url:
        return not_configured("health.app_health_url is not set")
    return await get_ok(ctx, url)
