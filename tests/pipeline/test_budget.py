"""ByteBudget: never over capacity, first come first served, nothing leaked on cancellation."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.pipeline.budget import ByteBudget


async def test_holders_never_exceed_the_capacity() -> None:
    budget = ByteBudget(100)
    rng = random.Random(5)
    peak = 0

    async def work(weight: int) -> None:
        nonlocal peak
        async with budget.hold(weight):
            peak = max(peak, budget.in_use)
            await asyncio.sleep(rng.random() / 1000)

    await asyncio.wait_for(
        asyncio.gather(*(work(rng.randint(1, 60)) for _ in range(200))), timeout=10
    )
    assert 60 < peak <= 100
    assert budget.in_use == 0


async def test_small_requests_run_together() -> None:
    budget = ByteBudget(100)
    inside = 0
    seen = 0
    gate = asyncio.Event()

    async def work() -> None:
        nonlocal inside, seen
        async with budget.hold(10):
            inside += 1
            seen = max(seen, inside)
            await gate.wait()
            inside -= 1

    tasks = [asyncio.create_task(work()) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert seen == 10
    gate.set()
    await asyncio.gather(*tasks)


async def test_a_large_request_is_not_overtaken_by_later_small_ones() -> None:
    budget = ByteBudget(100)
    order: list[str] = []
    first = asyncio.Event()

    async def work(name: str, weight: int, wait: asyncio.Event | None = None) -> None:
        async with budget.hold(weight):
            order.append(name)
            if wait is not None:
                await wait.wait()

    holder = asyncio.create_task(work("holder", 60, first))
    await asyncio.sleep(0)
    large = asyncio.create_task(work("large", 90))
    await asyncio.sleep(0)
    smalls = [asyncio.create_task(work(f"small{i}", 10)) for i in range(3)]
    await asyncio.sleep(0.01)
    # 60 + 10 would fit, but the large request queued first.
    assert order == ["holder"]
    first.set()
    await asyncio.gather(holder, large, *smalls)
    assert order == ["holder", "large", "small0", "small1", "small2"]


async def test_a_request_above_the_capacity_takes_all_of_it_and_is_granted() -> None:
    budget = ByteBudget(100)
    async with budget.hold(10_000):
        assert budget.in_use == 100
    assert budget.in_use == 0


async def test_a_cancelled_waiter_frees_its_place_for_the_next() -> None:
    budget = ByteBudget(100)
    release = asyncio.Event()
    granted: list[str] = []

    async def work(name: str, weight: int) -> None:
        async with budget.hold(weight):
            granted.append(name)
            await release.wait()

    holder = asyncio.create_task(work("holder", 50))
    await asyncio.sleep(0)
    blocked = asyncio.create_task(work("blocked", 80))
    await asyncio.sleep(0)
    behind = asyncio.create_task(work("behind", 40))
    await asyncio.sleep(0.01)
    assert granted == ["holder"]
    assert budget.waiting == 2
    blocked.cancel()
    await asyncio.sleep(0.01)
    # With the large waiter gone, the one behind it fits next to the holder.
    assert granted == ["holder", "behind"]
    release.set()
    await asyncio.gather(holder, behind)
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert budget.in_use == 0
    assert budget.waiting == 0


async def test_cancellation_right_after_the_grant_gives_the_share_back() -> None:
    budget = ByteBudget(100)
    held = budget.hold(100)
    await held.__aenter__()

    async def waiter() -> None:
        async with budget.hold(100):
            pytest.fail("a cancelled waiter must not enter")

    second = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert budget.waiting == 1
    # The release grants the waiter's share without yielding to the loop, so the
    # cancellation lands before the waiter resumes.
    await held.__aexit__(None, None, None)
    assert budget.in_use == 100
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert budget.in_use == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ByteBudget(0)
