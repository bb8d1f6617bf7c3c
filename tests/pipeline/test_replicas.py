"""Replica identity and the early-takeover rule, against real processes, Redis and SQLite."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from agent.pipeline.replicas import (
    ReplicaIdentity,
    Replicas,
    ended_reason,
    fair_share,
    holder_id,
    this_process,
)
from agent.store.base import Store
from agent.store.local import LocalStore
from agent.store.redis import RedisStore
from tests.fixtures.redis import RedisServer


@pytest.fixture
def me() -> ReplicaIdentity:
    return this_process(holder_id())


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """Another live process on this host."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait(10)


def _as_process(me: ReplicaIdentity, proc: subprocess.Popen[bytes]) -> ReplicaIdentity:
    """The identity `proc` would have announced: same host, boot and pid namespace as ours."""
    started = psutil.Process(proc.pid).create_time()
    return dataclasses.replace(me, holder=f"other-{proc.pid}", pid=proc.pid, started=started)


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[Store]:
    store = RedisStore(redis_server.url, timeout=1.0)
    await store.start()
    yield store
    await store.close()


def _replicas(store: Store, identity: ReplicaIdentity) -> Replicas:
    return Replicas(store, identity, mailboxes=2, interval=1.0, lease_ttl=30.0)


def test_fair_share_is_the_ceiling_of_mailboxes_over_replicas() -> None:
    assert [fair_share(3, 2), fair_share(4, 2), fair_share(1, 3), fair_share(2, 0)] == [2, 2, 1, 2]


def test_this_process_is_identified_by_host_boot_pid_namespace_pid_and_start_time(
    me: ReplicaIdentity,
) -> None:
    assert me.pid == os.getpid()
    assert me.host
    assert me.boot_id
    assert me.pid_namespace.startswith("pid:[")
    assert me.started == psutil.Process().create_time()


def test_a_live_process_on_this_host_is_never_taken_for_ended(
    me: ReplicaIdentity, child: subprocess.Popen[bytes]
) -> None:
    assert ended_reason(_as_process(me, child), me) == ""


def test_a_process_on_this_host_that_exited_has_ended(
    me: ReplicaIdentity, child: subprocess.Popen[bytes]
) -> None:
    holder = _as_process(me, child)
    child.kill()
    child.wait(10)
    assert f"pid {child.pid}" in ended_reason(holder, me)


def test_a_pid_now_used_by_another_process_has_ended(me: ReplicaIdentity) -> None:
    # Our own pid, as if a former holder had it before us: another start time.
    earlier = dataclasses.replace(me, holder="former", started=me.started - 100)
    assert "has exited" in ended_reason(earlier, me)


@pytest.mark.parametrize("field", ["host", "boot_id", "pid_namespace"])
def test_an_exited_holder_elsewhere_is_never_judged(
    me: ReplicaIdentity, child: subprocess.Popen[bytes], field: str
) -> None:
    holder = dataclasses.replace(_as_process(me, child), **{field: "elsewhere"})
    child.kill()
    child.wait(10)
    assert ended_reason(holder, me) == ""


def test_the_same_pod_has_ended_whatever_its_process(
    me: ReplicaIdentity, child: subprocess.Popen[bytes]
) -> None:
    ours = dataclasses.replace(me, pod="web-0", namespace="shop")
    before_restart = dataclasses.replace(_as_process(me, child), pod="web-0", namespace="shop")
    assert "same pod 'web-0'" in ended_reason(before_restart, ours)


@pytest.mark.parametrize(
    ("pod", "namespace", "my_pod"),
    [("web-1", "shop", "web-0"), ("web-0", "other", "web-0"), ("web-0", "shop", "")],
)
def test_another_pod_is_never_judged_even_when_its_pid_exited(
    me: ReplicaIdentity, child: subprocess.Popen[bytes], pod: str, namespace: str, my_pod: str
) -> None:
    ours = dataclasses.replace(me, pod=my_pod, namespace="shop" if my_pod else "")
    holder = dataclasses.replace(_as_process(me, child), pod=pod, namespace=namespace)
    child.kill()
    child.wait(10)
    assert ended_reason(holder, ours) == ""


async def test_a_holder_that_announced_itself_and_exited_is_known_ended_through_redis(
    redis_store: Store, me: ReplicaIdentity, child: subprocess.Popen[bytes]
) -> None:
    await _replicas(redis_store, _as_process(me, child)).beat()
    child.kill()
    child.wait(10)
    ours = _replicas(redis_store, me)
    assert "has exited" in await ours.ended(f"other-{child.pid}")


async def test_a_holder_that_never_announced_itself_is_not_known_ended(
    redis_store: Store, me: ReplicaIdentity
) -> None:
    assert await _replicas(redis_store, me).ended("stranger-1-abcdef") == ""


async def test_the_embedded_store_knows_any_other_holder_has_ended(
    tmp_path: Path, me: ReplicaIdentity
) -> None:
    store = LocalStore(tmp_path / "state.sqlite3")
    await store.start()
    try:
        replicas = _replicas(store, me)
        assert "embedded store" in await replicas.ended("previous-1-abcdef")
        assert await replicas.ended(me.holder) == ""
    finally:
        await store.close()


async def test_a_replica_that_leaves_is_no_longer_counted(
    redis_store: Store, me: ReplicaIdentity
) -> None:
    first = _replicas(redis_store, dataclasses.replace(me, holder="first"))
    second = _replicas(redis_store, dataclasses.replace(me, holder="second"))
    await first.beat()
    await second.beat()
    assert (second.count, second.share()) == (2, 1)
    await first.leave()
    await second.beat()
    assert (second.count, second.share()) == (1, 2)


async def test_a_replica_that_stops_beating_is_counted_until_three_intervals_pass(
    redis_store: Store, me: ReplicaIdentity
) -> None:
    now = [time.time()]
    first = Replicas(redis_store, dataclasses.replace(me, holder="first"), mailboxes=2,
                     interval=1.0, lease_ttl=30.0, clock=lambda: now[0])  # fmt: skip
    second = Replicas(redis_store, dataclasses.replace(me, holder="second"), mailboxes=2,
                      interval=1.0, lease_ttl=30.0, clock=lambda: now[0])  # fmt: skip
    await first.beat()
    now[0] += 2.9
    await second.beat()
    assert second.count == 2
    now[0] += 0.2
    await second.beat()
    assert second.count == 1
