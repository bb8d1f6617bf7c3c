"""The check harness: thresholds, timeouts, history, masking and probe metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from agent.config import Settings
from agent.health.base import ProbeContext, ProbeResult
from agent.health.registry import CheckSpec, HealthRegistry
from agent.telemetry.masking import Masker


class Sequenced:
    """A probe that answers from a list, then repeats the last answer."""

    def __init__(self, *results: ProbeResult | Exception) -> None:
        self._results: Iterator[ProbeResult | Exception] = iter(results)
        self._last: ProbeResult | Exception = results[-1]

    async def __call__(self, _ctx: ProbeContext) -> ProbeResult:
        result = next(self._results, self._last)
        if isinstance(result, Exception):
            raise result
        return result


OK = ProbeResult(status="ok", latency=0.001)
ERR = ProbeResult(status="error", detail="down")


def _registry(
    probe: Sequenced,
    *,
    failures: int = 2,
    successes: int = 2,
    timeout: float = 1.0,
    secrets: tuple[str, ...] = (),
) -> HealthRegistry:
    registry = HealthRegistry(ProbeContext(settings=Settings()), masker=Masker(secrets), history=3)
    registry.add(
        CheckSpec(
            name="dep",
            probe=probe,
            interval=60,
            timeout=timeout,
            failures_before_error=failures,
            successes_before_ok=successes,
        )
    )
    return registry


async def test_first_result_sets_the_status_from_unknown() -> None:
    registry = _registry(Sequenced(ERR))
    assert registry.state("dep").status == "unknown"
    assert (await registry.run_once("dep")).status == "error"


async def test_error_needs_consecutive_failures_once_ok() -> None:
    registry = _registry(Sequenced(OK, ERR, OK, ERR, ERR))
    statuses = [(await registry.run_once("dep")).status for _ in range(5)]
    assert statuses == ["ok", "ok", "ok", "ok", "error"]


async def test_recovery_needs_consecutive_successes() -> None:
    registry = _registry(Sequenced(ERR, OK, ERR, OK, OK))
    statuses = [(await registry.run_once("dep")).status for _ in range(5)]
    assert statuses == ["error", "error", "error", "error", "ok"]


async def test_a_probe_that_hangs_is_an_error_after_its_timeout() -> None:
    async def hang(_ctx: ProbeContext) -> ProbeResult:
        await asyncio.sleep(30)
        return OK

    registry = HealthRegistry(ProbeContext(settings=Settings()), masker=Masker(()))
    registry.add(CheckSpec(name="slow", probe=hang, interval=60, timeout=0.2))
    state = await asyncio.wait_for(registry.run_once("slow"), timeout=2)
    assert state.status == "error"
    assert state.last is not None
    assert state.last.detail == "timed out after 0.2s"


async def test_an_exception_is_recorded_masked() -> None:
    registry = _registry(
        Sequenced(ConnectionError("refused by redis://:hunter22@db:6379")), secrets=("hunter22",)
    )
    state = await registry.run_once("dep")
    assert state.status == "error"
    assert state.last is not None
    assert "hunter22" not in state.last.detail
    assert state.last.detail.startswith("ConnectionError: refused")


async def test_history_is_bounded_and_failures_are_kept_longer() -> None:
    registry = _registry(Sequenced(ERR, ERR, ERR, ERR, OK, OK, OK, OK), failures=1, successes=1)
    for _ in range(8):
        await registry.run_once("dep")
    view = registry.state("dep").as_dict()
    assert [run["status"] for run in view["history"]] == ["ok", "ok", "ok"]
    assert len(view["recent_failures"]) == 4


async def test_background_loop_runs_each_check_at_once_and_stops() -> None:
    calls = 0

    async def count(_ctx: ProbeContext) -> ProbeResult:
        nonlocal calls
        calls += 1
        return OK

    registry = HealthRegistry(ProbeContext(settings=Settings()), masker=Masker(()))
    registry.add(CheckSpec(name="c", probe=count, interval=0.05, timeout=1))
    await registry.start()
    await asyncio.sleep(0.3)
    await registry.stop()
    seen = calls
    await asyncio.sleep(0.15)
    assert seen >= 3
    assert calls == seen
