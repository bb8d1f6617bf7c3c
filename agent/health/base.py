"""The one shape every health probe has, and what it may look at."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import aiohttp

    from agent.config import Settings
    from agent.pipeline.oauth import TokenSources
    from agent.store.base import Store
    from agent.telemetry.certificates import CertificateExpiry
    from agent.telemetry.exporters import ExportTracker

Status = Literal["ok", "error", "not_configured", "disabled", "unknown"]


@dataclass(frozen=True)
class ProbeResult:
    """What one probe run found; `detail` is shown to operators, so it is masked before storing."""

    status: Status
    detail: str = ""
    latency: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        """ok, or not configured / disabled (nothing to be down)."""
        return self.status in ("ok", "not_configured", "disabled")


@dataclass
class ProbeContext:
    """What probes may read: settings, the store, export outcomes, an HTTP session, the mailboxes'
    OAuth token sources, and extras."""

    settings: Settings
    store: Store | None = None
    exports: ExportTracker | None = None
    http: aiohttp.ClientSession | None = None
    tokens: TokenSources | None = None
    certificates: CertificateExpiry | None = None
    extras: dict[str, Any] = field(default_factory=dict)


Probe = Callable[[ProbeContext], Awaitable[ProbeResult]]


def not_configured(why: str) -> ProbeResult:
    """The dependency is not part of this deployment."""
    return ProbeResult(status="not_configured", detail=why)
