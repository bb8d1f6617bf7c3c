"""The state-store protocol shared by the embedded SQLite store and the Redis store."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args, runtime_checkable

# delivered, failed and dead_lettered are webhook outcomes (the 24 h error ratio counts them);
# skipped (no webhook to send) and duplicate (already processed) are logged so a mail is found.
DeliveryOutcome = Literal["delivered", "failed", "dead_lettered", "skipped", "duplicate"]
DELIVERY_OUTCOMES: tuple[DeliveryOutcome, ...] = get_args(DeliveryOutcome)
WEBHOOK_OUTCOMES: tuple[DeliveryOutcome, ...] = ("delivered", "failed", "dead_lettered")
# What became of one delivery link (docs/webhook.md).
LinkStatus = Literal["transferred", "failed", "unresolved", "unavailable", "rejected", "skipped"]
LINK_STATUSES: tuple[LinkStatus, ...] = get_args(LinkStatus)
# dead_lettered -> redrive_requested -> delivered | gone | dead_lettered (again, new reason)
DeadLetterStatus = Literal["dead_lettered", "redrive_requested", "delivered", "gone"]
# Why a mail was dead-lettered, as a bounded set of names (a metric attribute and alert label).
DeadLetterReason = Literal[
    "webhook_rejected", "webhook_unavailable", "store_error", "processing_error"
]
DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = get_args(DeadLetterReason)


class StoreError(RuntimeError):
    """The store could not be reached or answered badly; the message never holds a secret."""


def dump_json(value: Any) -> str:
    """A value as the JSON both backends store; a value JSON cannot hold is a StoreError."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value is not JSON-serialisable: {exc}") from exc


@dataclass(frozen=True)
class Lease:
    """A held lease: the fencing token grows every time the lease changes hands."""

    name: str
    holder: str
    token: int
    expires_at: float


@dataclass(frozen=True)
class Watermark:
    """Where a mailbox's poller stands: UIDVALIDITY and the highest UID whose outcome is durable."""

    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class LoggedFile:
    """One file a link stored in the bucket."""

    key: str
    size: int | None = None
    filename: str = ""


@dataclass(frozen=True)
class LoggedLink:
    """One delivery link as the log keeps it: its URL masked, its files by R2 key."""

    provider: str
    url: str
    status: str
    key: str | None = None
    size: int | None = None
    error: str = ""
    files: tuple[LoggedFile, ...] = ()


@dataclass(frozen=True)
class DeliveryRecord:
    """One mail's outcome, as kept in the delivery log (and searched by /api/deliveries).

    `at` is when the outcome was recorded (the delivered time for a delivered mail);
    `received_at` the mail's own Date, when it had one. Nothing in it is a secret: link URLs
    and errors are masked before the record is written.
    """

    at: float
    outcome: DeliveryOutcome
    mailbox: str
    email_id: str
    status_code: int | None = None
    duration: float = 0.0
    error: str = ""
    attempts: int = 1
    message_id: str = ""
    sender: str = ""
    subject: str = ""
    received_at: float | None = None
    links: tuple[LoggedLink, ...] = ()
    trace_id: str = ""

    @property
    def lag(self) -> float | None:
        """Seconds from the mail's Date to its recorded outcome; None without a Date."""
        return None if self.received_at is None else self.at - self.received_at

    @property
    def link_statuses(self) -> tuple[str, ...]:
        """The distinct statuses of its links, in link order."""
        return tuple(dict.fromkeys(link.status for link in self.links))

    @property
    def search_text(self) -> str:
        """What `q` is matched against: sender, subject and Message-ID, case-folded, one line."""
        text = "\n".join((self.sender, self.subject, self.message_id)).casefold()
        return _CONTROL.sub(" ", text)


def record_to_json(record: DeliveryRecord) -> str:
    """The record as both backends store it."""
    return json.dumps(dataclasses.asdict(record), ensure_ascii=False, separators=(",", ":"))


def record_from_json(text: str | bytes) -> DeliveryRecord:
    """A stored record; fields of older versions that are gone are ignored."""
    data = json.loads(text)
    links = tuple(
        LoggedLink(
            **{
                **{k: v for k, v in link.items() if k in _LINK_FIELDS},
                "files": tuple(
                    LoggedFile(**{k: v for k, v in f.items() if k in _FILE_FIELDS})
                    for f in link.get("files", ())
                ),
            }
        )
        for link in data.get("links", ())
    )
    known = {k: v for k, v in data.items() if k in _RECORD_FIELDS}
    return DeliveryRecord(**{**known, "links": links})


@dataclass(frozen=True)
class DeliveryQuery:
    """A search of the delivery log; every given filter must match. Newest first."""

    mailbox: str | None = None
    outcome: DeliveryOutcome | None = None
    status: LinkStatus | None = None
    since: float | None = None
    until: float | None = None
    # Case-insensitive substring of sender, subject or Message-ID.
    q: str = ""
    limit: int = 50
    # The page after the one whose next_cursor this is (opaque, from the same backend).
    cursor: str | None = None

    def matches(self, record: DeliveryRecord) -> bool:
        """Whether the record passes every filter (the cursor aside)."""
        return (
            (self.mailbox is None or record.mailbox == self.mailbox)
            and (self.outcome is None or record.outcome == self.outcome)
            and (self.status is None or self.status in record.link_statuses)
            and (self.since is None or record.at >= self.since)
            and (self.until is None or record.at <= self.until)
            and (not self.q or self.needle in record.search_text)
        )

    @property
    def needle(self) -> str:
        """`q` as the search text holds it: case-folded, control characters as spaces."""
        return _CONTROL.sub(" ", self.q.casefold())


@dataclass(frozen=True)
class DeliveryPage:
    """One page of a search: the records newest first, and the cursor of the next page."""

    records: list[DeliveryRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class DeliveryLogSize:
    """How much the delivery log holds (for /health)."""

    records: int
    oldest_at: float | None


def encode_cursor(at: float, tie: str) -> str:
    """An opaque page cursor: the last record's time and its tie-breaking id."""
    raw = f"{at!r} {tie}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The time and id of a cursor; ValueError when it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, tie = raw.split(" ", 1)
        value = float(at)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a delivery cursor") from exc
    if not math.isfinite(value) or not tie:
        raise ValueError("not a delivery cursor")
    return value, tie


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(DeliveryRecord))
_LINK_FIELDS = frozenset(f.name for f in dataclasses.fields(LoggedLink))
_FILE_FIELDS = frozenset(f.name for f in dataclasses.fields(LoggedFile))


@dataclass(frozen=True)
class DeadLetter:
    """A mail that could not be delivered, kept so it can be re-driven once the cause is fixed.

    It names the message by mailbox, UIDVALIDITY and UID (enough to fetch it again) and by its
    email id, the webhook's Idempotency-Key. It holds no secret and no link: `reason` is the
    masked text of the last failure, `error_type` its low-cardinality name.
    """

    email_id: str
    mailbox: str
    uidvalidity: int
    uid: int
    reason: str
    error_type: DeadLetterReason
    at: float
    attempts: int = 1
    status: DeadLetterStatus = "dead_lettered"
    redrives: int = 0
    requested_at: float | None = None
    updated_at: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class DeliveryWindow:
    """Counts by outcome in a time window and the newest record (for /health and metrics)."""

    counts: dict[str, int]
    last: DeliveryRecord | None

    @property
    def total(self) -> int:
        """All deliveries in the window."""
        return sum(self.counts.values())

    @property
    def error_ratio(self) -> float | None:
        """Failed (failed + dead_lettered) over all; None when nothing was delivered."""
        if not self.total:
            return None
        bad = self.counts.get("failed", 0) + self.counts.get("dead_lettered", 0)
        return bad / self.total


@runtime_checkable
class Store(Protocol):
    """Everything the sidecar keeps between cycles and across restarts and replicas."""

    backend: str
    # True when no other process can use this store at the same time (the embedded store locks
    # its file), so a lease held by any other holder belongs to a process that has ended.
    single_process: bool

    async def start(self) -> None:
        """Opens connections or files; must be called before any other method."""

    async def close(self) -> None:
        """Releases connections; the store cannot be used afterwards."""

    async def ping(self) -> float:
        """Round trip to the backend in seconds; raises StoreError when it is down."""

    # Leases (one poller per mailbox across replicas).
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Takes the lease if free or expired (or already ours: then renews); None if held."""

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease | None:
        """Extends our lease; None when it expired and another holder (or token) took it."""

    async def release_lease(self, lease: Lease) -> bool:
        """Gives the lease up if we still hold it with that token."""

    async def lease_holder(self, name: str) -> Lease | None:
        """The current unexpired lease of that name, whoever holds it."""

    async def take_over_lease(self, lease: Lease, holder: str, ttl: float) -> Lease | None:
        """Gives `lease` (as lease_holder returned it) to holder before it expires, if it is
        still held with that token; None otherwise. Only for a holder known to have ended: the
        token moves on, so the old holder can neither renew it nor write a fenced watermark."""

    async def count_leases(self, holder: str, prefix: str) -> int:
        """How many unexpired leases with names starting with prefix this holder has."""

    # Watermarks.
    async def get_watermark(self, mailbox: str) -> Watermark | None:
        """The mailbox's UIDVALIDITY and UID watermark, or None before the first cycle."""

    async def set_watermark(
        self, mailbox: str, mark: Watermark, *, fence: Lease | None = None
    ) -> bool:
        """Stores the watermark; with a fence, only while that lease is still held (else False)."""

    # Processed message ids (dedupe after a crash) and per-message attempts.
    async def mark_processed(self, key: str, ttl: float) -> bool:
        """Remembers key for ttl seconds; False if it was already there."""

    async def is_processed(self, key: str) -> bool:
        """Whether key was marked processed and has not expired."""

    async def any_processed(self, keys: Sequence[str]) -> bool:
        """Whether any of the keys is marked processed (one round trip)."""

    async def record_outcome(
        self, keys: Sequence[str], ttl: float, record: DeliveryRecord | None
    ) -> None:
        """Marks every key processed and appends the record, atomically in one round trip."""

    async def incr_attempts(self, key: str, ttl: float) -> int:
        """Counts one more attempt at key and returns the count."""

    async def clear_attempts(self, key: str) -> None:
        """Forgets the attempt count of key."""

    # Webhook delivery log.
    async def append_delivery(self, record: DeliveryRecord) -> None:
        """Appends one outcome; records older than the retention are dropped."""

    async def delivery_window(self, seconds: float, now: float | None = None) -> DeliveryWindow:
        """Counts by outcome of the records in the last `seconds`, and the newest record."""

    async def recent_deliveries(self, limit: int) -> list[DeliveryRecord]:
        """The newest records, newest first."""

    async def search_deliveries(self, query: DeliveryQuery) -> DeliveryPage:
        """Records matching every filter of the query, newest first, at most query.limit.

        Raises ValueError for a cursor this store did not hand out.
        """

    async def delivery_log_size(self) -> DeliveryLogSize:
        """How many records the log holds and the time of the oldest."""

    # Dead letters (kept for re-drive; bounded by age and count).
    async def record_dead_letter(
        self, keys: Sequence[str], ttl: float, record: DeliveryRecord, letter: DeadLetter
    ) -> None:
        """Marks the keys processed, appends the record and keeps the dead letter, atomically.

        A dead letter already kept under the same email id is replaced; its re-drive count
        stays, and a pending re-drive request is settled by this outcome.
        """

    async def dead_letter(self, email_id: str) -> DeadLetter | None:
        """The dead letter kept under that email id, whatever its status, or None."""

    async def dead_letters(
        self,
        *,
        mailbox: str | None = None,
        statuses: Sequence[DeadLetterStatus] = (),
        limit: int = 100,
    ) -> list[DeadLetter]:
        """Dead letters, newest first, optionally of one mailbox and some statuses only."""

    async def request_redrive(self, email_id: str, at: float) -> DeadLetter | None:
        """Asks for a re-drive with a fresh attempt budget; returns the letter as it was before.

        Only a dead_lettered letter becomes redrive_requested (and its attempt count is
        cleared); any other status is left as it is, so asking twice is asking once. None when
        no dead letter has that email id.
        """

    async def pending_redrives(self, mailbox: str, limit: int) -> list[DeadLetter]:
        """The mailbox's letters in redrive_requested, oldest request first."""

    async def finish_redrive(
        self, email_id: str, status: DeadLetterStatus, at: float, note: str
    ) -> bool:
        """Settles a requested re-drive with its outcome; False when none was pending."""

    # Small key-value (alert state and the like), JSON-serialisable values.
    async def kv_get(self, key: str) -> Any | None:
        """The value stored under key, or None."""

    async def kv_set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Stores a JSON-serialisable value, optionally expiring."""

    async def kv_delete(self, key: str) -> None:
        """Removes key."""

    # Heartbeats (liveness of each replica's background tasks).
    async def heartbeat(self, name: str, at: float, info: dict[str, Any] | None = None) -> None:
        """Records that the named task was alive at `at`."""

    async def heartbeats(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """The last heartbeat of every task whose name starts with prefix."""
