"""The garbage-collector settings: thresholds for per-mail allocation, a frozen start-up heap."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from agent import gc_settings


@pytest.fixture
def restored_collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_collector")
def test_tune_raises_the_young_generation_threshold_above_cpythons_700() -> None:
    gc.set_threshold(700, 10, 10)
    gc_settings.tune()
    assert gc.get_threshold() == gc_settings.THRESHOLDS
    assert gc_settings.thresholds()[0] > 700


@pytest.mark.usefixtures("restored_collector")
def test_freezing_collects_startup_garbage_and_moves_live_objects_out_of_collection() -> None:
    gc.unfreeze()

    class Node:
        def __init__(self) -> None:
            self.me = self

    garbage = weakref.ref(Node())  # a cycle: only the collector frees it
    kept = [Node() for _ in range(100)]
    frozen = gc_settings.freeze_startup_heap()
    assert garbage() is None
    # Frozen objects that die later leave the count (another thread may free some at once), and
    # nothing joins it without another freeze: so it can only have shrunk since the call.
    assert frozen >= gc.get_freeze_count() >= len(kept)
    assert not any(type(obj) is Node for obj in gc.get_objects()), "kept nodes are frozen"
