"""The probe registry: adding a probe is one file and one line here."""

from __future__ import annotations

from agent.health.base import Probe
from agent.health.probes import collector, http, imap, r2, redis

PROBES: dict[str, Probe] = {
    "redis": redis.probe,
    "collector": collector.probe,
    "http": http.probe,
    "imap": imap.probe,
    "r2": r2.probe,
}
