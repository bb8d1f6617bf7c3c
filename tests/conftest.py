"""Test-wide setup: every module in tests/fixtures is a pytest plugin that starts a real server."""

from __future__ import annotations

import os
import pkgutil
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

pytest_plugins = [
    f"tests.fixtures.{module.name}"
    for module in pkgutil.iter_modules([str(Path(__file__).parent / "fixtures")])
]

# Property tests (Hypothesis): `make test` runs a bounded, reproducible profile; `make fuzz`
# (HYPOTHESIS_PROFILE=fuzz) draws far more inputs at random and keeps any failing one in
# test-artifacts/hypothesis, so that the next run replays it first.
settings.register_profile(
    "bounded",
    max_examples=100,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=5_000,
    database=DirectoryBasedExampleDatabase(
        Path(__file__).parents[1] / "test-artifacts" / "hypothesis"
    ),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bounded"))
