"""Liveness and readiness verdicts, rendered as the Kubernetes API server renders them."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.health.registry import HealthRegistry

# A liveness hook answers (ok, reason); the poller registers one per mailbox to report a stall.
LivenessHook = Callable[[], tuple[bool, str]]


class LoopWatchdog:
    """Measures event-loop lag: how late a short sleep wakes up, over a sliding window."""

    def __init__(self, *, tick: float = 0.25, window: float = 30.0) -> None:
        self._tick = tick
        self._window = window
        self._lags: deque[tuple[float, float]] = deque()
        self.last_tick = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        """Ticks until stop is set."""
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(self._tick)
            now = time.monotonic()
            self.record(now, now - started - self._tick)

    def record(self, now: float, lag: float) -> None:
        """Adds one lag measurement and forgets those older than the window."""
        self.last_tick = now
        self._lags.append((now, max(0.0, lag)))
        while self._lags and self._lags[0][0] < now - self._window:
            self._lags.popleft()

    def max_lag(self) -> float:
        """The worst lag in the window, including time since the last tick."""
        since_tick = max(0.0, time.monotonic() - self.last_tick - self._tick)
        worst = max((lag for _, lag in self._lags), default=0.0)
        return max(worst, since_tick)


@dataclass
class Lifecycle:
    """Where the process is: starting, serving, or draining after SIGTERM."""

    started_at: float = field(default_factory=time.time)
    startup_done: bool = False
    draining: bool = False


@dataclass(frozen=True)
class Verdict:
    """Named checks with pass/fail and a reason; the whole passes when every check passes."""

    checks: list[tuple[str, bool, str]]

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(ok for _, ok, _ in self.checks)

    def render(self, endpoint: str, *, verbose: bool) -> str:
        """`ok`, or the Kubernetes verbose form `[+]name ok` / `[-]name failed: reason`."""
        if not verbose:
            return "ok" if self.ok else f"{endpoint} check failed"
        lines = [
            f"[+]{name} ok" if ok else f"[-]{name} failed: {reason or 'reason withheld'}"
            for name, ok, reason in self.checks
        ]
        lines.append(f"{endpoint} check passed" if self.ok else f"{endpoint} check failed")
        return "\n".join(lines)


def _without(
    checks: Iterable[tuple[str, bool, str]], exclude: set[str]
) -> list[tuple[str, bool, str]]:
    return [c for c in checks if c[0] not in exclude]


def liveness(
    watchdog: LoopWatchdog,
    hooks: dict[str, LivenessHook],
    *,
    lag_threshold: float,
    exclude: set[str] | None = None,
) -> Verdict:
    """The process itself only: the event loop answers in time and no background task is stalled."""
    lag = watchdog.max_lag()
    checks: list[tuple[str, bool, str]] = [
        ("ping", True, ""),
        ("event-loop", lag <= lag_threshold, f"lag {lag:.2f}s over {lag_threshold:g}s"),
    ]
    for name, hook in sorted(hooks.items()):
        ok, reason = hook()
        checks.append((name, ok, reason))
    return Verdict(_without(checks, exclude or set()))


def readiness(
    lifecycle: Lifecycle,
    registry: HealthRegistry,
    *,
    required: Iterable[str],
    exclude: set[str] | None = None,
) -> Verdict:
    """Startup finished, not draining, and every required check up (not_configured counts as up)."""
    checks: list[tuple[str, bool, str]] = [
        ("ping", True, ""),
        ("startup", lifecycle.startup_done, "starting"),
        ("shutdown", not lifecycle.draining, "draining"),
    ]
    states = registry.states()
    for name in required:
        state = states.get(name)
        if state is None:
            continue
        reason = state.last.detail if state.last is not None else "not checked yet"
        checks.append((name, state.up, reason if state.status != "unknown" else "not checked yet"))
    return Verdict(_without(checks, exclude or set()))
