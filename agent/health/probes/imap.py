"""IMAP probe: a short separate session per mailbox (connect, login, EXAMINE its folder, logout)."""

from __future__ import annotations

import time

from opentelemetry.metrics import NoOpMeter
from opentelemetry.trace import NoOpTracer

from agent.health.base import ProbeContext, ProbeResult, not_configured
from agent.pipeline.imap import ImapClient, ImapError
from agent.telemetry.catalogue import Instruments


async def probe(ctx: ProbeContext) -> ProbeResult:
    """ok when every configured mailbox accepts a login and opens its folder; the first failure
    is the detail (a folder that does not exist fails here, not only in the poller)."""
    mailboxes = ctx.settings.mailboxes
    if not mailboxes:
        return not_configured("no mailbox is configured")
    # Probe sessions stay out of the pipeline's IMAP spans and metrics; the certificate they
    # are shown still counts (the only connection made when background tasks are off).
    instruments = Instruments(NoOpMeter("probe"), certificates=ctx.certificates)
    latencies: dict[str, float] = {}
    for mailbox in mailboxes:
        client = ImapClient(
            mailbox,
            timeout=ctx.settings.health.timeout,
            tracer=NoOpTracer(),
            instruments=instruments,
            tokens=ctx.tokens.get(mailbox) if ctx.tokens is not None else None,
        )
        started = time.perf_counter()
        try:
            await client.connect()
            await client.login()
            await client.select()
            await client.logout()
        except ImapError as exc:
            return ProbeResult(
                status="error",
                detail=f"{mailbox.name}: {exc.error_type}: {exc}",
                data={"mailbox": mailbox.name, "error.type": exc.error_type},
            )
        finally:
            await client.close()
        latencies[mailbox.name] = time.perf_counter() - started
    return ProbeResult(
        status="ok",
        latency=max(latencies.values()),
        data={"latency_ms": {k: round(v * 1000, 2) for k, v in latencies.items()}},
    )
