"""Redis probe: PING round trip through the store, not_configured on the embedded store."""

from __future__ import annotations

from agent.health.base import ProbeContext, ProbeResult, not_configured


async def probe(ctx: ProbeContext) -> ProbeResult:
    """PING the Redis store and report its latency."""
    if not ctx.settings.store.redis_url or ctx.store is None or ctx.store.backend != "redis":
        return not_configured("REDIS_URL is not set; the embedded store is used")
    latency = await ctx.store.ping()
    return ProbeResult(status="ok", latency=latency)
