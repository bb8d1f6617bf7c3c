"""`signal-sidecar` with CPython's default garbage-collector settings: gc_settings' baseline."""

from __future__ import annotations

import sys

from agent import cli, gc_settings


def _unchanged() -> None:
    """Leaves the collector's thresholds as CPython sets them."""


def _nothing_frozen() -> int:
    """Freezes nothing."""
    return 0


if __name__ == "__main__":
    # The benchmark's one way in: the sidecar offers no switch for these settings.
    gc_settings.tune = _unchanged
    gc_settings.freeze_startup_heap = _nothing_frozen
    sys.exit(cli.main(sys.argv[1:]))
