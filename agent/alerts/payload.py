"""Alertmanager's wire formats (webhook v4 and /api/v2/alerts), so existing receivers work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from agent.alerts.fingerprint import fingerprint

ZERO_TIME = "0001-01-01T00:00:00Z"
AlertState = Literal["pending", "firing", "resolved"]


@dataclass
class AlertInstance:
    """One alert: a rule and one label set, with where it stands in its life."""

    rule: str  # the rule's key: its alert name, and its variant when the name has several
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    state: AlertState = "pending"
    value: float | None = None
    active_at: float = 0.0
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    generator_url: str = ""
    # Per notifier: when it last accepted this alert, and whether it has seen it firing.
    sent_at: dict[str, float] = field(default_factory=dict)
    sent_firing: set[str] = field(default_factory=set)

    @property
    def alertname(self) -> str:
        """The alert's name, as Alertmanager and the dashboard show it."""
        return self.labels.get("alertname", self.rule.split("/", 1)[0])

    @property
    def fingerprint(self) -> str:
        """Alertmanager's fingerprint of the labels."""
        return fingerprint(self.labels)

    @property
    def starts_at(self) -> float:
        """When it started firing (Prometheus sends FiredAt), or became active."""
        return self.fired_at if self.fired_at is not None else self.active_at

    @property
    def status(self) -> Literal["firing", "resolved"]:
        """Alertmanager's status: resolved once resolved, firing otherwise."""
        return "resolved" if self.state == "resolved" else "firing"

    def to_state(self) -> dict[str, Any]:
        """A JSON form for the store."""
        return {
            "rule": self.rule,
            "labels": self.labels,
            "annotations": self.annotations,
            "state": self.state,
            "value": self.value,
            "active_at": self.active_at,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "keep_firing_since": self.keep_firing_since,
            "generator_url": self.generator_url,
            "sent_at": self.sent_at,
            "sent_firing": sorted(self.sent_firing),
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> AlertInstance:
        """Reads to_state's form back."""
        return cls(
            rule=str(data["rule"]),
            labels={str(k): str(v) for k, v in data["labels"].items()},
            annotations={str(k): str(v) for k, v in data.get("annotations", {}).items()},
            state=data["state"],
            value=data.get("value"),
            active_at=float(data["active_at"]),
            fired_at=data.get("fired_at"),
            resolved_at=data.get("resolved_at"),
            keep_firing_since=data.get("keep_firing_since"),
            generator_url=str(data.get("generator_url", "")),
            sent_at={str(k): float(v) for k, v in data.get("sent_at", {}).items()},
            sent_firing=set(data.get("sent_firing", [])),
        )


def rfc3339(ts: float | None) -> str:
    """Unix seconds as RFC 3339 UTC (Go's form); None is Go's zero time."""
    if ts is None:
        return ZERO_TIME
    moment = datetime.fromtimestamp(ts, tz=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def strip_userinfo(url: str) -> str:
    """The URL without user:password@, so credentials never reach a payload."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def group_key(group_labels: Mapping[str, str], route: str = "{}") -> str:
    """Alertmanager's group key: the route's matchers, then the sorted group labels."""
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items()))
    return f"{route}:{{{inner}}}"


def webhook_alert(alert: AlertInstance) -> dict[str, Any]:
    """One entry of the webhook payload's alerts[]."""
    return {
        "status": alert.status,
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": rfc3339(alert.resolved_at if alert.state == "resolved" else None),
        "generatorURL": strip_userinfo(alert.generator_url),
        "fingerprint": alert.fingerprint,
    }


def webhook_payload(
    batch: Sequence[AlertInstance],
    *,
    receiver: str,
    external_url: str,
    group_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Alertmanager webhook payload, version 4."""
    if group_labels is None:
        group_labels = _common([{"alertname": a.labels.get("alertname", "")} for a in batch])
    status = "firing" if any(a.status == "firing" for a in batch) else "resolved"
    return {
        "version": "4",
        "groupKey": group_key(group_labels),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": dict(group_labels),
        "commonLabels": _common([a.labels for a in batch]),
        "commonAnnotations": _common([a.annotations for a in batch]),
        "externalURL": strip_userinfo(external_url),
        "alerts": [webhook_alert(a) for a in batch],
    }


def alertmanager_alerts(
    batch: Sequence[AlertInstance], *, valid_until: float
) -> list[dict[str, Any]]:
    """The body of POST /api/v2/alerts: firing alerts end at valid_until unless re-sent."""
    return [
        {
            "labels": dict(a.labels),
            "annotations": dict(a.annotations),
            "startsAt": rfc3339(a.starts_at),
            "endsAt": rfc3339(a.resolved_at if a.state == "resolved" else valid_until),
            "generatorURL": strip_userinfo(a.generator_url),
        }
        for a in batch
    ]
