"""The alert state machine on real exported metrics, with a fake clock and a real receiver."""

from __future__ import annotations

import time

import pytest

from agent.alerts.notifiers import AlertmanagerNotifier, WebhookNotifier
from agent.alerts.rules import AlertConfig, load_alert_config
from agent.retry import Backoff
from tests.alerts import (
    T0,
    FakeClock,
    RecordingLogger,
    Telemetry,
    config,
    engine,
    resolve_while_receiver_down,
    step,
)
from tests.fixtures.receiver import Receiver

MEMORY = {
    "alert": "MemoryHigh",
    "metric": "process.memory.utilization",
    "op": ">",
    "threshold": 0.8,
    "labels": {"severity": "warning"},
    "annotations": {"summary": "Memory at {{ value }}"},
}


@pytest.fixture
def telemetry() -> Telemetry:
    """A real MeterProvider and tracer provider in memory."""
    return Telemetry()


def webhook(receiver: Receiver) -> WebhookNotifier:
    """A webhook notifier with quick retries."""
    return WebhookNotifier(
        receiver.url + "/hook",
        timeout=5.0,
        max_attempts=2,
        backoff=Backoff(initial=0.05, maximum=0.1, jitter=0.0),
    )


def statuses(receiver: Receiver) -> list[str]:
    """Per received webhook, the status of its first alert."""
    return [r.json["alerts"][0]["status"] for r in receiver.requests]


async def test_pending_alert_never_notifies(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"for": "5m"}]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    result = await step(alerts, telemetry, clock, 0)
    await step(alerts, telemetry, clock, 120)
    assert [a.state for a in result] == ["pending"]
    assert receiver.requests == []


async def test_alert_fires_after_for_and_notifies_once(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"for": "5m"}]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    await step(alerts, telemetry, clock, 285)
    assert receiver.requests == []
    result = await step(alerts, telemetry, clock, 300)
    await step(alerts, telemetry, clock, 315)
    assert [a.state for a in result] == ["firing"]
    assert statuses(receiver) == ["firing"]


async def test_pending_alert_is_dropped_when_condition_clears(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"for": "5m"}]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", 0.5)
    await step(alerts, telemetry, clock, 15)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    result = await step(alerts, telemetry, clock, 300)
    assert [a.state for a in result] == ["pending"]
    assert result[0].active_at == clock.now


async def test_keep_firing_for_holds_the_alert_after_the_condition_clears(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    cfg = config([MEMORY | {"keep_firing_for": "1m"}])
    alerts = engine(cfg, telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", 0.5)
    held = await step(alerts, telemetry, clock, 15)
    still = await step(alerts, telemetry, clock, 60)
    done = await step(alerts, telemetry, clock, 75)
    assert [held[0].state, still[0].state, done[0].state] == ["firing", "firing", "resolved"]
    assert statuses(receiver) == ["firing", "resolved"]


async def test_resolve_threshold_keeps_firing_until_value_crosses_it(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"resolve_threshold": 0.7}]), telemetry, store, clock)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", 0.75)
    between = await step(alerts, telemetry, clock, 15)
    telemetry.set_gauge("process.memory.utilization", 0.65)
    below = await step(alerts, telemetry, clock, 30)
    assert (between[0].state, below[0].state) == ("firing", "resolved")


async def test_resolution_is_notified_after_a_notified_firing(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", 0.1)
    await step(alerts, telemetry, clock, 15)
    await step(alerts, telemetry, clock, 30)
    assert statuses(receiver) == ["firing", "resolved"]
    resolved = receiver.requests[1].json["alerts"][0]
    assert resolved["endsAt"] != "0001-01-01T00:00:00Z"


async def test_a_resolution_owed_past_the_retention_is_delivered_when_the_receiver_returns(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)])
    await resolve_while_receiver_down(alerts, telemetry, clock, receiver)
    await step(alerts, telemetry, clock, 15 + 20 * 60)  # longer than the 15 minute retention
    assert statuses(receiver)[0] == "firing"
    assert set(statuses(receiver)[1:]) == {"resolved"}  # every attempt so far failed
    failed = len(receiver.requests)
    receiver.default = 200
    await step(alerts, telemetry, clock, 15 + 21 * 60)
    assert len(receiver.requests) == failed + 1
    assert receiver.requests[-1].json["alerts"][0]["status"] == "resolved"
    sent = len(receiver.requests)
    await step(alerts, telemetry, clock, 15 + 22 * 60)
    # Delivered: the alert is forgotten, and the resolution is not sent again.
    assert alerts.instances() == []
    assert len(receiver.requests) == sent


async def test_an_undelivered_resolution_is_given_up_after_a_day(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)])
    await resolve_while_receiver_down(alerts, telemetry, clock, receiver)
    await step(alerts, telemetry, clock, 12 * 3600)
    assert [a["state"] for a in alerts.instances()] == ["resolved"]
    await step(alerts, telemetry, clock, 24 * 3600 + 30)
    assert alerts.instances() == []


async def test_resolution_is_not_notified_when_firing_never_was(receiver, telemetry, store) -> None:
    receiver.default = 400  # the firing notification is refused (4xx: final)
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    receiver.default = 200
    telemetry.set_gauge("process.memory.utilization", 0.1)
    await step(alerts, telemetry, clock, 15)
    await step(alerts, telemetry, clock, 30)
    assert statuses(receiver) == ["firing"]


async def test_send_resolved_false_sends_no_resolution(receiver, telemetry, store) -> None:
    clock = FakeClock()
    cfg = config([MEMORY], send_resolved=False)
    alerts = engine(cfg, telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", 0.1)
    await step(alerts, telemetry, clock, 15)
    assert statuses(receiver) == ["firing"]


async def test_firing_alert_is_notified_again_every_repeat_interval(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    cfg = config([MEMORY], repeat_interval="1h")
    alerts = engine(cfg, telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    for at in (0, 1800, 3585, 3600, 3615):
        await step(alerts, telemetry, clock, at)
    assert statuses(receiver) == ["firing", "firing"]


async def test_no_data_keep_last_keeps_a_firing_alert(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"no_data": "keep_last"}]), telemetry, store, clock)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", None)
    result = await step(alerts, telemetry, clock, 600)
    assert [a.state for a in result] == ["firing"]


async def test_no_data_ok_resolves_a_firing_alert(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"no_data": "ok"}]), telemetry, store, clock)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("process.memory.utilization", None)
    result = await step(alerts, telemetry, clock, 600)
    assert [a.state for a in result] == ["resolved"]


async def test_no_data_alerting_fires_without_any_series(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"no_data": "alerting"}]), telemetry, store, clock)
    result = await step(alerts, telemetry, clock, 0)
    assert [(a.state, a.value, a.labels["alertname"]) for a in result] == [
        ("firing", None, "MemoryHigh")
    ]
    assert result[0].annotations["summary"] == "Memory at no data"


async def test_no_data_alert_resolves_once_series_report_again(receiver, telemetry, store) -> None:
    clock = FakeClock()
    rule = MEMORY | {"metric": "probe.up", "match": {"probe": "redis"}, "op": "<", "threshold": 1}
    alerts = engine(config([rule | {"no_data": "alerting"}]), telemetry, store, clock)
    silent = await step(alerts, telemetry, clock, 0)
    telemetry.set_gauge("probe.up", 1, probe="redis")
    result = await step(alerts, telemetry, clock, 15)
    assert [(a.state, a.labels.get("probe")) for a in silent] == [("firing", None)]
    assert [(a.state, a.labels.get("probe")) for a in result] == [("resolved", None)]


async def test_a_stale_series_is_no_data(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"no_data": "ok"}]), telemetry, store, clock)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    clock.now += 300  # no export for 20 intervals
    result = await alerts.evaluate()
    assert [a.state for a in result] == ["resolved"]


async def test_zero_over_zero_ratio_is_no_data_not_infinity(receiver, telemetry, store) -> None:
    clock = FakeClock()
    rule = {
        "alert": "WebhookFailures",
        "function": "ratio",
        "window": "10m",
        "numerator": {"metric": "webhook.deliveries", "match": {"outcome": "failed"}},
        "denominator": {"metric": "webhook.deliveries"},
        "op": ">",
        "threshold": 0.5,
        "no_data": "alerting",
    }
    alerts = engine(config([rule]), telemetry, store, clock)
    telemetry.instruments.webhook_deliveries.add(0, {"outcome": "failed"})
    telemetry.instruments.webhook_deliveries.add(0, {"outcome": "delivered"})
    await step(alerts, telemetry, clock, 0)
    result = await step(alerts, telemetry, clock, 15)
    assert [(a.state, a.value) for a in result] == [("firing", None)]


async def test_ratio_of_counters_over_a_window_fires(receiver, telemetry, store) -> None:
    clock = FakeClock()
    rule = {
        "alert": "WebhookFailures",
        "function": "ratio",
        "window": "10m",
        "numerator": {"metric": "webhook.deliveries", "match": {"outcome": "failed"}},
        "denominator": {"metric": "webhook.deliveries"},
        "op": ">",
        "threshold": 0.5,
    }
    alerts = engine(config([rule]), telemetry, store, clock)
    telemetry.instruments.webhook_deliveries.add(1, {"outcome": "failed"})
    telemetry.instruments.webhook_deliveries.add(1, {"outcome": "delivered"})
    await step(alerts, telemetry, clock, 0)
    telemetry.instruments.webhook_deliveries.add(3, {"outcome": "failed"})
    telemetry.instruments.webhook_deliveries.add(1, {"outcome": "delivered"})
    result = await step(alerts, telemetry, clock, 15)
    assert [(a.state, a.value) for a in result] == [("firing", 0.75)]


async def test_increase_rule_gives_one_alert_per_series(receiver, telemetry, store) -> None:
    clock = FakeClock()
    rule = {
        "alert": "R2Timeouts",
        "metric": "r2.transfers",
        "match": {"outcome": "timeout"},
        "function": "increase",
        "window": "15m",
        "op": ">",
        "threshold": 3,
        "annotations": {"summary": "{{ value }} timeouts from {{ labels.r2.provider }}"},
    }
    alerts = engine(config([rule]), telemetry, store, clock)
    counter = telemetry.instruments.r2_transfers
    for provider in ("dropbox", "wetransfer"):
        counter.add(1, {"r2.provider": provider, "outcome": "timeout"})
    counter.add(50, {"r2.provider": "dropbox", "outcome": "success"})
    await step(alerts, telemetry, clock, 0)
    counter.add(5, {"r2.provider": "dropbox", "outcome": "timeout"})
    counter.add(2, {"r2.provider": "wetransfer", "outcome": "timeout"})
    result = await step(alerts, telemetry, clock, 60)
    assert [(a.labels["r2_provider"], a.annotations["summary"]) for a in result] == [
        ("dropbox", "5 timeouts from dropbox")
    ]


def _default(name: str) -> AlertConfig:
    """Only the named default rule, evaluated every 15 s."""
    rules = load_alert_config({}, source="test.toml", default_interval=15.0).rules
    return AlertConfig(evaluation_interval=15.0, rules=tuple(r for r in rules if r.alert == name))


async def test_default_mail_dead_lettered_fires_for_the_first_dead_letter_naming_mailbox_and_why(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    alerts = engine(_default("MailDeadLettered"), telemetry, store, clock)
    counter = telemetry.instruments.imap_messages
    for box in ("alice", "bob"):
        for reason in ("webhook_rejected", "webhook_unavailable"):
            counter.add(0, {"imap.mailbox": box, "outcome": "dead_lettered", "error.type": reason})
    counter.add(40, {"imap.mailbox": "alice", "outcome": "delivered"})
    assert await step(alerts, telemetry, clock, 0) == []
    counter.add(
        1, {"imap.mailbox": "bob", "outcome": "dead_lettered", "error.type": "webhook_rejected"}
    )
    counter.add(5, {"imap.mailbox": "alice", "outcome": "delivered"})
    [alert] = await step(alerts, telemetry, clock, 15)
    assert alert.state == "firing"
    assert alert.labels == {
        "alertname": "MailDeadLettered",
        "imap_mailbox": "bob",
        "outcome": "dead_lettered",
        "error_type": "webhook_rejected",
        "severity": "critical",
    }
    assert alert.annotations["summary"] == (
        "1 mail dead-lettered in mailbox bob in the last hour (webhook_rejected)"
    )


async def test_default_r2_transfers_failing_counts_every_outcome_but_success_from_five_transfers(
    receiver, telemetry, store
) -> None:
    clock = FakeClock()
    alerts = engine(_default("R2TransfersFailing"), telemetry, store, clock)
    counter = telemetry.instruments.r2_transfers
    outcomes = ("success", "failure", "timeout", "rejected", "unauthorized")
    for outcome in outcomes:
        counter.add(0, {"r2.provider": "generic", "outcome": outcome})
    await step(alerts, telemetry, clock, 0)
    counter.add(4, {"r2.provider": "generic", "outcome": "unauthorized"})
    assert await step(alerts, telemetry, clock, 15) == [], "4 transfers are below the minimum"
    counter.add(1, {"r2.provider": "generic", "outcome": "failure"})
    counter.add(1, {"r2.provider": "generic", "outcome": "timeout"})
    counter.add(2, {"r2.provider": "generic", "outcome": "success"})
    [alert] = await step(alerts, telemetry, clock, 30)
    assert (alert.state, alert.value) == ("firing", 0.75)
    assert alert.labels == {"alertname": "R2TransfersFailing", "severity": "warning"}
    counter.add(30, {"r2.provider": "generic", "outcome": "success"})
    [held] = await step(alerts, telemetry, clock, 45)
    assert (held.state, round(held.value or 0, 3)) == ("firing", round(6 / 38, 3))
    counter.add(40, {"r2.provider": "generic", "outcome": "success"})
    [done] = await step(alerts, telemetry, clock, 60)
    assert done.state == "resolved", "below the 0.10 resolve threshold"


async def test_age_rule_fires_when_the_timestamp_gauge_is_old(receiver, telemetry, store) -> None:
    clock = FakeClock()
    rule = {
        "alert": "Stalled",
        "metric": "poller.last_success.time",
        "function": "age",
        "op": ">",
        "threshold": 600,
    }
    alerts = engine(config([rule]), telemetry, store, clock)
    telemetry.set_gauge("poller.last_success.time", clock.now - 30, **{"imap.mailbox": "a"})
    telemetry.set_gauge("poller.last_success.time", clock.now - 900, **{"imap.mailbox": "b"})
    result = await step(alerts, telemetry, clock, 0)
    assert [(a.labels["imap_mailbox"], a.state) for a in result] == [("b", "firing")]


async def test_active_alerts_are_published_as_a_gauge(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY | {"for": "5m"}]), telemetry, store, clock)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    points = {
        (attrs["alertname"], attrs["alertstate"]): value
        for attrs, value in telemetry.points("alerts.active")
    }
    assert points == {("MemoryHigh", "pending"): 1, ("MemoryHigh", "firing"): 0}


async def test_notification_is_logged_traced_and_counted(receiver, telemetry, store) -> None:
    clock = FakeClock()
    logger = RecordingLogger()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)], logger)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    [event] = logger.named("ALERT")
    assert (event["type"], event["severity"], event["message"], event["value"]) == (
        "MemoryHigh",
        "warning",
        "Memory at 0.9",
        0.9,
    )
    assert [s.name for s in telemetry.spans.get_finished_spans()] == ["alert.notify"]
    counted = telemetry.points("alert.notifications")
    assert counted == [({"notifier": "webhook", "outcome": "success"}, 1)]


async def test_failed_notification_counts_failure_and_marks_the_span(
    receiver, telemetry, store
) -> None:
    receiver.default = 503
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    [span] = telemetry.spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "http_503"
    assert telemetry.points("alert.notifications") == [
        ({"notifier": "webhook", "outcome": "failure"}, 1)
    ]


async def test_failed_notification_is_retried_at_the_next_evaluation(
    receiver, telemetry, store
) -> None:
    receiver.answers = [503, 503]  # both attempts of the first delivery fail
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock, [webhook(receiver)])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    await step(alerts, telemetry, clock, 15)
    await step(alerts, telemetry, clock, 30)
    assert len(receiver.requests) == 3  # 2 attempts, then one successful delivery


async def test_a_hanging_receiver_does_not_delay_evaluation(receiver, telemetry, store) -> None:
    receiver.hang = 5.0
    clock = FakeClock()
    notifier = WebhookNotifier(receiver.url, timeout=10.0, max_attempts=1)
    alerts = engine(config([MEMORY]), telemetry, store, clock, [notifier])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    alerts.on_metrics(telemetry.collect())
    started = time.monotonic()
    for at in (0, 15, 30):
        clock.now = T0 + at
        await alerts.evaluate()
    elapsed = time.monotonic() - started
    await receiver.wait_for(1, timeout=5)
    alerts.close()
    assert elapsed < 1.0
    assert len(receiver.requests) == 1  # one delivery in flight, no pile-up


async def test_instances_lists_state_value_and_since(receiver, telemetry, store) -> None:
    clock = FakeClock()
    alerts = engine(config([MEMORY]), telemetry, store, clock)
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(alerts, telemetry, clock, 0)
    [item] = alerts.instances()
    assert (item["alertname"], item["state"], item["value"], item["since"]) == (
        "MemoryHigh",
        "firing",
        0.9,
        clock.now,
    )
    assert item["labels"] == {"alertname": "MemoryHigh", "severity": "warning"}
    assert alerts.firing_count() == 1


async def test_rule_alert_reaches_alertmanagers_receiver_with_rule_labels(
    alertmanager, receiver, telemetry, store
) -> None:
    clock = FakeClock(time.time())  # Alertmanager judges endsAt by the real clock
    notifier = AlertmanagerNotifier(alertmanager.url, evaluation_interval=15.0)
    alerts = engine(config([MEMORY]), telemetry, store, clock, [notifier])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    alerts.on_metrics(telemetry.collect())
    await alerts.evaluate()
    await alerts.flush(grace=10.0)
    [forwarded] = await receiver.wait_for(1, timeout=20)
    [entry] = forwarded.json["alerts"]
    assert entry["labels"] == {"alertname": "MemoryHigh", "severity": "warning"}
    assert entry["annotations"] == {"summary": "Memory at 0.9"}
    assert entry["fingerprint"] == alerts.instances()[0]["fingerprint"]
