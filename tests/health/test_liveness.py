"""Liveness and readiness verdicts, and their Kubernetes-style rendering."""

from __future__ import annotations

import time

from agent.config import Settings
from agent.health.base import ProbeContext, ProbeResult
from agent.health.liveness import Lifecycle, LoopWatchdog, liveness, readiness
from agent.health.registry import CheckSpec, HealthRegistry
from agent.telemetry.masking import Masker


async def _up(_ctx: ProbeContext) -> ProbeResult:
    return ProbeResult(status="ok")


async def _down(_ctx: ProbeContext) -> ProbeResult:
    return ProbeResult(status="error", detail="connection refused")


async def _registry() -> HealthRegistry:
    registry = HealthRegistry(ProbeContext(settings=Settings()), masker=Masker(()))
    registry.add(CheckSpec(name="redis", probe=_down, interval=60, timeout=1))
    registry.add(CheckSpec(name="imap", probe=_up, interval=60, timeout=1))
    for name in ("redis", "imap"):
        await registry.run_once(name)
    return registry


def test_watchdog_reports_a_blocked_loop() -> None:
    dog = LoopWatchdog(tick=0.25, window=30)
    now = time.monotonic()
    dog.record(now, 0.01)
    assert liveness(dog, {}, lag_threshold=5).ok
    dog.record(now, 7.0)
    verdict = liveness(dog, {}, lag_threshold=5)
    assert not verdict.ok
    assert "[-]event-loop failed: lag 7.00s over 5s" in verdict.render("livez", verbose=True)


def test_a_stalled_poller_hook_fails_liveness() -> None:
    dog = LoopWatchdog()
    hooks = {"poller:sales": lambda: (False, "no successful cycle for 400s")}
    verdict = liveness(dog, hooks, lag_threshold=5)
    assert not verdict.ok
    assert verdict.render("livez", verbose=False) == "livez check failed"
    assert liveness(dog, hooks, lag_threshold=5, exclude={"poller:sales"}).ok


async def test_readiness_fails_on_a_required_check_and_exclude_skips_it() -> None:
    registry = await _registry()
    life = Lifecycle(startup_done=True)
    verdict = readiness(life, registry, required=["redis", "imap"])
    assert not verdict.ok
    text = verdict.render("readyz", verbose=True)
    assert "[-]redis failed: connection refused" in text
    assert "[+]imap ok" in text
    assert text.endswith("readyz check failed")
    assert readiness(life, registry, required=["redis", "imap"], exclude={"redis"}).ok


async def test_readiness_fails_while_starting_and_while_draining() -> None:
    registry = await _registry()
    assert not readiness(Lifecycle(), registry, required=["imap"]).ok
    assert readiness(Lifecycle(startup_done=True), registry, required=["imap"]).ok
    assert not readiness(
        Lifecycle(startup_done=True, draining=True), registry, required=["imap"]
    ).ok
