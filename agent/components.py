"""Which background components a sidecar starts, decided from the settings."""

from __future__ import annotations

from agent.config import Settings
from agent.runtime import StartHook


def start_components(settings: Settings) -> list[StartHook]:
    """The start hooks for this configuration, in start order."""
    hooks: list[StartHook] = []
    return hooks
