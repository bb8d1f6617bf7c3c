"""The chaos test's record of what happened (faults, mail, probe samples) and its invariants,
each a function that returns the violations it finds, so a failure lists all of them."""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.fixtures.faulty_receiver import Delivery


@dataclass(frozen=True)
class Appended:
    """One mail APPENDed to Dovecot, and the Idempotency-Key the sidecar must give it."""

    message_id: str
    key: str
    at: float


@dataclass(frozen=True)
class Outage:
    """A time during which no poll cycle can succeed (Dovecot or the Redis store is down)."""

    what: str
    start: float
    end: float


@dataclass(frozen=True)
class MailboxSample:
    """One mailbox as /health described it."""

    status: str
    leader: bool
    last_success: float | None


@dataclass(frozen=True)
class Sample:
    """/livez as answered at `at`, and /health as rendered at `health_at` (never earlier: the
    sampler reads /health again until its render is not older than the /livez answer), from a
    process started at `started`."""

    at: float
    health_at: float
    started: float
    livez: int
    health: int
    mailboxes: dict[str, MailboxSample]


@dataclass
class Timeline:
    """Everything the test did and saw, in wall-clock seconds (time.time())."""

    kills: list[float] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


def unaccounted(appended: Iterable[Appended], acked: set[str], dead: set[str]) -> list[str]:
    """Mails neither acknowledged by the receiver nor dead-lettered with a reason."""
    return [m.message_id for m in appended if m.key not in acked and m.key not in dead]


def forbidden_duplicates(deliveries: Sequence[Delivery], kills: Sequence[float]) -> list[str]:
    """Keys acknowledged twice without a SIGKILL between the two acknowledgements.

    The only duplicate allowed is a mail whose delivery was in flight at a SIGKILL: the app had
    acknowledged it, the process died before its outcome was recorded, and its successor
    delivered it again with the same Idempotency-Key. Every other repeat is a defect.
    """
    acks: dict[str, list[float]] = defaultdict(list)
    for delivery in deliveries:
        if delivery.acked:
            acks[delivery.key].append(delivery.at)
    ordered = sorted(kills)
    found = []
    for key, times in acks.items():
        for first, second in itertools.pairwise(times):
            # A kill in [first, second]: the first index of a kill at or after `first`.
            index = bisect.bisect_left(ordered, first)
            if index == len(ordered) or ordered[index] > second:
                found.append(f"{key} acknowledged at {first:.3f} and again at {second:.3f}")
    return found


def false_claims(
    samples: Sequence[Sample], outages: Sequence[Outage], *, budget: float, slack: float
) -> list[str]:
    """Moments when a probe said a poller works although none polled within its budget.

    `budget` is the poller's own stall limit; `slack` covers the probes' caches and the tail
    of a cycle that had fetched its mail before an outage began and still finished. On every
    sample:
    - /livez 200 while the lease is held, and a mailbox `ok` in /health, each mean a
      successful cycle (or the process's start) within the budget before that answer, by the
      process's own last_success (read no earlier than the answer, so a success after it
      proves nothing either way);
    - that last_success is true: no cycle succeeds during an outage, once its slack is over;
    - during an outage longer than the budget, a process that holds the lease fails /livez
      and does not call the mailbox `ok`.
    """
    found = []
    for sample in samples:
        for name, box in sample.mailboxes.items():
            success = box.last_success
            for claim, at in (("livez 200", sample.at), (f"status {box.status}", sample.health_at)):
                made = (
                    sample.livez == 200 and box.leader
                    if claim == "livez 200"
                    else box.status == "ok"
                )
                if not made or (success is not None and success > at):
                    continue
                idle = at - max(success or 0.0, sample.started)
                if idle > budget + slack:
                    found.append(
                        f"{at:.3f} {name}: {claim}, yet no successful cycle for {idle:.1f}s"
                    )
            for outage in outages:
                if success is not None and outage.start + slack < success < outage.end:
                    found.append(
                        f"{sample.at:.3f} {name}: last_success {success:.3f} during the "
                        f"{outage.what} outage {outage.start:.3f}-{outage.end:.3f}"
                    )
                blind_since = max(outage.start, sample.started)
                claims = (
                    ("livez 200", sample.at, sample.livez == 200),
                    ("status ok", sample.health_at, box.status == "ok"),
                )
                for claim, at, made in claims:
                    blind = blind_since <= at <= outage.end
                    if made and blind and box.leader and at - blind_since > budget + slack:
                        found.append(
                            f"{at:.3f} {name}: {claim} {at - blind_since:.1f}s into the "
                            f"{outage.what} outage"
                        )
    return sorted(set(found))
