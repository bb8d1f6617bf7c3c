"""Chaos: a real sidecar process under random faults keeps its promises about mail and health.

For each store (the embedded SQLite file, and Redis), mail is APPENDed to a real Dovecot at a
steady rate while, at seeded random points, the test:
- SIGKILLs the sidecar, or stops it with SIGTERM (also while the app is answering a webhook),
  and starts it again on the same state;
- restarts Dovecot, and once keeps it down for longer than the poller's stall limit;
- kills and restarts Redis (an fsynced append-only file keeps its data, as a Redis used as the
  store must), also while the app is answering a webhook, so recording its answer fails;
- makes the receiver fail (503), refuse for good (422: the mail is dead-lettered), hang past
  the webhook timeout, or answer slowly (past the drain timeout, within the webhook timeout);
- black-holes the OTLP collector.
Then the faults stop, the mail settles, the sidecar is shut down cleanly and started once more,
and these must hold:

- every appended mail was acknowledged by the receiver or dead-lettered with a reason;
- no Idempotency-Key was acknowledged twice, except a mail whose delivery was in flight at a
  SIGKILL: acknowledged before the kill and again after it (the app had taken it; the process
  died before recording that). A SIGTERM, a Dovecot or Redis outage, a failing, hanging or slow
  receiver allow no repeat, and the final clean shutdown and restart acknowledge nothing again;
- /livez and /health, sampled about every 0.5 s, never said a poller works while none had
  polled within its stall limit (imap.stall_after), judged by its last_success and by the
  outages the test itself caused;
- the sidecar's RSS stayed under RSS_BOUND_MIB.

The run prints its seed, fault sequence and iteration count. To replay a failure:
`CHAOS_SEED=<seed> .venv/bin/python -m pytest tests/chaos -q -s` draws the same faults in the
same order (their timing against the mail flow still varies). CHAOS_SECONDS sets the fault
phase of each store (default 40 s; the module takes about 1.5 min on two cores).
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import random
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from agent.pipeline.process import email_id_for
from tests.fixtures.blackhole import BlackHole
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.faulty_receiver import FaultyReceiver, Mode
from tests.fixtures.redis import RedisServer
from tests.pipeline.hostile import make_message
from tests.support.chaos import (
    Appended,
    MailboxSample,
    Outage,
    Sample,
    Timeline,
    false_claims,
    forbidden_duplicates,
    unaccounted,
)
from tests.support.sidecar import SidecarProcess

SECONDS = float(os.environ.get("CHAOS_SECONDS", "40"))
MAX_ITERATIONS = 30
SETTLE_SECONDS = 45.0
HARD_DEADLINE = SECONDS + SETTLE_SECONDS + 60.0
APPEND_EVERY = 0.3
SAMPLE_EVERY = 0.4
STALL_AFTER = 5.0
# The slack of the probe invariant: /livez's 0.2 s and /health's 0.5 s caches, one poll
# interval, and the tail of a cycle that had fetched its mail before an outage began (one
# batch of deliveries: the webhook's 2 s retry budget plus a last 2.5 s attempt), with room
# for a loaded machine.
SLACK = 6.5
# A sidecar with a few hundred mails in flight measured about 90 MiB; twice that is a leak.
RSS_BOUND_MIB = 200

_CONFIG = f"""\
[imap]
timeout = "2s"
lease_ttl = "4s"
stall_after = "{STALL_AFTER:g}s"
batch_size = 10
concurrency = 10
max_attempts = 3
reconnect_max_backoff = "1s"
[server]
drain_timeout = "300ms"
[webhook]
timeout = "2.5s"
backoff_initial = "50ms"
backoff_max = "500ms"
retry_budget = "2s"
[health]
interval = "500ms"
[telemetry]
export_interval = "1s"
shutdown_timeout = "500ms"
"""

FAULTS = (
    "kill_sidecar",
    "terminate_sidecar",
    "restart_dovecot",
    "receiver_fail",
    "receiver_hang",
    "receiver_slow",
    "receiver_reject",
    "terminate_while_answering",
    "collector_hole",
)


REDIS_FAULTS = ("kill_redis", "kill_redis_while_answering")

RECEIVER_MODES: dict[str, Mode] = {
    "receiver_fail": "fail",
    "receiver_hang": "hang",
    "receiver_slow": "slow",
    "receiver_reject": "reject",
}


def _seed() -> int:
    return int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 2**31))


@dataclass
class Rig:
    """The sidecar under test and the real components it talks to."""

    tmp_path: Path
    dovecot: Dovecot
    receiver: FaultyReceiver
    collector: BlackHole
    redis: RedisServer | None
    timeline: Timeline = field(default_factory=Timeline)
    appended: list[Appended] = field(default_factory=list)
    processes: list[SidecarProcess] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _dovecot_up: threading.Event = field(default_factory=threading.Event)

    @property
    def sidecar(self) -> SidecarProcess:
        return self.processes[-1]

    def env(self) -> dict[str, str]:
        env = {
            **self.dovecot.env("alice", poll_interval="0.5"),
            "WEBHOOK_URL": self.receiver.url + "/hook",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.collector.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            # One data directory for every process, as a container restarted on its volume.
            "SIDECAR_DATA_DIR": str(self.tmp_path / "data"),
        }
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        return env

    def start_sidecar(self) -> None:
        name = f"sidecar{len(self.processes)}"
        proc = SidecarProcess(self.tmp_path, env=self.env(), config=_CONFIG, name=name)
        with self._lock:
            self.processes.append(proc)
        proc.start(wait=True, timeout=30)

    def kill_sidecar(self) -> None:
        with self._lock:
            self.timeline.kills.append(time.time())
            self.sidecar.kill()
        self.start_sidecar()

    def terminate_sidecar(self) -> None:
        self.sidecar.terminate(timeout=15)
        self.start_sidecar()

    def dovecot_down(self, seconds: float) -> None:
        self._dovecot_up.clear()
        start = time.time()
        self.dovecot.stop()
        time.sleep(seconds)
        self.dovecot.start()
        self.timeline.outages.append(Outage("dovecot", start, time.time()))
        self._dovecot_up.set()

    def redis_down(self, seconds: float) -> None:
        assert self.redis is not None
        start = time.time()
        self.redis.kill()
        time.sleep(seconds)
        self.redis.start()
        self.timeline.outages.append(Outage("redis", start, time.time()))

    def append_steadily(self, stop: threading.Event) -> None:
        """APPENDs one mail every APPEND_EVERY seconds while Dovecot is up, until stop."""
        self._dovecot_up.set()
        index = 0
        while not stop.wait(APPEND_EVERY):
            if not self._dovecot_up.wait(0.5):
                continue
            message_id = f"<chaos-{index}@chaos.test>"
            raw = make_message(message_id=message_id, subject=f"chaos {index}")
            try:
                uidvalidity, uid = self.dovecot.append_uid("alice", raw)
            except (OSError, EOFError, RuntimeError, imaplib.IMAP4.error):
                # Dovecot went down mid-APPEND: not counted as arrived. (Had Dovecot kept it
                # anyway, the sidecar delivers a mail the test does not expect, which no
                # invariant forbids.)
                continue
            key = email_id_for("default", uidvalidity, uid)
            self.appended.append(Appended(message_id, key, time.time()))
            index += 1

    def sample_steadily(self, stop: threading.Event) -> None:
        """Reads /livez, /health and VmRSS every SAMPLE_EVERY seconds, until stop."""
        while not stop.wait(SAMPLE_EVERY):
            with self._lock:
                proc = self.sidecar
            sample = _sample(proc)
            if sample is not None:
                self.timeline.samples.append(sample)
            rss = _rss_kib(proc)
            if rss is not None:
                self.timeline.rss_kib.append(rss)

    def dead_letters(self) -> set[str]:
        status, body = self.sidecar.get_json("/api/dead-letters?limit=500")
        assert status == 200, body
        return {d["email_id"] for d in body["dead_letters"] if d.get("reason")}

    def acked(self) -> set[str]:
        return {d.key for d in self.receiver.snapshot() if d.acked}


def _sample(proc: SidecarProcess) -> Sample | None:
    try:
        at = time.time()
        livez, _ = proc.get("/livez", timeout=2)
        for _ in range(3):
            health, body = proc.get("/health", timeout=2)
            report = json.loads(body)
            health_at = datetime.fromisoformat(report["timestamp"]).timestamp()
            if health_at >= at:
                break
            time.sleep(0.3)  # a render cached from before the /livez answer: read it again
        else:
            return None
    except (OSError, urllib.error.URLError, ValueError):
        return None  # not listening (killed, restarting): no claim made
    boxes = report["services"]["background_tasks"]["imap_poller"].get("mailboxes", {})
    return Sample(
        at=at,
        health_at=health_at,
        # The process's own start, from its uptime: the moment its stall clock starts.
        started=health_at - float(report["uptime"]),
        livez=livez,
        health=health,
        mailboxes={
            name: MailboxSample(box["status"], bool(box["leader"]), box["last_success"])
            for name, box in boxes.items()
        },
    )


def _rss_kib(proc: SidecarProcess) -> int | None:
    if proc.proc is None:
        return None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def _inject(rig: Rig, rng: random.Random, kind: str) -> None:
    hold = rng.uniform(0.5, 3.0)
    if kind == "kill_sidecar":
        rig.kill_sidecar()
    elif kind == "terminate_sidecar":
        rig.terminate_sidecar()
    elif kind == "restart_dovecot":
        rig.dovecot_down(rng.uniform(0.2, 1.5))
    elif kind == "long_dovecot_outage":
        rig.dovecot_down(STALL_AFTER + SLACK + 2.0)
    elif kind == "kill_redis":
        rig.redis_down(rng.uniform(0.3, 2.0))
    elif kind == "terminate_while_answering":
        # A SIGTERM while the app is still answering a webhook: the shutdown waits for it.
        _while_answering(rig, rig.terminate_sidecar)
    elif kind == "kill_redis_while_answering":
        # The app takes the mail, then the store cannot record that: the mail comes back on a
        # later cycle and must not be sent again.
        _while_answering(rig, lambda: rig.redis_down(rng.uniform(0.5, 1.5)))
    elif kind in ("receiver_fail", "receiver_hang", "receiver_slow", "receiver_reject"):
        rig.receiver.mode = RECEIVER_MODES[kind]
        time.sleep(hold)
        rig.receiver.mode = "ok"
    elif kind == "collector_hole":
        rig.collector.answering = False
        time.sleep(hold * 2)
        rig.collector.answering = True


def _while_answering(rig: Rig, fault: Callable[[], None]) -> None:
    """Runs `fault` as soon as a webhook arrives that the receiver answers slowly (200)."""
    rig.receiver.mode = "slow"
    seen = len(rig.receiver.snapshot())
    deadline = time.monotonic() + 3.0
    while len(rig.receiver.snapshot()) == seen and time.monotonic() < deadline:
        time.sleep(0.02)
    fault()
    rig.receiver.mode = "ok"


@contextlib.contextmanager
def _running(rig: Rig) -> Iterator[threading.Event]:
    """Mail arrives until the yielded event is set; the probes are sampled until the end."""
    stop_mail, stop_sampling = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=rig.append_steadily, args=(stop_mail,), daemon=True),
        threading.Thread(target=rig.sample_steadily, args=(stop_sampling,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield stop_mail
    finally:
        stop_mail.set()
        stop_sampling.set()
        for thread in threads:
            thread.join(timeout=10)


def _until(check: Callable[[], bool], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def _run(rig: Rig, store: str) -> None:
    seed = _seed()
    rng = random.Random(seed)
    began = time.monotonic()
    hard_deadline = began + HARD_DEADLINE
    kinds = FAULTS + (REDIS_FAULTS if rig.redis is not None else ())
    iterations = 0
    rig.collector.answering = True
    rig.receiver.hang_seconds = 3.5  # past the webhook timeout (2.5 s)
    rig.receiver.slow_seconds = 0.4  # past the drain timeout (0.3 s), well within 2.5 s
    rig.start_sidecar()
    with _running(rig) as stop_mail:
        # A shuffled deck of every kind (and the long outage), dealt again when empty: each
        # kind runs at least once, in an order the seed decides.
        deck: list[str] = []
        while iterations < MAX_ITERATIONS and time.monotonic() < hard_deadline - SETTLE_SECONDS:
            if time.monotonic() - began >= SECONDS and set(kinds) <= set(rig.timeline.faults):
                break
            if not deck:
                deck = [*kinds, *(() if "long_dovecot_outage" in rig.timeline.faults
                                  else ("long_dovecot_outage",))]  # fmt: skip
                rng.shuffle(deck)
            time.sleep(rng.uniform(0.3, 1.2))
            kind = deck.pop()
            rig.timeline.faults.append(kind)
            _inject(rig, rng, kind)
            iterations += 1
        stop_mail.set()
        faults_over = time.monotonic()
        # Every fault is undone; the mail that arrived settles.
        settle = min(faults_over + SETTLE_SECONDS, hard_deadline)

        def settled() -> bool:
            try:
                dead = rig.dead_letters()
            except (OSError, AssertionError):
                return False
            return not unaccounted(rig.appended, rig.acked(), dead)

        _until(settled, settle)
        dead = rig.dead_letters()
        acked_before_restart = len([d for d in rig.receiver.snapshot() if d.acked])
        # A clean shutdown, and a clean start on the same state: nothing is acknowledged again.
        rig.sidecar.terminate(timeout=15)
        rig.start_sidecar()
        time.sleep(3.0)
    rig.sidecar.terminate(timeout=15)
    deliveries = rig.receiver.snapshot()
    print(
        f"\nchaos[{store}]: seed={seed} iterations={iterations} faults={rig.timeline.faults} "
        f"mails={len(rig.appended)} acked={len(rig.acked())} dead_lettered={len(dead)} "
        f"requests={len(deliveries)} kills={len(rig.timeline.kills)} "
        f"samples={len(rig.timeline.samples)} max_rss_mib="
        f"{max(rig.timeline.rss_kib, default=0) / 1024:.0f} "
        f"took={time.monotonic() - began:.0f}s (replay: CHAOS_SEED={seed})"
    )
    assert rig.appended, "no mail was appended"
    assert set(kinds) <= set(rig.timeline.faults), f"not every fault ran: {rig.timeline.faults}"
    assert rig.timeline.samples, "no probe sample was taken"
    lost = unaccounted(rig.appended, rig.acked(), dead)
    assert lost == [], f"seed {seed}: neither delivered nor dead-lettered: {lost}"
    repeats = forbidden_duplicates(deliveries, rig.timeline.kills)
    assert repeats == [], f"seed {seed}: acknowledged twice without a SIGKILL between: {repeats}"
    acks = [d for d in deliveries if d.acked]
    before = {d.key for d in acks[:acked_before_restart]}
    again = [d.key for d in acks[acked_before_restart:] if d.key in before]
    assert again == [], f"seed {seed}: acknowledged again after a clean restart: {again}"
    claims = false_claims(
        rig.timeline.samples, rig.timeline.outages, budget=STALL_AFTER, slack=SLACK
    )
    assert claims == [], f"seed {seed}: probes claimed a working poller: {claims}"
    worst = max(rig.timeline.rss_kib) / 1024
    assert worst < RSS_BOUND_MIB, f"seed {seed}: RSS reached {worst:.0f} MiB"


@pytest.fixture
def chaos_rig(
    tmp_path: Path, dovecot: Dovecot, faulty_receiver: FaultyReceiver, blackhole: BlackHole
) -> Iterator[Rig]:
    rig = Rig(tmp_path, dovecot, faulty_receiver, blackhole, None)
    yield rig
    for proc in rig.processes:
        proc.stop()


def test_mail_and_health_stay_honest_under_chaos_on_the_embedded_store(chaos_rig: Rig) -> None:
    _run(chaos_rig, "sqlite")


def test_mail_and_health_stay_honest_under_chaos_on_redis(
    chaos_rig: Rig, durable_redis_server: RedisServer
) -> None:
    chaos_rig.redis = durable_redis_server
    _run(chaos_rig, "redis")
