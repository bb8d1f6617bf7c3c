"""Finds the real components tests need; under CI a missing one fails the test, never skips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    """CI=true: every component must be present."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(what: str, hint: str) -> None:
    """Fails under CI, skips elsewhere, with how to get the component."""
    message = f"{what} is not available ({hint})"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_binary(name: str, hint: str = "run `make deps`") -> str:
    """The path of an executable on PATH (or in /usr/sbin), or fail/skip."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        missing(name, hint)
        raise AssertionError("unreachable")
    return path


def require_file(path: Path, hint: str = "run `make deps`") -> Path:
    """A file the build produces (such as tools/bin/jaeger), or fail/skip."""
    if not path.exists():
        missing(str(path), hint)
    return path
