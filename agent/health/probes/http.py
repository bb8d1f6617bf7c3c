"""Generic HTTP probe: GET the app's own health URL when one is configured."""

from __future__ import annotations

import time

import aiohttp

from agent.health.base import ProbeContext, ProbeResult, not_configured


async def probe(ctx: ProbeContext) -> ProbeResult:
    """2xx within the check timeout is ok; anything else is an error with the status or reason."""
    url = ctx.settings.health.app_health_url
    if not url:
        return not_configured("health.app_health_url is not set")
    if ctx.http is None:
        raise RuntimeError("the http probe needs the shared HTTP session")
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=ctx.settings.health.timeout)
    async with ctx.http.get(url, timeout=timeout, allow_redirects=False) as response:
        latency = time.perf_counter() - started
        if 200 <= response.status < 300:
            return ProbeResult(status="ok", latency=latency, data={"status_code": response.status})
        return ProbeResult(
            status="error",
            latency=latency,
            detail=f"HTTP {response.status}",
            data={"status_code": response.status},
        )
