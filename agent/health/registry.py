"""Runs every health check in the background and keeps recent results, so probes read a cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import Observation
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode, Tracer

from agent.health.base import Probe, ProbeContext, ProbeResult, Status
from agent.telemetry.catalogue import Instruments
from agent.telemetry.masking import Masker


@dataclass(frozen=True)
class CheckSpec:
    """One check: its probe and the harness settings around it."""

    name: str
    probe: Probe
    interval: float
    timeout: float
    required: bool = False
    failures_before_error: int = 1
    successes_before_ok: int = 1


@dataclass(frozen=True)
class CheckRun:
    """One run of a check, as kept in its history."""

    at: float
    status: Status
    latency: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form for /health and the dashboard."""
        return {
            "at": self.at,
            "status": self.status,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 2),
            "detail": self.detail,
        }


@dataclass
class CheckState:
    """The current verdict of a check, with failure thresholds applied, and its recent runs."""

    spec: CheckSpec
    history_size: int
    status: Status = "unknown"
    last: ProbeResult | None = None
    last_run_at: float | None = None
    last_ok_at: float | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    recent: deque[CheckRun] = field(default_factory=deque)
    failures: deque[CheckRun] = field(default_factory=deque)

    def record(self, result: ProbeResult, at: float) -> None:
        """Applies one result: thresholds decide when the verdict flips."""
        self.last = result
        self.last_run_at = at
        run = CheckRun(at=at, status=result.status, latency=result.latency, detail=result.detail)
        self.recent.append(run)
        while len(self.recent) > self.history_size:
            self.recent.popleft()
        if result.status == "error":
            self.failures.append(run)
            # Failures are kept longer than successes: they are what an operator looks for.
            while len(self.failures) > self.history_size * 2:
                self.failures.popleft()
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self.status in ("unknown", "error") or (
                self.consecutive_failures >= self.spec.failures_before_error
            ):
                self.status = "error"
        else:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if result.status == "ok":
                self.last_ok_at = at
            if self.status != "error" or (
                self.consecutive_successes >= self.spec.successes_before_ok
            ):
                self.status = result.status

    @property
    def up(self) -> bool:
        """Whether the verdict lets readiness pass."""
        return self.status in ("ok", "not_configured", "disabled")

    def summary(self) -> dict[str, Any]:
        """The verdict and the last run, without history (what /health needs per check)."""
        last = self.last
        return {
            "status": self.status,
            "required": self.spec.required,
            "latency_ms": None
            if last is None or last.latency is None
            else round(last.latency * 1000, 2),
            "error": last.detail if last is not None and last.status == "error" else None,
            "detail": last.detail if last is not None else "",
            "last_check": self.last_run_at,
            "last_ok": self.last_ok_at,
            "consecutive_failures": self.consecutive_failures,
            "data": dict(last.data) if last is not None else {},
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON form for the dashboard: the summary and the recent runs."""
        return self.summary() | {
            "history": [run.as_dict() for run in self.recent],
            "recent_failures": [run.as_dict() for run in self.failures],
        }


class HealthRegistry:
    """Holds the checks, runs each on its own interval, and publishes probe.up / probe.duration."""

    def __init__(
        self,
        ctx: ProbeContext,
        *,
        masker: Masker,
        instruments: Instruments | None = None,
        tracer: Tracer | None = None,
        history: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ctx = ctx
        self._masker = masker
        self._tracer = tracer
        self._history = history
        self._clock = clock
        self._states: dict[str, CheckState] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        if instruments is not None:
            instruments.publish("probe.up", self._observe_up)
            instruments.publish("probe.duration", self._observe_duration)

    def add(self, spec: CheckSpec) -> None:
        """Registers a check; must happen before start()."""
        if spec.name in self._states:
            raise ValueError(f"health check {spec.name!r} is registered twice")
        self._states[spec.name] = CheckState(spec=spec, history_size=self._history)

    def state(self, name: str) -> CheckState:
        """The state of one check."""
        return self._states[name]

    def states(self) -> dict[str, CheckState]:
        """Every check's state by name."""
        return dict(self._states)

    async def run_once(self, name: str) -> CheckState:
        """Runs one check now, bounded by its timeout, and records the result."""
        state = self._states[name]
        spec = state.spec
        started = time.perf_counter()
        try:
            if self._tracer is not None:
                with self._tracer.start_as_current_span(
                    "health.probe", attributes={"probe": name}
                ) as span:
                    result = await self._call(spec)
                    if result.status == "error":
                        span.set_status(SpanStatus(StatusCode.ERROR, result.detail))
            else:
                result = await self._call(spec)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the harness is the boundary: any probe failure is a result
            result = ProbeResult(status="error", detail=_describe(exc))
        if result.latency is None and result.status in ("ok", "error"):
            result = ProbeResult(
                status=result.status,
                detail=result.detail,
                latency=time.perf_counter() - started,
                data=result.data,
            )
        result = ProbeResult(
            status=result.status,
            detail=self._masker.mask(result.detail)[:500],
            latency=result.latency,
            data=self._masker.mask_value(result.data),
        )
        state.record(result, self._clock())
        return state

    async def _call(self, spec: CheckSpec) -> ProbeResult:
        try:
            return await asyncio.wait_for(spec.probe(self._ctx), timeout=spec.timeout)
        except TimeoutError:
            return ProbeResult(status="error", detail=f"timed out after {spec.timeout:g}s")

    async def start(self) -> None:
        """Starts one background loop per check; the first run of each happens at once."""
        for name in self._states:
            self._tasks.append(asyncio.create_task(self._loop(name), name=f"health:{name}"))

    async def _loop(self, name: str) -> None:
        interval = self._states[name].spec.interval
        while not self._stopping.is_set():
            await self.run_once(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=interval)

    async def stop(self) -> None:
        """Stops the loops (a running probe is cancelled)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def _measured(self) -> Iterable[CheckState]:
        return (
            s
            for s in self._states.values()
            if s.last is not None and s.status != "unknown" and s.last.status in ("ok", "error")
        )

    def _observe_up(self) -> list[Observation]:
        return [
            Observation(1 if s.status == "ok" else 0, {"probe": s.spec.name})
            for s in self._measured()
        ]

    def _observe_duration(self) -> list[Observation]:
        return [
            Observation(s.last.latency, {"probe": s.spec.name})
            for s in self._measured()
            if s.last is not None and s.last.latency is not None
        ]


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
