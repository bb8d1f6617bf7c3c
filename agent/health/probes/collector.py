"""Collector probe: judged from the outcomes of recent OTLP exports, never by a call of its own."""

from __future__ import annotations

import time
from typing import Any

from agent.health.base import ProbeContext, ProbeResult, not_configured


async def probe(ctx: ProbeContext) -> ProbeResult:
    """error when the last export of any enabled signal failed; ok once one succeeds again."""
    if ctx.exports is None:
        return not_configured("telemetry export is disabled")
    status = ctx.exports.status()
    enabled = {signal: s for signal, s in status.items() if not s.get("disabled")}
    if not enabled:
        return not_configured("every OTLP exporter is disabled")
    failing = {signal: s for signal, s in enabled.items() if s.get("consecutive_failures", 0) > 0}
    data: dict[str, Any] = {
        signal: {
            "last_success": s.get("last_success"),
            "last_failure": s.get("last_failure"),
            "consecutive_failures": s.get("consecutive_failures", 0),
        }
        for signal, s in enabled.items()
    }
    if failing:
        signal, state = next(iter(failing.items()))
        error = state.get("last_error") or "export failed"
        return ProbeResult(status="error", detail=f"{signal} export failing: {error}", data=data)
    if all(s.get("last_success") is None for s in enabled.values()):
        data["waiting_since"] = time.time()
        return ProbeResult(status="ok", detail="no export yet", data=data)
    return ProbeResult(status="ok", data=data)
