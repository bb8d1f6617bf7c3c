"""Checks of the machine before anything starts, so a failure is one line naming the setting."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from agent.config import Settings
from agent.store.factory import STATE_FILE

_DATA_DIR = "server.data_dir (SIDECAR_DATA_DIR)"


class StartupError(Exception):
    """The machine cannot run this configuration (exit code 1); the message names the setting."""


def check_data_dir(settings: Settings, *, create: bool) -> None:
    """The embedded store's directory is writable, or can be made so; with Redis none is needed.

    With `create`, the directory is made and a file is written and removed in it (what `run`
    needs); without, nothing is touched and the nearest existing directory is checked (what
    `config check` can tell without side effects).
    """
    if settings.store.redis_url:
        return
    path = Path(settings.server.data_dir)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise StartupError(f"{_DATA_DIR}: cannot write to {path}: {exc.strerror}") from None
    else:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            reason = f"{existing} is not a directory"
            raise StartupError(f"{_DATA_DIR}: cannot write to {path}: {reason}")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StartupError(f"{_DATA_DIR}: cannot write to {path}: {existing} is read-only")
    state = path / STATE_FILE
    if state.exists() and not os.access(state, os.R_OK | os.W_OK):
        raise StartupError(f"{_DATA_DIR}: cannot write to {state}: permission denied")
