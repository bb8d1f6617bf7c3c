"""Searches of a 100,000-record delivery log in both stores, against the newest page as baseline."""

# Goal (issue #20): a search answers within 100 ms at the median on 100,000 records, in both
# stores. Each store is filled through its public append_delivery with a realistic mix (2,000
# senders, subjects with order numbers, 0-3 links, 1 % dead-lettered), then every query kind is
# timed ROUNDS times. The baseline is the cheapest read the same store can answer: the newest
# page with no filter. Queries that match little (a Message-ID, a text found nowhere) walk the
# whole log and are the worst case by design.

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.store.base import DeliveryQuery, DeliveryRecord, LoggedFile, LoggedLink, Store
from agent.store.local import LocalStore
from agent.store.redis import RedisStore
from tests.fixtures.redis import RedisServer

RECORDS = int(os.environ.get("BENCH_DELIVERY_RECORDS", "100000"))
ROUNDS = 15
GOAL_MS = 100.0
_SPACING = 5.0  # seconds between records: 100,000 records span about 6 days
_STATUSES = ("transferred",) * 8 + ("failed", "unavailable", "unresolved", "rejected")
_PROVIDERS = ("wetransfer", "dropbox", "swisstransfer", "fromsmash", "generic")


def _record(n: int, now: float, rng: random.Random) -> DeliveryRecord:
    at = now - (RECORDS - n) * _SPACING
    customer = rng.randrange(2000)
    roll = rng.random()
    outcome = (
        "dead_lettered" if roll < 0.01 else "failed" if roll < 0.04 else
        "duplicate" if roll < 0.08 else "skipped" if roll < 0.10 else "delivered"
    )  # fmt: skip
    links = tuple(
        LoggedLink(
            provider := rng.choice(_PROVIDERS),
            f"https://{provider}.example/s/{n:x}{i}",
            status := rng.choice(_STATUSES),
            None,
            4096 if status == "transferred" else None,
            "" if status == "transferred" else "HTTP 502: source answered HTTP 502",
            (LoggedFile(f"2026/12/01/{n:032x}/{provider}-{i}/file.pdf", 4096, "file.pdf"),)
            if status == "transferred"
            else (),
        )
        for i in range(rng.choice((0, 1, 1, 2, 3)))
    )
    return DeliveryRecord(
        at=at,
        outcome=outcome,  # type: ignore[arg-type]
        mailbox=("orders", "support", "files")[n % 3],
        email_id=f"{n:032x}",
        status_code=400 if outcome == "dead_lettered" else 200,
        attempts=1,
        message_id=f"<{n}.{customer}@mail.customer{customer}.example>",
        sender=f"Customer {customer} <buyer{customer}@customer{customer}.example>",
        subject=f"Files for order {n % 9973} from customer {customer}",
        received_at=at - 30,
        links=links,
        trace_id=f"{n:032x}",
    )


def _queries(now: float) -> dict[str, DeliveryQuery]:
    middle = now - RECORDS // 2 * _SPACING
    return {
        "newest page (baseline)": DeliveryQuery(),
        "q=sender address": DeliveryQuery(q="buyer1234@customer1234"),
        "q=subject words": DeliveryQuery(q="order 4711 from"),
        "q=Message-ID (older half)": DeliveryQuery(q=f"<{RECORDS // 3}."),
        "q=no match": DeliveryQuery(q="nothing matches this"),
        "outcome=dead_lettered": DeliveryQuery(outcome="dead_lettered"),
        "status=unavailable": DeliveryQuery(status="unavailable"),
        "mailbox+outcome+q": DeliveryQuery(mailbox="files", outcome="failed", q="customer 7"),
        "since/until 1 h, mid-log": DeliveryQuery(since=middle - 1800, until=middle + 1800),
    }


async def _fill(store: Store, now: float) -> float:
    rng = random.Random(20)
    started = time.perf_counter()
    batch: list[DeliveryRecord] = []
    for n in range(RECORDS):
        batch.append(_record(n, now, rng))
        if len(batch) == 10:
            # Time order within a batch does not matter to either store: both sort by `at`.
            await asyncio.gather(*(store.append_delivery(r) for r in batch))
            batch = []
    await asyncio.gather(*(store.append_delivery(r) for r in batch))
    return time.perf_counter() - started


async def _measure(store: Store, now: float) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in _queries(now)}
    for _ in range(ROUNDS):
        for name, query in _queries(now).items():
            started = time.perf_counter()
            page = await store.search_deliveries(query)
            timings[name].append((time.perf_counter() - started) * 1000)
            if name == "q=Message-ID (older half)":
                assert len(page.records) == 1, "the Message-ID must be found"
    return timings


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _report(backend: str, fill: float, timings: dict[str, list[float]]) -> dict[str, float]:
    base = statistics.median(timings["newest page (baseline)"])
    print(f"\n{backend}: {RECORDS} records filled in {fill:.1f} s; {ROUNDS} rounds per query")
    print(f"  {'query':30} {'median ms':>10} {'p99 ms':>8} {'x baseline':>11}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"  {name:30} {median:10.2f} {_p99(values):8.2f} {median / base:11.1f}")
    searches = [v for name, values in timings.items() if "baseline" not in name for v in values]
    overall = statistics.median(searches)
    verdict = "met" if overall < GOAL_MS else "MISSED"
    print(
        f"  all searches: median {overall:.2f} ms, p99 {_p99(searches):.2f} ms "
        f"(goal: median < {GOAL_MS:g} ms: {verdict})"
    )
    return {f"{backend}_median_ms": overall, f"{backend}_p99_ms": _p99(searches)}


async def _bench(open_store: Callable[[], Store], backend: str) -> dict[str, float]:
    now = time.time()
    store = open_store()
    await store.start()
    try:
        fill = await _fill(store, now)
        size = await store.delivery_log_size()
        assert size.records == RECORDS, f"{backend} holds {size.records} records"
        return _report(backend, fill, await _measure(store, now))
    finally:
        await store.close()


def main() -> dict[str, Any]:
    """Runs both stores; prints per query median, p99 and ratio to the newest page."""
    results: dict[str, Any] = {}
    # tmpfs when there is one: the fill is 100,000 fsyncs otherwise; searches only read.
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="bench-deliveries-", dir=shm if shm.is_dir() else None))
    try:
        results |= asyncio.run(
            _bench(
                lambda: LocalStore(workdir / "state.sqlite3", delivery_max_records=RECORDS),
                "sqlite",
            )
        )
        binary = shutil.which("redis-server")
        if binary is None:
            print("redis-server is not installed: the Redis store is not measured", file=sys.stderr)
            return results
        server = RedisServer(binary, workdir)
        server.start()
        try:
            results |= asyncio.run(
                _bench(
                    lambda: RedisStore(server.url, timeout=5.0, delivery_max_records=RECORDS),
                    "redis",
                )
            )
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
