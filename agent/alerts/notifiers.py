"""Where alert notifications go: a webhook (Alertmanager v4 payload) or an Alertmanager."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, runtime_checkable

import aiohttp

from agent.alerts.payload import AlertInstance, alertmanager_alerts, webhook_payload
from agent.retry import Backoff

Outcome = Literal["success", "failure"]

# Prometheus re-sends firing alerts to Alertmanager every minute, resolved ones for 15 minutes.
RESEND_DELAY = 60.0
RESOLVED_RETENTION = 15 * 60.0
# How long a resolution a receiver has not yet acknowledged is kept for it.
UNDELIVERED_RETENTION = 24 * 3600.0


@dataclass(frozen=True)
class Delivery:
    """The outcome of one notification (all its attempts)."""

    notifier: str
    ok: bool
    attempts: int
    alerts: int
    status: int | None = None
    error: str = ""
    duration: float = 0.0

    @property
    def outcome(self) -> Outcome:
        """success or failure, the alert.notifications attribute."""
        return "success" if self.ok else "failure"


@runtime_checkable
class Notifier(Protocol):
    """Sends a batch of alerts somewhere.

    resend_interval None: notify on changes and every repeat_interval (send_resolved applies);
    a number: re-send the state that often, resolved alerts for resolved_retention (Alertmanager).
    """

    name: str
    resend_interval: float | None
    resolved_retention: float

    async def send(self, batch: Sequence[AlertInstance], *, now: float) -> Delivery:
        """Delivers the batch; never raises for delivery failures."""
        ...


class _Retryable(Exception):
    def __init__(self, error: str, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.wait = wait


class _Final(Exception):
    def __init__(self, error: str, status: int | None) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


def _retry_after(header: str | None, cap: float) -> float | None:
    if not header:
        return None
    text = header.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(cap, seconds))


class _HttpPoster:
    """POSTs JSON with bounded retries: connection errors, 5xx and 429 only."""

    def __init__(
        self,
        name: str,
        *,
        timeout: float,
        max_attempts: int,
        backoff: Backoff,
        retry_after_cap: float,
    ) -> None:
        self.name = name
        self._timeout = timeout
        self._max_attempts = max(1, max_attempts)
        self._backoff = backoff
        self._retry_after_cap = retry_after_cap

    async def post(self, url: str, body: Any, alerts: int) -> Delivery:
        started = time.monotonic()
        attempts = 0
        status: int | None = None
        error = ""
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while attempts < self._max_attempts:
                attempts += 1
                wait: float | None = None
                try:
                    status = await self._once(session, url, body)
                    return Delivery(
                        self.name,
                        True,
                        attempts,
                        alerts,
                        status,
                        duration=time.monotonic() - started,
                    )
                except _Retryable as exc:
                    status, error, wait = exc.status, exc.error, exc.wait
                except _Final as exc:
                    return Delivery(
                        self.name,
                        False,
                        attempts,
                        alerts,
                        exc.status,
                        exc.error,
                        time.monotonic() - started,
                    )
                if attempts < self._max_attempts:
                    await asyncio.sleep(wait if wait is not None else self._backoff.delay(attempts))
        return Delivery(
            self.name, False, attempts, alerts, status, error, time.monotonic() - started
        )

    async def _once(self, session: aiohttp.ClientSession, url: str, body: Any) -> int:
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                if response.status < 300:
                    return response.status
                if response.status == 429 or response.status >= 500:
                    wait = _retry_after(response.headers.get("Retry-After"), self._retry_after_cap)
                    raise _Retryable(f"http_{response.status}", response.status, wait)
                raise _Final(f"http_{response.status}", response.status)
        except TimeoutError as exc:
            raise _Retryable("timeout") from exc
        except aiohttp.ClientError as exc:
            raise _Retryable(type(exc).__name__) from exc


class WebhookNotifier:
    """POSTs the Alertmanager webhook payload (version 4) to a URL, one group per alertname."""

    resend_interval: float | None = None
    resolved_retention: float = 0.0

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 4,
        backoff: Backoff | None = None,
        retry_after_cap: float = 30.0,
        receiver: str = "signal-sidecar",
        external_url: str = "",
        name: str = "webhook",
    ) -> None:
        self.name = name
        self.url = url
        self.receiver = receiver
        self.external_url = external_url
        self._poster = _HttpPoster(
            name,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff or Backoff(initial=1.0, maximum=30.0),
            retry_after_cap=retry_after_cap,
        )

    async def send(self, batch: Sequence[AlertInstance], *, now: float) -> Delivery:
        """One POST per alertname group; the delivery fails if any group failed."""
        groups: dict[str, list[AlertInstance]] = {}
        for alert in batch:
            groups.setdefault(alert.labels.get("alertname", ""), []).append(alert)
        results = []
        for alertname, alerts in groups.items():
            body = webhook_payload(
                alerts,
                receiver=self.receiver,
                external_url=self.external_url,
                group_labels={"alertname": alertname},
            )
            results.append(await self._poster.post(self.url, body, len(alerts)))
        return _merge(self.name, results, len(batch))


class AlertmanagerNotifier:
    """Pushes alerts to an Alertmanager's /api/v2/alerts, re-sending as Prometheus does."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: Backoff | None = None,
        retry_after_cap: float = 30.0,
        resend_interval: float = RESEND_DELAY,
        resolved_retention: float = RESOLVED_RETENTION,
        evaluation_interval: float = 0.0,
        name: str = "alertmanager",
    ) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + "/api/v2/alerts"
        self.resend_interval: float | None = resend_interval
        self.resolved_retention = resolved_retention
        self._valid_for = 4 * max(resend_interval, evaluation_interval)
        self._poster = _HttpPoster(
            name,
            timeout=timeout,
            max_attempts=max_attempts,
            backoff=backoff or Backoff(initial=1.0, maximum=10.0),
            retry_after_cap=retry_after_cap,
        )

    async def send(self, batch: Sequence[AlertInstance], *, now: float) -> Delivery:
        """POSTs the batch; firing alerts end at now + 4 x the resend interval unless re-sent."""
        body = alertmanager_alerts(batch, valid_until=now + self._valid_for)
        return await self._poster.post(self.url, body, len(batch))


def _merge(name: str, results: Sequence[Delivery], alerts: int) -> Delivery:
    if not results:
        return Delivery(name, True, 0, alerts)
    failed = [r for r in results if not r.ok]
    last = failed[-1] if failed else results[-1]
    return Delivery(
        name,
        not failed,
        sum(r.attempts for r in results),
        alerts,
        last.status,
        last.error,
        sum(r.duration for r in results),
    )


def make_test_alert(now: float) -> AlertInstance:
    """The alert `signal-sidecar alerts test` sends."""
    return AlertInstance(
        rule="SidecarTestAlert",
        labels={"alertname": "SidecarTestAlert", "severity": "info"},
        annotations={"summary": "Test notification from signal-sidecar"},
        state="firing",
        value=1.0,
        active_at=now,
        fired_at=now,
    )


async def send_test(notifiers: Sequence[Notifier], *, now: float | None = None) -> list[Delivery]:
    """Sends one firing test alert to every notifier (for `signal-sidecar alerts test`)."""
    moment = time.time() if now is None else now
    alert = make_test_alert(moment)
    return list(await asyncio.gather(*(n.send([alert], now=moment) for n in notifiers)))
