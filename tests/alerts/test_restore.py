"""Alert state survives a restart through the real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.alerts.engine import STATE_KEY
from agent.alerts.notifiers import WebhookNotifier
from agent.retry import Backoff
from agent.store.local import LocalStore
from tests.alerts import FakeClock, Telemetry, config, engine, resolve_while_receiver_down, step
from tests.fixtures.receiver import Receiver

RULE = {
    "alert": "MemoryHigh",
    "metric": "process.memory.utilization",
    "op": ">",
    "threshold": 0.8,
}


class Restartable:
    """One SQLite file opened by successive stores, as across process restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.current: LocalStore | None = None

    async def open(self) -> LocalStore:
        """Closes the previous store (the process died) and opens the file again."""
        if self.current is not None:
            await self.current.close()
        self.current = LocalStore(self.path)
        await self.current.start()
        return self.current


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Restartable]:
    """Successive real stores on one file."""
    restartable = Restartable(tmp_path / "state.db")
    yield restartable
    if restartable.current is not None:
        await restartable.current.close()


def notifier(receiver: Receiver) -> WebhookNotifier:
    """A webhook notifier with quick retries."""
    return WebhookNotifier(receiver.url, max_attempts=2, backoff=Backoff(0.05, 0.1))


async def test_restart_while_pending_keeps_the_pending_time(stores, receiver) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE | {"for": "5m"}])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    before = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await step(before, telemetry, clock, 0)
    before.close()
    after = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    clock.now += 120
    assert await after.restore() == 1
    result = await step(after, telemetry, clock, 300)
    assert [a.state for a in result] == ["firing"]
    assert len(receiver.requests) == 1


async def test_outage_longer_than_tolerance_restarts_for(stores, receiver) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE | {"for": "5m"}])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    before = engine(cfg, telemetry, await stores.open(), clock)
    await step(before, telemetry, clock, 0)
    before.close()
    after = engine(cfg, telemetry, await stores.open(), clock)
    clock.now += 7200
    assert await after.restore() == 0
    result = await step(after, telemetry, clock, 7200)
    assert [(a.state, a.active_at) for a in result] == [("pending", clock.now)]


async def test_restart_while_firing_does_not_notify_again(stores, receiver) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    before = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await step(before, telemetry, clock, 0)
    before.close()
    after = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await after.restore()
    result = await step(after, telemetry, clock, 30)
    assert [a.state for a in result] == ["firing"]
    assert len(receiver.requests) == 1


async def test_resolution_after_a_restart_is_still_notified(stores, receiver) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    before = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await step(before, telemetry, clock, 0)
    before.close()
    after = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await after.restore()
    telemetry.set_gauge("process.memory.utilization", 0.1)
    await step(after, telemetry, clock, 30)
    assert [r.json["status"] for r in receiver.requests] == ["firing", "resolved"]


async def test_undelivered_firing_is_delivered_after_a_restart(stores, receiver) -> None:
    receiver.default = 400
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    before = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await step(before, telemetry, clock, 0)
    before.close()
    receiver.default = 200
    after = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await after.restore()
    await step(after, telemetry, clock, 15)
    assert [r.json["status"] for r in receiver.requests] == ["firing", "firing"]
    assert (
        receiver.requests[1].json["alerts"][0]["startsAt"]
        == (receiver.requests[0].json["alerts"][0]["startsAt"])
    )


async def test_state_is_saved_under_the_alerts_key(stores, receiver) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    store = await stores.open()
    telemetry.set_gauge("process.memory.utilization", 0.9)
    await step(engine(config([RULE]), telemetry, store, clock), telemetry, clock, 0)
    saved = await store.kv_get(STATE_KEY)
    assert [(i["rule"], i["state"]) for i in saved["instances"]] == [("MemoryHigh", "firing")]


async def test_state_of_a_removed_rule_is_not_restored(stores, receiver) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    telemetry.set_gauge("process.memory.utilization", 0.9)
    before = engine(config([RULE]), telemetry, await stores.open(), clock)
    await step(before, telemetry, clock, 0)
    before.close()
    other = RULE | {"alert": "Other"}
    after = engine(config([other]), telemetry, await stores.open(), clock)
    assert await after.restore() == 0


async def test_a_resolution_still_owed_survives_a_restart_past_the_retention(
    stores, receiver
) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE])
    before = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    await resolve_while_receiver_down(before, telemetry, clock, receiver)
    before.close()
    receiver.default = 200
    failed = len(receiver.requests)
    after = engine(cfg, telemetry, await stores.open(), clock, [notifier(receiver)])
    clock.now += 3600  # down for an hour, far past the 15 minute retention
    assert await after.restore() == 1
    await step(after, telemetry, clock, 3600 + 30)
    assert len(receiver.requests) == failed + 1
    assert receiver.requests[-1].json["alerts"][0]["status"] == "resolved"


async def test_a_restart_under_a_new_instance_leaves_the_old_instances_alert_behind(stores) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE])
    telemetry.set_gauge("process.memory.utilization", 0.9)
    old = {"job": "signal-sidecar", "instance": "pod-a-1"}
    before = engine(cfg, telemetry, await stores.open(), clock, instance_labels=old)
    await step(before, telemetry, clock, 0)
    before.close()
    new = {"job": "signal-sidecar", "instance": "pod-a-2"}
    after = engine(cfg, telemetry, await stores.open(), clock, instance_labels=new)
    assert await after.restore() == 0
    result = await step(after, telemetry, clock, 30)
    assert [(a.state, a.labels["instance"]) for a in result] == [("firing", "pod-a-2")]


async def test_a_restart_under_a_new_instance_keeps_a_fleet_wide_alert(stores) -> None:
    clock, telemetry = FakeClock(), Telemetry()
    cfg = config([RULE | {"alert": "ErrorRatio", "metric": "webhook.error_ratio"}])
    telemetry.set_gauge("webhook.error_ratio", 0.9)
    old = {"job": "signal-sidecar", "instance": "pod-a-1"}
    before = engine(cfg, telemetry, await stores.open(), clock, instance_labels=old)
    fired = await step(before, telemetry, clock, 0)
    before.close()
    new = {"job": "signal-sidecar", "instance": "pod-a-2"}
    after = engine(cfg, telemetry, await stores.open(), clock, instance_labels=new)
    assert await after.restore() == 1
    result = await step(after, telemetry, clock, 30)
    assert [(a.state, a.fired_at) for a in result] == [("firing", fired[0].fired_at)]
