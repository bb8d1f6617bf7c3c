"""Webhook outcomes over 24 h from the delivery log, cached for /health and the webhook gauges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import Observation

from agent.store.base import DeliveryLogSize, DeliveryWindow, Store, StoreError
from agent.telemetry.catalogue import Instruments
from agent.timestamps import iso

WINDOW = 24 * 3600.0
OUTCOMES = ("delivered", "failed", "dead_lettered")


class DeliveryStats:
    """Refreshes the 24 h window from the store in the background; readers get the cached copy."""

    def __init__(
        self, store: Store, instruments: Instruments, *, active: Callable[[], int] = lambda: 0
    ) -> None:
        self._store = store
        self._active = active
        self.window: DeliveryWindow | None = None
        self.log_size: DeliveryLogSize | None = None
        instruments.publish("webhook.error_ratio", self._observe_ratio)
        instruments.publish("webhook.window.deliveries", self._observe_counts)
        instruments.publish("webhook.last_delivery.time", self._observe_last)

    async def refresh(self) -> None:
        """Reads the window and the log's size once; a store failure keeps the previous copy."""
        with contextlib.suppress(StoreError):
            self.window = await self._store.delivery_window(WINDOW)
            self.log_size = await self._store.delivery_log_size()

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        """Refreshes every interval until stop is set."""
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    def health(self) -> dict[str, Any]:
        """The /health metrics block's webhook fields."""
        window = self.window
        ratio = window.error_ratio if window is not None else None
        last = window.last if window is not None else None
        size = self.log_size
        return {
            # None until the store was read: nothing is claimed about a log not yet seen.
            "delivery_log": None
            if size is None
            else {"records": size.records, "oldest": iso(size.oldest_at)},
            "active_webhooks": self._active(),
            "error_rate_24h": round(ratio, 4) if ratio is not None else 0.0,
            "deliveries_24h": window.total if window is not None else 0,
            "last_webhook": None
            if last is None
            else {
                "at": iso(last.at),
                "outcome": last.outcome,
                "status_code": last.status_code,
                "mailbox": last.mailbox,
            },
        }

    def _observe_ratio(self) -> list[Observation]:
        if self.window is None or self.window.error_ratio is None:
            return []
        return [Observation(self.window.error_ratio)]

    def _observe_counts(self) -> list[Observation]:
        if self.window is None:
            return []
        return [Observation(self.window.counts.get(o, 0), {"outcome": o}) for o in OUTCOMES]

    def _observe_last(self) -> list[Observation]:
        if self.window is None or self.window.last is None:
            return []
        return [Observation(self.window.last.at)]
