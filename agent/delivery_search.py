"""One reading of a delivery search and one shape of its entries, for the API and the CLI alike."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agent.store.base import (
    DELIVERY_OUTCOMES,
    LINK_STATUSES,
    DeliveryOutcome,
    DeliveryQuery,
    DeliveryRecord,
    LinkStatus,
)
from agent.telemetry.masking import Masker
from agent.timestamps import iso

LIMIT_DEFAULT = 50
LIMIT_MAX = 500
# A search string longer than any header the log keeps matches nothing; refuse it early.
Q_MAX = 500
CURSOR_MAX = 200
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_query(values: Mapping[str, str]) -> DeliveryQuery:
    """The query from API parameters (or CLI options of the same names).

    Raises ValueError naming the parameter and what was expected.
    """
    limit = _limit(values.get("limit", ""))
    outcome = values.get("outcome") or None
    if outcome is not None and outcome not in DELIVERY_OUTCOMES:
        raise ValueError(f"outcome: expected one of {', '.join(DELIVERY_OUTCOMES)}")
    status = values.get("status") or None
    if status is not None and status not in LINK_STATUSES:
        raise ValueError(f"status: expected one of {', '.join(LINK_STATUSES)}")
    q = values.get("q", "").strip()
    if len(q) > Q_MAX:
        raise ValueError(f"q: expected at most {Q_MAX} characters")
    cursor = values.get("cursor") or None
    if cursor is not None and len(cursor) > CURSOR_MAX:
        raise ValueError("cursor: expected the next_cursor of an earlier page")
    return DeliveryQuery(
        mailbox=values.get("mailbox") or None,
        outcome=_outcome(outcome),
        status=_status(status),
        since=_time("since", values.get("since", "")),
        until=_time("until", values.get("until", "")),
        q=q,
        limit=limit,
        cursor=cursor,
    )


def entry(record: DeliveryRecord, masker: Masker, jaeger_ui_url: str = "") -> dict[str, Any]:
    """One API entry (and one --json line): every field of the record, masked once more."""
    links = [
        {
            "provider": link.provider,
            "url": link.url,
            "status": link.status,
            "r2_key": link.key,
            "size": link.size,
            "error": link.error or None,
            "files": [
                {"r2_key": f.key, "size": f.size, "filename": f.filename} for f in link.files
            ],
        }
        for link in record.links
    ]
    lag = record.lag
    body: dict[str, Any] = {
        "email_id": record.email_id,
        "message_id": record.message_id,
        "mailbox": record.mailbox,
        "sender": record.sender,
        "subject": record.subject,
        "received_at": iso(record.received_at),
        "recorded_at": iso(record.at),
        "delivered_at": iso(record.at) if record.outcome == "delivered" else None,
        "lag_seconds": None if lag is None else round(lag, 3),
        "outcome": record.outcome,
        "reason": record.error or None,
        "attempts": record.attempts,
        "status_code": record.status_code,
        "links": links,
        "trace_id": record.trace_id or None,
        "trace_url": trace_url(jaeger_ui_url, record.trace_id),
    }
    masked: dict[str, Any] = masker.mask_value(body)
    return masked


def trace_url(jaeger_ui_url: str, trace_id: str) -> str | None:
    """JAEGER_UI_URL as the dashboard reads it: a base (+ /trace/<id>) or a {trace_id} template."""
    if not jaeger_ui_url or not _TRACE_ID.match(trace_id):
        return None
    if not re.match(r"^https?://", jaeger_ui_url, re.IGNORECASE):
        return None
    if "{trace_id}" in jaeger_ui_url:
        return jaeger_ui_url.replace("{trace_id}", trace_id)
    return f"{jaeger_ui_url.rstrip('/')}/trace/{trace_id}"


def _limit(text: str) -> int:
    if not text:
        return LIMIT_DEFAULT
    try:
        limit = int(text)
    except ValueError:
        raise ValueError(f"limit: expected an integer from 1 to {LIMIT_MAX}") from None
    if not 1 <= limit <= LIMIT_MAX:
        raise ValueError(f"limit: expected an integer from 1 to {LIMIT_MAX}")
    return limit


def _time(name: str, text: str) -> float | None:
    """ISO 8601 (a date, or a time; UTC when no offset is given) or Unix seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{name}: expected an ISO 8601 time (2026-12-01 or 2026-12-01T09:30:00Z) "
                "or Unix seconds"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number of Unix seconds")
    return value


def _outcome(value: str | None) -> DeliveryOutcome | None:
    return next((known for known in DELIVERY_OUTCOMES if known == value), None)


def _status(value: str | None) -> LinkStatus | None:
    return next((known for known in LINK_STATUSES if known == value), None)
