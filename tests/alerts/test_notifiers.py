"""Notifiers deliver to real HTTP servers: bounded retries, no storms, Alertmanager compatible."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import datetime

from agent.alerts.notifiers import AlertmanagerNotifier, WebhookNotifier, send_test
from agent.alerts.payload import AlertInstance
from agent.retry import Backoff
from tests.fixtures.alertmanager import RECEIVER_PATH, Alertmanager
from tests.fixtures.receiver import Receiver
from tests.support.net import free_port

QUICK = Backoff(initial=0.2, maximum=1.0, factor=2.0, jitter=0.0)


def alert(state: str = "firing", **labels: str) -> AlertInstance:
    """A firing (or resolved) alert that started now."""
    now = time.time()
    return AlertInstance(
        rule="DiskFull",
        labels={"alertname": "DiskFull", "severity": "warning", **labels},
        annotations={"summary": "disk at 91%"},
        state=state,  # type: ignore[arg-type]
        value=0.91,
        active_at=now - 60,
        fired_at=now - 30,
        resolved_at=now if state == "resolved" else None,
    )


def gaps(receiver: Receiver) -> list[float]:
    """Seconds between consecutive requests."""
    times = [r.time for r in receiver.requests]
    return [b - a for a, b in itertools.pairwise(times)]


async def test_webhook_retries_500_with_backoff_until_success(receiver: Receiver) -> None:
    receiver.answers = [500, 500, 200]
    notifier = WebhookNotifier(receiver.url + "/hook", max_attempts=5, backoff=QUICK)
    delivery = await notifier.send([alert()], now=time.time())
    assert (delivery.ok, delivery.attempts, delivery.status) == (True, 3, 200)
    assert len(receiver.requests) == 3
    first, second = gaps(receiver)
    assert first >= 0.18  # 0.2 s
    assert second >= 0.38  # then 0.4 s


async def test_webhook_stops_after_max_attempts_not_a_storm(receiver: Receiver) -> None:
    receiver.default = 503
    notifier = WebhookNotifier(receiver.url, max_attempts=3, backoff=QUICK)
    delivery = await notifier.send([alert()], now=time.time())
    await asyncio.sleep(0.5)
    assert (delivery.ok, delivery.attempts, delivery.error) == (False, 3, "http_503")
    assert len(receiver.requests) == 3


async def test_webhook_does_not_retry_a_400(receiver: Receiver) -> None:
    receiver.default = 400
    notifier = WebhookNotifier(receiver.url, max_attempts=5, backoff=QUICK)
    delivery = await notifier.send([alert()], now=time.time())
    assert (delivery.ok, delivery.attempts, delivery.status) == (False, 1, 400)
    assert len(receiver.requests) == 1


async def test_webhook_honours_retry_after_on_429(receiver: Receiver) -> None:
    receiver.answers = [(429, {"Retry-After": "1"}), 200]
    notifier = WebhookNotifier(receiver.url, max_attempts=3, backoff=Backoff(0.01, 0.01))
    delivery = await notifier.send([alert()], now=time.time())
    assert (delivery.ok, delivery.attempts) == (True, 2)
    assert gaps(receiver)[0] >= 0.95


async def test_webhook_caps_a_long_retry_after(receiver: Receiver) -> None:
    receiver.answers = [(503, {"Retry-After": "3600"}), 200]
    notifier = WebhookNotifier(receiver.url, max_attempts=2, backoff=QUICK, retry_after_cap=0.3)
    started = time.monotonic()
    delivery = await notifier.send([alert()], now=time.time())
    assert delivery.ok
    assert time.monotonic() - started < 3.0


async def test_webhook_retries_connection_errors_a_bounded_number_of_times() -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/", max_attempts=3, backoff=QUICK)
    delivery = await notifier.send([alert()], now=time.time())
    assert (delivery.ok, delivery.attempts, delivery.error) == (False, 3, "ClientConnectorError")


async def test_webhook_attempt_times_out_on_a_hanging_receiver(receiver: Receiver) -> None:
    receiver.hang = 10.0
    notifier = WebhookNotifier(receiver.url, timeout=0.3, max_attempts=1)
    started = time.monotonic()
    delivery = await notifier.send([alert()], now=time.time())
    assert (delivery.ok, delivery.error) == (False, "timeout")
    assert time.monotonic() - started < 2.0


async def test_webhook_posts_one_group_per_alertname(receiver: Receiver) -> None:
    notifier = WebhookNotifier(receiver.url + "/hook", external_url="http://a:b@sidecar:8080")
    other = alert()
    other.labels["alertname"] = other.rule = "CpuHigh"
    await notifier.send([alert(mount="/"), alert(mount="/data"), other], now=time.time())
    bodies = [r.json for r in receiver.requests]
    assert [(b["groupLabels"], len(b["alerts"])) for b in bodies] == [
        ({"alertname": "DiskFull"}, 2),
        ({"alertname": "CpuHigh"}, 1),
    ]
    assert bodies[0]["version"] == "4"
    assert bodies[0]["externalURL"] == "http://sidecar:8080"
    assert receiver.requests[0].path == "/hook"
    assert receiver.requests[0].headers["Content-Type"].startswith("application/json")


async def test_send_test_notifies_every_notifier(receiver: Receiver) -> None:
    notifiers = [
        WebhookNotifier(receiver.url + "/one", name="one"),
        WebhookNotifier(receiver.url + "/two", name="two"),
    ]
    deliveries = await send_test(notifiers)
    assert [(d.notifier, d.ok) for d in deliveries] == [("one", True), ("two", True)]
    assert sorted(r.path for r in receiver.requests) == ["/one", "/two"]
    assert receiver.requests[0].json["alerts"][0]["labels"]["alertname"] == "SidecarTestAlert"


async def test_alertmanager_forwards_pushed_alert_to_its_receiver(
    alertmanager: Alertmanager, receiver: Receiver
) -> None:
    notifier = AlertmanagerNotifier(alertmanager.url, evaluation_interval=15.0)
    delivery = await notifier.send([alert(mount="/data")], now=time.time())
    assert delivery.ok, delivery
    [forwarded] = await receiver.wait_for(1, timeout=20)
    body = forwarded.json
    assert forwarded.path == RECEIVER_PATH
    assert body["alerts"][0]["labels"] == {
        "alertname": "DiskFull",
        "severity": "warning",
        "mount": "/data",
    }
    assert body["alerts"][0]["annotations"] == {"summary": "disk at 91%"}
    assert body["status"] == "firing"
    assert body["alerts"][0]["fingerprint"] == alert(mount="/data").fingerprint


async def test_alertmanager_holds_firing_alert_for_four_resend_intervals(
    alertmanager: Alertmanager,
) -> None:
    notifier = AlertmanagerNotifier(alertmanager.url, resend_interval=60.0)
    now = time.time()
    await notifier.send([alert()], now=now)
    [held] = await asyncio.to_thread(alertmanager.alerts)
    ends = datetime.fromisoformat(str(held["endsAt"])).timestamp()
    assert abs(ends - (now + 4 * 60)) < 2.0


async def test_alertmanager_receives_resolution(
    alertmanager: Alertmanager, receiver: Receiver
) -> None:
    notifier = AlertmanagerNotifier(alertmanager.url)
    await notifier.send([alert()], now=time.time())
    await receiver.wait_for(1, timeout=20)
    await notifier.send([alert("resolved")], now=time.time())
    requests = await receiver.wait_for(2, timeout=20)
    assert [r.json["status"] for r in requests] == ["firing", "resolved"]
