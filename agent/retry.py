"""Exponential backoff with jitter and a time budget, shared by every retrying client."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (1-based): initial * factor**(n-1), capped, with +/- jitter ratio."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry `attempt` (1 is the first retry)."""
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        spread = base * self.jitter
        pick = (rng or random).uniform(-spread, spread)
        return max(0.0, min(self.maximum, base + pick))


@dataclass
class RetryBudget:
    """Total time and attempts one operation may spend on retries."""

    seconds: float
    max_attempts: int
    started: float = field(default_factory=time.monotonic)
    attempts: int = 0

    def remaining(self) -> float:
        """Seconds left in the budget (never negative)."""
        return max(0.0, self.seconds - (time.monotonic() - self.started))

    def allows(self, delay: float) -> bool:
        """Whether one more attempt after `delay` seconds fits the budget."""
        return self.attempts < self.max_attempts and delay < self.remaining()
