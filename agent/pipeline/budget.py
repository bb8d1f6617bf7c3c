"""A first-come, first-served byte budget: bounds the memory that parses in flight may hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class ByteBudget:
    """Grants weights up to a capacity in arrival order; a weight above capacity takes all of it.

    Arrival order keeps a large request from starving behind a stream of small ones, and capping
    each weight at the capacity means every request is eventually granted.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Requests queued for their share."""
        return sum(1 for _, future in self._waiters if not future.done())

    @contextlib.asynccontextmanager
    async def hold(self, weight: int) -> AsyncIterator[None]:
        """Holds weight (at least 1, at most the capacity) for the duration of the block."""
        weight = min(max(weight, 1), self.capacity)
        await self._acquire(weight)
        try:
            yield
        finally:
            self._release(weight)

    async def _acquire(self, weight: int) -> None:
        if not self._waiters and self.in_use + weight <= self.capacity:
            self.in_use += weight
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (weight, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted just before the cancellation arrived: give the share back.
                self._release(weight)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()
            raise

    def _release(self, weight: int) -> None:
        self.in_use -= weight
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            weight, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.in_use + weight > self.capacity:
                return
            self._waiters.popleft()
            self.in_use += weight
            future.set_result(None)
