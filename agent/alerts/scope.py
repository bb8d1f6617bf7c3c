"""Which rules ask about the whole fleet and which about one replica, and how replicas add up.

A replica only sees its share of the mail, so questions about the work (error ratios, timeouts,
stalled mailboxes) are asked of the fleet: replicas are added up before the threshold is
compared, and one alert stands for all of them. Questions about a process or its host (memory,
disk, CPU, probes, its own exports) stay per replica, labelled with `job` and `instance`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.alerts.rules import AlertRule

Aggregation = Literal["sum", "max"]

# Work the replicas share out: each counts its own part, so the fleet's figure is the sum.
_SUMMED = (
    "imap.messages",
    "imap.poll.duration",
    "imap.message.size",
    "email.html.truncations",
    "email.parse.duration",
    "r2.transfers",
    "r2.transfer.duration",
    "r2.transfer.size",
    "webhook.deliveries",
    "webhook.delivery.duration",
)
# Views of shared state: replicas on one store report the same delivery window, and a mailbox is
# polled by whichever replica holds its lease, so the fleet reads the newest or largest report
# (a sum would count a shared figure once per replica).
_NEWEST = (
    "webhook.window.deliveries",
    "webhook.last_delivery.time",
    "poller.last_success.time",
    "poller.leader",
    "imap.mailbox.backlog",
)
FLEET: Mapping[str, Aggregation] = {
    **{name: "sum" for name in _SUMMED},
    **{name: "max" for name in _NEWEST},
}


@dataclass(frozen=True)
class GaugeRatio:
    """A ratio gauge a replica computes from other gauges, and how to rebuild it for the fleet.

    A ratio of ratios cannot be averaged: the fleet's ratio sums the parts over replicas first.
    With a shared store every replica reports the same parts, which scales numerator and
    denominator alike and leaves the ratio unchanged.
    """

    parts: str
    label: str
    numerator: tuple[str, ...]


# DeliveryWindow.error_ratio: failed and dead-lettered over all deliveries in the 24 h window.
RATIO_GAUGES: Mapping[str, GaugeRatio] = {
    "webhook.error_ratio": GaugeRatio(
        parts="webhook.window.deliveries", label="outcome", numerator=("failed", "dead_lettered")
    ),
}


def _base(metric: str) -> str:
    base, _, series = metric.rpartition(".")
    return base if series in ("count", "sum") and base in FLEET else metric


def fleet_wide(rule: AlertRule) -> bool:
    """Whether every metric the rule reads is about the fleet's work rather than one replica."""
    return all(_base(m) in FLEET or m in RATIO_GAUGES for m in rule.metrics())
