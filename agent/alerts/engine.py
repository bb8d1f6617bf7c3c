"""Evaluates alert rules on the exported metrics with Prometheus' state machine, and notifies."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from agent.alerts.fingerprint import fingerprint
from agent.alerts.notifiers import (
    RESOLVED_RETENTION,
    UNDELIVERED_RETENTION,
    Delivery,
    Notifier,
)
from agent.alerts.payload import AlertInstance, strip_userinfo
from agent.alerts.rules import AlertConfig, AlertRule, render, sanitize_label
from agent.alerts.samples import SeriesKey, SeriesStore, to_samples
from agent.alerts.scope import fleet_wide
from agent.store.base import Store, StoreError
from agent.telemetry.catalogue import Instruments

STATE_KEY = "alerts:state"
# Like Prometheus' --rules.alert.for-outage-tolerance: a longer outage restarts `for`.
RESTORE_TOLERANCE = 3600.0


class _Logger(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...

    def warning(self, event: str, **kw: Any) -> Any: ...

    def error(self, event: str, **kw: Any) -> Any: ...


class _LogOnly:
    """With no notifier configured, ALERT log events are the notification."""

    name = "log"
    resend_interval: float | None = None
    resolved_retention = 0.0

    async def send(self, batch: Sequence[AlertInstance], *, now: float) -> Delivery:
        return Delivery(self.name, True, 1, len(batch))


class AlertEngine:
    """Rules in, alert instances and notifications out; state kept in the store across restarts.

    States per rule and label set: pending (condition true for less than `for`), firing,
    resolved (kept 15 minutes so the resolution is delivered and shown; up to a day while a
    receiver told of the firing has not yet acknowledged the resolution). A pending alert whose
    condition turns false is dropped, as in Prometheus. resolve_threshold only holds alerts that
    already fire. No data (no fresh series, fewer than two samples in a window, 0/0): keep_last
    freezes the alert where it is, ok treats it as a false condition (keep_firing_for applies),
    alerting as a true one (with no series at all: one alert with the rule's labels only).
    """

    def __init__(
        self,
        config: AlertConfig,
        *,
        store: Store,
        notifiers: Sequence[Notifier],
        instruments: Instruments,
        tracer: Tracer,
        logger: _Logger,
        clock: Callable[[], float] = time.time,
        external_url: str = "",
        restore_tolerance: float = RESTORE_TOLERANCE,
        instance_labels: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._notifiers: list[Notifier] = list(notifiers) or [_LogOnly()]
        self._instruments = instruments
        self._tracer = tracer
        self._log = logger
        self._clock = clock
        self._external_url = strip_userinfo(external_url).rstrip("/")
        self._tolerance = restore_tolerance
        # By rule key: one alert name may have several rules (a warning and a critical level).
        self._rules = {rule.key: rule for rule in config.rules}
        # When Prometheus evaluates the same rules too, per-replica alerts carry the replica's
        # job and instance as Prometheus' do, so Alertmanager sees one alert, not two.
        self._instance_labels = {
            rule.key: dict(instance_labels or {}) for rule in config.rules if not fleet_wide(rule)
        }
        self._series = SeriesStore(config.windows(), staleness=config.staleness)
        self._active: dict[str, AlertInstance] = {}
        self._lock = asyncio.Lock()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._observations: list[Observation] = []
        self._restored = False
        self._closed = False
        self._publish()
        instruments.publish("alerts.active", self._observe)

    # Input, from the exporter thread.

    def on_metrics(self, data: MetricsData) -> None:
        """Records one export's samples (called by the metric tee; cheap and thread-safe)."""
        self._series.record(to_samples(data, at=self._clock()))

    # Evaluation.

    async def evaluate(self, now: float | None = None) -> list[AlertInstance]:
        """Runs every rule once, starts due notifications in the background, saves changes."""
        if self._closed:
            raise RuntimeError("AlertEngine is closed")
        moment = self._clock() if now is None else now
        async with self._lock:
            changed = False
            for rule in self._rules.values():
                changed |= self._evaluate_rule(rule, moment)
            changed |= self._expire(moment)
            self._publish()
            due = self._due(moment)
            if changed:
                await self._save(moment)
            snapshot = [copy.deepcopy(a) for a in self._active.values()]
        for notifier, batch in due:
            task = asyncio.create_task(self._deliver(notifier, batch, moment))
            self._inflight[notifier.name] = task
        return snapshot

    def _results(self, rule: AlertRule, now: float) -> dict[SeriesKey, float]:
        series = self._series
        exclude = rule.exclude
        if rule.function == "value":
            return series.value(rule.metric, rule.match, now, exclude=exclude)
        if rule.function == "age":
            newest = series.value(rule.metric, rule.match, now, exclude=exclude)
            return {k: now - v for k, v in newest.items()}
        if rule.function == "increase":
            return series.increase(rule.metric, rule.match, rule.window, now, exclude=exclude)
        if rule.function == "rate":
            return series.rate(rule.metric, rule.match, rule.window, now, exclude=exclude)
        top, bottom = rule.numerator, rule.denominator
        if top is None or bottom is None:
            return {}
        value = series.ratio(
            (top.metric, top.match),
            (bottom.metric, bottom.match),
            rule.window,
            now,
            numerator_exclude=top.exclude,
            denominator_exclude=bottom.exclude,
            min_denominator=rule.min_denominator,
        )
        return {} if value is None else {(): value}

    def _labels(self, rule: AlertRule, key: SeriesKey) -> dict[str, str]:
        labels = dict(self._instance_labels.get(rule.key, {}))
        labels.update((sanitize_label(name), value) for name, value in key)
        labels.update(rule.labels)
        labels["alertname"] = rule.alert
        return labels

    def _evaluate_rule(self, rule: AlertRule, now: float) -> bool:
        changed = False
        seen: set[str] = set()
        for key, value in self._results(rule, now).items():
            labels = self._labels(rule, key)
            fp = fingerprint(labels)
            seen.add(fp)
            alert = self._active.get(fp)
            firing = alert is not None and alert.state == "firing"
            if rule.breached(value, firing=firing):
                changed |= self._hold(rule, fp, labels, value, now)
            elif alert is not None:
                alert.value = value
                self._annotate(rule, alert)
                changed |= self._release(fp, alert, rule, now)
        mine = [(fp, a) for fp, a in self._active.items() if a.rule == rule.key and fp not in seen]
        if rule.no_data == "alerting":
            silent = fingerprint(self._labels(rule, ()))
            if not seen and not any(a.state != "resolved" for _, a in mine):
                labels = self._labels(rule, ())
                changed |= self._hold(rule, silent, labels, None, now)
            for fp, alert in mine:
                if seen and fp == silent:
                    # Series report again: the alert that stood for "no series at all" ends.
                    changed |= self._release(fp, alert, rule, now)
                elif alert.state != "resolved":
                    changed |= self._hold(rule, fp, alert.labels, alert.value, now)
        elif rule.no_data == "ok":
            for fp, alert in mine:
                changed |= self._release(fp, alert, rule, now)
        return changed

    def _hold(
        self, rule: AlertRule, fp: str, labels: dict[str, str], value: float | None, now: float
    ) -> bool:
        """The condition holds for this label set."""
        changed = False
        alert = self._active.get(fp)
        if alert is None or alert.state == "resolved":
            alert = AlertInstance(
                rule=rule.key,
                labels=labels,
                active_at=now,
                generator_url=self._generator_url(rule),
            )
            self._active[fp] = alert
            changed = True
        alert.value = value
        alert.keep_firing_since = None
        self._annotate(rule, alert)
        if alert.state == "pending" and now - alert.active_at >= rule.for_:
            alert.state = "firing"
            alert.fired_at = now
            changed = True
        return changed

    def _release(self, fp: str, alert: AlertInstance, rule: AlertRule, now: float) -> bool:
        """The condition does not hold (or no data counts as ok)."""
        if alert.state == "pending":
            del self._active[fp]
            return True
        if alert.state != "firing":
            return False
        if rule.keep_firing_for > 0:
            if alert.keep_firing_since is None:
                alert.keep_firing_since = now
            if now - alert.keep_firing_since < rule.keep_firing_for:
                return True
        alert.state = "resolved"
        alert.resolved_at = now
        return True

    def _annotate(self, rule: AlertRule, alert: AlertInstance) -> None:
        alert.annotations = {
            name: render(text, alert.value, alert.labels) for name, text in rule.annotations.items()
        }

    def _generator_url(self, rule: AlertRule) -> str:
        if not self._external_url:
            return ""
        return f"{self._external_url}/api/alerts?alertname={rule.alert}"

    def _expire(self, now: float) -> bool:
        gone = [
            fp for fp, a in self._active.items() if a.state == "resolved" and self._expired(a, now)
        ]
        for fp in gone:
            del self._active[fp]
        return bool(gone)

    def _expired(self, alert: AlertInstance, now: float) -> bool:
        """Whether a resolved alert can be forgotten.

        After the retention, unless a receiver told of the firing has not yet heard of the
        resolution: then it is kept until delivered (for at most a day), so a receiver that was
        down longer than the retention still hears of it.
        """
        age = now - (alert.resolved_at if alert.resolved_at is not None else now)
        keep = max([RESOLVED_RETENTION] + [n.resolved_retention for n in self._notifiers])
        if age <= keep:
            return False
        return age > UNDELIVERED_RETENTION or not any(
            self._owes(alert, n, now) for n in self._notifiers
        )

    # Notifications.

    def _owes(self, alert: AlertInstance, notifier: Notifier, now: float) -> bool:
        """Whether notifier, told of the firing, has yet to be sent the resolution."""
        if alert.state != "resolved" or notifier.name not in alert.sent_firing:
            return False
        if notifier.resend_interval is None and not self.config.send_resolved:
            return False
        last = alert.sent_at.get(notifier.name)
        resolved = alert.resolved_at if alert.resolved_at is not None else now
        return last is None or last < resolved

    def _needs(self, alert: AlertInstance, notifier: Notifier, now: float) -> bool:
        if alert.state == "pending":
            return False
        last = alert.sent_at.get(notifier.name)
        resend = notifier.resend_interval or self.config.repeat_interval
        if alert.state == "firing":
            fired = alert.fired_at if alert.fired_at is not None else alert.active_at
            return last is None or last < fired or now - last >= resend
        if self._owes(alert, notifier, now):
            return True
        if notifier.resend_interval is None or notifier.name not in alert.sent_firing:
            return False
        # Alertmanager is sent a resolution again every resend interval, within the retention.
        resolved = alert.resolved_at if alert.resolved_at is not None else now
        return (
            last is not None  # always so here: _owes is true for an unsent resolution
            and now - last >= resend
            and now - resolved <= notifier.resolved_retention
        )

    def _due(self, now: float) -> list[tuple[Notifier, list[AlertInstance]]]:
        due = []
        for notifier in self._notifiers:
            task = self._inflight.get(notifier.name)
            if task is not None and not task.done():
                continue  # a slow receiver gets one delivery at a time, never a pile-up
            batch = [
                copy.deepcopy(a) for a in self._active.values() if self._needs(a, notifier, now)
            ]
            if batch:
                due.append((notifier, batch))
        return due

    async def _deliver(self, notifier: Notifier, batch: list[AlertInstance], now: float) -> None:
        attributes: dict[str, str | int | list[str]] = {
            "alert.notifier": notifier.name,
            "alert.count": len(batch),
            "alert.names": sorted({a.alertname for a in batch}),
        }
        with self._tracer.start_as_current_span(
            "alert.notify", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                delivery = await notifier.send(batch, now=now)
            except Exception as exc:  # a notifier's bug must not stop alerting; it is recorded
                span.record_exception(exc)
                delivery = Delivery(notifier.name, False, 0, len(batch), error=type(exc).__name__)
            span.set_attribute("alert.attempts", delivery.attempts)
            if delivery.status is not None:
                span.set_attribute("http.response.status_code", delivery.status)
            if not delivery.ok:
                span.set_attribute("error.type", delivery.error or "failure")
                span.set_status(Status(StatusCode.ERROR, delivery.error))
        self._instruments.alert_notifications.add(
            1, {"notifier": notifier.name, "outcome": delivery.outcome}
        )
        for alert in batch:
            self._log_alert(alert, notifier.name, delivery)
        if not delivery.ok or self._closed:
            return
        async with self._lock:
            for sent in batch:
                live = self._active.get(sent.fingerprint)
                if live is None or live.active_at != sent.active_at:
                    continue
                live.sent_at[notifier.name] = now
                if sent.state == "firing":
                    live.sent_firing.add(notifier.name)
            await self._save(self._clock())

    def _log_alert(self, alert: AlertInstance, notifier: str, delivery: Delivery) -> None:
        severity = alert.labels.get("severity", "")
        fields: dict[str, Any] = {
            "type": alert.alertname,
            "severity": severity,
            "message": alert.annotations.get("summary", alert.alertname),
            "value": alert.value,
            "status": alert.status,
            "fingerprint": alert.fingerprint,
            "notifier": notifier,
            "outcome": delivery.outcome,
        }
        if not delivery.ok:
            fields["error.type"] = delivery.error
        if alert.status == "resolved":
            self._log.info("ALERT", **fields)
        elif severity == "critical":
            self._log.error("ALERT", **fields)
        else:
            self._log.warning("ALERT", **fields)

    async def flush(self, grace: float) -> None:
        """Waits up to `grace` seconds for in-flight notifications, then cancels what is left."""
        tasks = [t for t in self._inflight.values() if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # Persistence.

    async def _save(self, now: float) -> None:
        state = {
            "version": 1,
            "saved_at": now,
            "instances": [a.to_state() for a in self._active.values()],
        }
        try:
            await self._store.kv_set(STATE_KEY, state)
        except StoreError as exc:
            self._log.warning("alerts.state_not_saved", error=str(exc))

    async def restore(self) -> int:
        """Loads saved alert state; pending alerts only if the outage was within tolerance."""
        self._restored = True
        now = self._clock()
        try:
            data = await self._store.kv_get(STATE_KEY)
        except StoreError as exc:
            self._log.warning("alerts.state_not_restored", error=str(exc))
            return 0
        if not isinstance(data, Mapping):
            return 0
        outage = now - float(data.get("saved_at", 0.0))
        restored = 0
        async with self._lock:
            for item in data.get("instances", []):
                try:
                    alert = AlertInstance.from_state(item)
                except (KeyError, TypeError, ValueError, AttributeError):
                    self._log.warning("alerts.state_entry_skipped")
                    continue
                if alert.rule not in self._rules or not self._owned(alert):
                    continue
                if alert.state == "pending" and outage > self._tolerance:
                    continue
                if alert.state == "resolved" and (
                    alert.resolved_at is None or self._expired(alert, now)
                ):
                    continue
                self._active[alert.fingerprint] = alert
                restored += 1
            self._publish()
        return restored

    def _owned(self, alert: AlertInstance) -> bool:
        """Whether a saved alert is this process's own. A per-replica alert labelled with another
        instance (this pod before a restart, or another replica on a shared store) is not: its
        series will never report here again, and Prometheus judges that instance."""
        mine = self._instance_labels.get(alert.rule, {})
        return all(alert.labels.get(name) == value for name, value in mine.items())

    # Loop and views.

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluates every evaluation_interval until stop is set; notifications never block it."""
        loop = asyncio.get_running_loop()
        if not self._restored:
            await self.restore()
        try:
            while not stop.is_set():
                started = loop.time()
                try:
                    await self.evaluate()
                except StoreError as exc:
                    self._log.warning("alerts.evaluation_failed", error=str(exc))
                wait = max(0.0, self.config.evaluation_interval - (loop.time() - started))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
        finally:
            await self.flush(grace=2.0)

    def close(self) -> None:
        """Stops publishing alerts.active and cancels in-flight notifications."""
        self._closed = True
        self._instruments.unpublish("alerts.active", self._observe)
        for task in self._inflight.values():
            task.cancel()

    def instances(self) -> list[dict[str, Any]]:
        """Alert instances for GET /api/alerts, firing first."""
        order = {"firing": 0, "pending": 1, "resolved": 2}
        alerts = sorted(self._active.values(), key=lambda a: (order[a.state], a.rule, a.active_at))
        return [
            {
                "alertname": a.alertname,
                "state": a.state,
                "value": a.value,
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "since": a.active_at,
                "fired_at": a.fired_at,
                "resolved_at": a.resolved_at,
                "fingerprint": a.fingerprint,
            }
            for a in alerts
        ]

    def firing_count(self) -> int:
        """How many alerts are firing now."""
        return sum(1 for a in self._active.values() if a.state == "firing")

    def _publish(self) -> None:
        names = {rule.alert for rule in self._rules.values()}
        counts = {(name, state): 0 for name in names for state in ("pending", "firing")}
        for alert in self._active.values():
            if alert.state != "resolved":
                key = (alert.alertname, alert.state)
                counts[key] = counts.get(key, 0) + 1
        self._observations = [
            Observation(n, {"alertname": rule, "alertstate": state})
            for (rule, state), n in counts.items()
        ]

    def _observe(self) -> Iterable[Observation]:
        return list(self._observations)
