"""The /health body: the seed's JSON, and the IETF application/health+json form of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.health.liveness import Lifecycle
from agent.health.registry import HealthRegistry
from agent.timestamps import iso

SERVICES = ("redis", "imap", "r2", "collector")
_COMPONENT_TYPES = {
    "redis": "datastore",
    "imap": "component",
    "r2": "component",
    "collector": "component",
    "http": "component",
}


def _empty_dict() -> dict[str, Any]:
    return {}


@dataclass
class HealthSources:
    """Where /health reads its facts; every callable returns cached values and never waits."""

    registry: HealthRegistry
    lifecycle: Lifecycle
    version: str
    service_name: str = "signal-sidecar"
    instance_id: str = ""
    memory: Callable[[], dict[str, Any] | None] = lambda: None
    deliveries: Callable[[], dict[str, Any]] = _empty_dict
    poller: Callable[[], dict[str, Any]] = _empty_dict
    # None when another evaluator (Prometheus) owns the alerts and this sidecar cannot count them.
    alerts_firing: Callable[[], int | None] = lambda: 0
    # Who evaluates the alert rules, and where operators find them when it is not this sidecar.
    alerts_evaluator: dict[str, str] = field(default_factory=lambda: {"evaluator": "sidecar"})
    required: list[str] = field(default_factory=list)
    # Days left of the certificates the sidecar's own connections were shown, per endpoint.
    certificates: Callable[[], list[dict[str, Any]]] = list


# Poller states that mean the sidecar itself does not do its work (a restart may help), and
# the one that means its cycles fail (a dependency's fault, which that dependency's check shows).
_POLLER_DOWN = ("dead", "stalled")
_POLLER_FAILING = "error"


def overall_status(sources: HealthSources) -> str:
    """error: a required check fails, or a poller is dead or stalled; degraded: an optional
    check fails or a poller's cycles fail; ok otherwise."""
    states = sources.registry.states()
    required = set(sources.required)
    poller = sources.poller().get("status")
    if poller in _POLLER_DOWN or any(
        s.status == "error" and name in required for name, s in states.items()
    ):
        return "error"
    if poller == _POLLER_FAILING or any(s.status == "error" for s in states.values()):
        return "degraded"
    return "ok"


def http_status(overall: str) -> int:
    """503 only for error, as ASP.NET Core and Spring Boot answer: a degraded sidecar (an
    optional check failing, such as the collector) still serves and answers 200."""
    return 503 if overall == "error" else 200


def _service(sources: HealthSources, name: str) -> dict[str, Any]:
    state = sources.registry.states().get(name)
    if state is None:
        return {"status": "not_configured"}
    summary = state.summary()
    service: dict[str, Any] = {
        "status": summary["status"],
        "latency_ms": summary["latency_ms"],
        "error": summary["error"],
        "last_check": iso(summary["last_check"]),
        "last_ok": iso(summary["last_ok"]),
    }
    if summary["data"]:
        service["details"] = summary["data"]
    return service


def seed_report(sources: HealthSources, now: float | None = None) -> dict[str, Any]:
    """The seed's /health JSON."""
    now = time.time() if now is None else now
    services: dict[str, Any] = {name: _service(sources, name) for name in SERVICES}
    for name in sources.registry.states():
        if name not in services:
            services[name] = _service(sources, name)
    services["background_tasks"] = {"imap_poller": sources.poller() or {"status": "disabled"}}
    deliveries = sources.deliveries()
    return {
        "status": overall_status(sources),
        "timestamp": iso(now),
        "version": sources.version,
        "uptime": round(now - sources.lifecycle.started_at, 3),
        "services": services,
        "metrics": {
            "memory_usage": sources.memory() or {},
            "active_webhooks": deliveries.get("active_webhooks", 0),
            "error_rate_24h": deliveries.get("error_rate_24h", 0.0),
            "last_webhook": deliveries.get("last_webhook"),
            "delivery_log": deliveries.get("delivery_log"),
        },
        "alerts": {"firing": sources.alerts_firing(), **sources.alerts_evaluator},
        "certificates": certificates_report(sources),
    }


def certificates_report(sources: HealthSources) -> list[dict[str, Any]]:
    """Per endpoint: days left of its certificate, and ok / warning / critical / expired."""
    return [_certificate(entry) for entry in sources.certificates()]


# Days left below which a certificate is shown as warning and critical, as the default
# CertificateExpiresSoon rules judge it.
_CERTIFICATE_WARNING_DAYS = 14.0
_CERTIFICATE_CRITICAL_DAYS = 3.0


def _certificate(entry: dict[str, Any]) -> dict[str, Any]:
    days = float(entry["days_left"])
    if days <= 0:
        state = "expired"
    elif days < _CERTIFICATE_CRITICAL_DAYS:
        state = "critical"
    elif days < _CERTIFICATE_WARNING_DAYS:
        state = "warning"
    else:
        state = "ok"
    return entry | {"status": state}


def health_json_report(sources: HealthSources, now: float | None = None) -> dict[str, Any]:
    """The same facts in the IETF draft format (draft-inadarei-api-health-check)."""
    now = time.time() if now is None else now
    status = {"ok": "pass", "degraded": "warn", "error": "fail"}[overall_status(sources)]
    required = set(sources.required)
    checks: dict[str, list[dict[str, Any]]] = {}
    for name, state in sources.registry.states().items():
        if state.status in ("not_configured", "disabled"):
            continue
        if state.status == "ok":
            verdict = "pass"
        elif state.status == "error" and name in required:
            verdict = "fail"
        else:
            verdict = "warn"  # not checked yet, or an optional check in error
        entry: dict[str, Any] = {
            "componentId": name,
            "componentType": _COMPONENT_TYPES.get(name, "component"),
            "status": verdict,
            "time": iso(state.last_run_at or now),
        }
        if state.last is not None and state.last.latency is not None:
            entry |= {"observedValue": round(state.last.latency * 1000, 2), "observedUnit": "ms"}
        if state.status == "error" and state.last is not None:
            entry["output"] = state.last.detail
        key = f"{name}:responseTime" if "observedValue" in entry else f"{name}:status"
        checks[key] = [entry]
    memory = sources.memory() or {}
    if memory:
        checks["memory:utilization"] = [
            {
                "componentType": "system",
                "observedValue": memory.get("percent"),
                "observedUnit": "percent",
                "status": "pass",
                "time": iso(now),
            }
        ]
    poller = sources.poller()
    if poller:
        poller_state = str(poller.get("status"))
        if poller_state in _POLLER_DOWN:
            verdict = "fail"
        elif poller_state == _POLLER_FAILING:
            verdict = "warn"
        else:
            verdict = "pass"  # ok, standby (another replica leads), disabled, starting
        checks["imap_poller:status"] = [
            {
                "componentType": "component",
                "status": verdict,
                "time": iso(now),
                "output": "" if poller_state == "ok" else poller_state,
            }
        ]
    for shown in certificates_report(sources):
        checks.setdefault("certificate:expiry", []).append(
            {
                "componentId": f"{shown['endpoint']} {shown['server']}",
                "componentType": "component",
                "observedValue": shown["days_left"],
                "observedUnit": "d",
                "status": "pass" if shown["status"] == "ok" else "warn",
                "time": iso(now),
                "output": "" if shown["status"] == "ok" else f"certificate {shown['status']}",
            }
        )
    return {
        "status": status,
        "version": sources.version.split(".")[0],
        "releaseId": sources.version,
        "serviceId": sources.instance_id or sources.service_name,
        "description": f"{sources.service_name} health",
        "checks": checks,
        "notes": [_alerts_note(sources)],
    }


def _alerts_note(sources: HealthSources) -> str:
    where = sources.alerts_evaluator
    if where.get("evaluator") == "prometheus":
        return f"alerts are evaluated by prometheus at {where.get('evaluator_url', '')}"
    return f"firing alerts: {sources.alerts_firing()}"
