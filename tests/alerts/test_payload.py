"""The webhook payload is Alertmanager's version 4, field for field."""

from __future__ import annotations

from agent.alerts.payload import (
    AlertInstance,
    alertmanager_alerts,
    rfc3339,
    strip_userinfo,
    webhook_payload,
)

T = 1_700_000_000.25


def firing(**labels: str) -> AlertInstance:
    """A firing alert with the given extra labels."""
    return AlertInstance(
        rule="DiskFull",
        labels={"alertname": "DiskFull", "severity": "warning", **labels},
        annotations={"summary": "disk"},
        state="firing",
        value=0.9,
        active_at=T - 60,
        fired_at=T,
        generator_url="http://admin:secret@sidecar:8080/api/alerts?alertname=DiskFull",
    )


def test_payload_has_exactly_the_version_4_fields() -> None:
    body = webhook_payload([firing()], receiver="ops", external_url="http://sidecar:8080")
    assert set(body) == {
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    assert set(body["alerts"][0]) == {
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    }
    assert (body["version"], body["truncatedAlerts"], body["receiver"]) == ("4", 0, "ops")


def test_firing_alert_ends_at_go_zero_time_and_starts_when_fired() -> None:
    [alert] = webhook_payload([firing()], receiver="r", external_url="")["alerts"]
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"] == "2023-11-14T22:13:20.25Z"


def test_resolved_alert_ends_when_resolved() -> None:
    alert = firing()
    alert.state = "resolved"
    alert.resolved_at = T + 30
    body = webhook_payload([alert], receiver="r", external_url="")
    assert body["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == "2023-11-14T22:13:50.25Z"


def test_group_key_and_common_labels() -> None:
    body = webhook_payload(
        [firing(mount="/data"), firing(mount="/var")],
        receiver="r",
        external_url="",
        group_labels={"alertname": "DiskFull"},
    )
    assert body["groupKey"] == '{}:{alertname="DiskFull"}'
    assert body["groupLabels"] == {"alertname": "DiskFull"}
    assert body["commonLabels"] == {"alertname": "DiskFull", "severity": "warning"}
    assert body["commonAnnotations"] == {"summary": "disk"}


def test_fingerprint_is_alertmanagers() -> None:
    alert = AlertInstance(rule="x", labels={"job": "foo", "severity": "warning"})
    [entry] = webhook_payload([alert], receiver="r", external_url="")["alerts"]
    assert entry["fingerprint"] == "9266ef3da838ad95"


def test_urls_in_payload_carry_no_credentials() -> None:
    body = webhook_payload([firing()], receiver="r", external_url="https://u:pw@sidecar:8443/x")
    assert body["externalURL"] == "https://sidecar:8443/x"
    assert body["alerts"][0]["generatorURL"] == "http://sidecar:8080/api/alerts?alertname=DiskFull"
    assert "secret" not in str(alertmanager_alerts([firing()], valid_until=T))


def test_alertmanager_body_ends_firing_alerts_at_valid_until() -> None:
    [entry] = alertmanager_alerts([firing()], valid_until=T + 240)
    assert set(entry) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert entry["endsAt"] == rfc3339(T + 240)


def test_rfc3339_whole_seconds_have_no_fraction() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(None) == "0001-01-01T00:00:00Z"


def test_strip_userinfo_leaves_plain_urls_alone() -> None:
    assert strip_userinfo("http://host:1/p?q=1") == "http://host:1/p?q=1"
