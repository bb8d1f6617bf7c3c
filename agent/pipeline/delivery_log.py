"""What the delivery log keeps of a mail: its headers and links, masked and bounded; its trace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace

from agent.pipeline.parse import ParsedEmail
from agent.store.base import DeliveryOutcome, DeliveryRecord, LoggedFile, LoggedLink
from agent.telemetry.masking import Masker

# Headers are the sender's text: a record keeps this much of each.
MAX_TEXT = 500


@dataclass(frozen=True)
class MailFacts:
    """The parts of a mail the log keeps beside its outcome."""

    message_id: str = ""
    sender: str = ""
    subject: str = ""
    received_at: float | None = None
    links: tuple[LoggedLink, ...] = ()

    def record(
        self,
        *,
        at: float,
        outcome: DeliveryOutcome,
        mailbox: str,
        email_id: str,
        error: str = "",
        attempts: int = 1,
        status_code: int | None = None,
        duration: float = 0.0,
    ) -> DeliveryRecord:
        """The delivery log record of this mail's outcome, tied to the trace being recorded."""
        return DeliveryRecord(
            at=at,
            outcome=outcome,
            mailbox=mailbox,
            email_id=email_id,
            status_code=status_code,
            duration=duration,
            error=error,
            attempts=attempts,
            message_id=self.message_id,
            sender=self.sender,
            subject=self.subject,
            received_at=self.received_at,
            links=self.links,
            trace_id=current_trace_id(),
        )


def mail_facts(
    parsed: ParsedEmail, delivery_links: Sequence[Mapping[str, Any]], masker: Masker
) -> MailFacts:
    """The facts of a parsed mail and its delivery_links entries, masked as every log is."""
    return MailFacts(
        message_id=masker.mask(parsed.message_id[:MAX_TEXT]),
        sender=masker.mask(parsed.from_[:MAX_TEXT]),
        subject=masker.mask(parsed.subject[:MAX_TEXT]),
        received_at=_timestamp(parsed.date),
        links=tuple(_link(entry, masker) for entry in delivery_links),
    )


def current_trace_id() -> str:
    """The id of the trace being recorded, as Jaeger shows it; empty when there is none."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else ""


def _link(entry: Mapping[str, Any], masker: Masker) -> LoggedLink:
    files = tuple(
        LoggedFile(
            key=str(f.get("key") or ""),
            size=_int(f.get("size")),
            filename=str(f.get("filename") or "")[:MAX_TEXT],
        )
        for f in entry.get("files") or ()
    )
    return LoggedLink(
        provider=str(entry.get("provider") or ""),
        url=masker.mask_url(str(entry.get("url") or ""))[:2048],
        status=str(entry.get("status") or ""),
        key=None if entry.get("key") is None else str(entry["key"]),
        size=_int(entry.get("size")),
        error=masker.mask(str(entry.get("error") or ""))[:MAX_TEXT],
        files=files,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _timestamp(date: str) -> float | None:
    if not date:
        return None
    try:
        parsed = datetime.fromisoformat(date)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None
