"""This replica among its peers: who it is, how many are alive, its fair share, and whose lease
may be taken over before it expires because its holder has ended."""

# The early-takeover rule. A lease is normally taken only once it expires (imap.lease_ttl), so a
# crashed replica's mailboxes wait up to one TTL. A successor may take a lease at once only when
# its holder is known to have ended, never merely because it looks alike:
#
# - Embedded store: the SQLite file is locked by one process at a time (store/local.py), so any
#   other holder in it is a process that has ended.
# - K8S_POD_NAME set (the downward API): Kubernetes keeps pod names unique among the live pods of
#   a namespace, runs one sidecar container per pod, and stops a container before restarting
#   it. A holder with the same pod name and namespace is this pod's sidecar before a restart.
#   (A StatefulSet pod force-deleted on a partitioned node is the one exception Kubernetes
#   documents; fencing below still keeps it from moving the watermark.)
# - Otherwise, on one host: the holder ran under the same hostname, the same boot id
#   (/proc/sys/kernel/random/boot_id, so the same running kernel) and the same pid namespace,
#   and no process with its pid and start time exists any more. Two live replicas on one host
#   with one hostname (tests, some hosts) never pass this: the other's pid is alive. A reused
#   pid has another start time. Containers with their own pid namespace cannot see each other's
#   processes, so they do not pass it either and wait for the lease to expire, as before.
#
# Whatever the rule decides, every takeover moves the lease's fencing token on: a holder that
# was wrongly thought ended cannot renew the lease or move the watermark, so no mail is lost
# and at worst a message in flight is delivered twice under the same Idempotency-Key.

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.store.base import Store, StoreError

REPLICA_PREFIX = "replica:"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_PID_NAMESPACE = "/proc/self/ns/pid"
_KNOWN_PEERS = 256


@dataclass(frozen=True)
class ReplicaIdentity:
    """What tells one sidecar process apart from every other, kept in its heartbeat."""

    holder: str
    pod: str = ""
    namespace: str = ""
    host: str = ""
    boot_id: str = ""
    pid_namespace: str = ""
    pid: int = 0
    started: float = 0.0

    def as_info(self) -> dict[str, Any]:
        """The heartbeat info that describes this process (without the holder, the key)."""
        info = asdict(self)
        del info["holder"]
        return info

    @classmethod
    def from_info(cls, holder: str, info: Mapping[str, Any]) -> ReplicaIdentity | None:
        """The identity a heartbeat describes; None when it lacks one or it is malformed."""
        try:
            return cls(
                holder=holder,
                pod=str(info.get("pod", "")),
                namespace=str(info.get("namespace", "")),
                host=str(info.get("host", "")),
                boot_id=str(info.get("boot_id", "")),
                pid_namespace=str(info.get("pid_namespace", "")),
                pid=int(info.get("pid", 0)),
                started=float(info.get("started", 0.0)),
            )
        except (TypeError, ValueError):
            return None


def holder_id(env: Mapping[str, str] = os.environ) -> str:
    """A lease holder id unique to this process: pod name (or host), pid, a random suffix."""
    base = env.get("K8S_POD_NAME") or socket.gethostname()
    return f"{base}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def this_process(holder: str, env: Mapping[str, str] = os.environ) -> ReplicaIdentity:
    """This process's identity (reads /proc: call it from a worker thread)."""
    return ReplicaIdentity(
        holder=holder,
        pod=env.get("K8S_POD_NAME", ""),
        namespace=env.get("K8S_NAMESPACE_NAME", ""),
        host=socket.gethostname(),
        boot_id=_read(_BOOT_ID),
        pid_namespace=_pid_namespace(),
        pid=os.getpid(),
        started=psutil.Process().create_time(),
    )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink(_PID_NAMESPACE)
    except OSError:
        return ""


def process_running(pid: int, started: float) -> bool:
    """Whether the process with that pid and start time still runs here (reads /proc)."""
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.001:
            return False  # the pid was reused by another process
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell (access denied): assume it runs


def ended_reason(
    holder: ReplicaIdentity,
    me: ReplicaIdentity,
    *,
    running: Callable[[int, float], bool] = process_running,
) -> str:
    """Why `holder` is known to have ended, seen from `me`; "" when it may still run."""
    if holder.holder == me.holder:
        return ""
    if holder.pod or me.pod:
        if holder.pod == me.pod and holder.namespace == me.namespace:
            return f"same pod {holder.pod!r}: its sidecar before a restart"
        return ""
    if not (me.host and me.boot_id and me.pid_namespace and holder.pid):
        return ""
    here = (me.host, me.boot_id, me.pid_namespace)
    if (holder.host, holder.boot_id, holder.pid_namespace) != here:
        return ""
    if running(holder.pid, holder.started):
        return ""
    return f"its process (pid {holder.pid} on {holder.host}) has exited"


def fair_share(mailboxes: int, replicas: int) -> int:
    """The most mailboxes one replica may lead: ceil(M / N), at least 1."""
    return max(1, math.ceil(mailboxes / max(1, replicas)))


class Replicas:
    """Heartbeats this replica, counts live ones for the fair share, and tells which lease
    holders have ended; `lock` keeps this replica's pollers from racing on their lease counts."""

    def __init__(
        self,
        store: Store,
        identity: ReplicaIdentity,
        *,
        mailboxes: int,
        interval: float,
        lease_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.identity = identity
        self._mailboxes = mailboxes
        self._interval = max(1.0, min(interval, lease_ttl / 3))
        self._clock = clock
        self._peers: dict[str, ReplicaIdentity] = {}
        self._left = False
        self._changed = asyncio.Event()
        self.count = 1
        self.lock = asyncio.Lock()

    @property
    def holder(self) -> str:
        """This replica's lease holder id."""
        return self.identity.holder

    def share(self) -> int:
        """How many mailboxes this replica may lead now."""
        return fair_share(self._mailboxes, self.count)

    def changed(self) -> asyncio.Event:
        """An event set at the next change of the live replica count (a new one after each)."""
        return self._changed

    async def beat(self) -> None:
        """Announces this replica and recounts the live ones (a store outage keeps the count)."""
        if self._left:
            return
        now = self._clock()
        count = self.count
        with contextlib.suppress(StoreError):
            await self._store.heartbeat(REPLICA_PREFIX + self.holder, now, self.identity.as_info())
            beats = await self._store.heartbeats(REPLICA_PREFIX)
            horizon = now - 3 * self._interval
            count = max(1, sum(1 for b in beats.values() if float(b.get("at", 0)) >= horizon))
        if count != self.count:
            self.count = count
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Beats every interval until stop is set."""
        while not stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)

    async def leave(self) -> None:
        """Tells the others at once that this replica is gone, so they recount their share."""
        self._left = True
        with contextlib.suppress(StoreError):
            await self._store.heartbeat(REPLICA_PREFIX + self.holder, 0.0, self.identity.as_info())

    async def ended(self, holder: str) -> str:
        """Why the lease holder `holder` is known to have ended; "" when it may still run."""
        if holder == self.holder:
            return ""
        if self._store.single_process:
            return "the embedded store serves one process, and this one is its only user now"
        identity = self._peers.get(holder)
        if identity is None:
            beat = (await self._store.heartbeats(REPLICA_PREFIX + holder)).get(
                REPLICA_PREFIX + holder
            )
            identity = None if beat is None else ReplicaIdentity.from_info(holder, beat)
            if identity is None:
                return ""  # a holder that never said who it is: wait for its lease to expire
            if len(self._peers) >= _KNOWN_PEERS:
                self._peers.clear()
            self._peers[holder] = identity
        return await asyncio.to_thread(ended_reason, identity, self.identity)
