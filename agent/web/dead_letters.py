"""The dead-letter API: list what could not be delivered, and ask for a re-drive of one mail."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args

from aiohttp import web

from agent.pipeline.redrive import RedriveAnswer, request_redrive
from agent.store.base import DeadLetter, DeadLetterStatus, StoreError
from agent.telemetry.logs import get_logger

if TYPE_CHECKING:
    from agent.runtime import Sidecar

_LIMIT_DEFAULT = 50
_LIMIT_MAX = 500
_STATUSES: frozenset[str] = frozenset(get_args(DeadLetterStatus))
_EMAIL_ID = re.compile(r"^[0-9a-f]{32}$")
# 202: a re-drive is pending; 409: there is nothing to re-drive; 404: no such dead letter.
_STATUS_CODES: dict[RedriveAnswer, int] = {
    "requested": 202,
    "already_requested": 202,
    "already_delivered": 409,
    "gone": 409,
    "not_polled": 409,
    "not_found": 404,
}


def setup_dead_letter_routes(app: web.Application, sidecar: Sidecar) -> None:
    """Adds GET /api/dead-letters and POST /api/dead-letters/{email_id}/redrive."""
    masker = sidecar.telemetry.masker
    log = get_logger("imap")

    async def list_letters(request: web.Request) -> web.Response:
        try:
            mailbox, statuses, limit = _filters(request.query)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            letters = await sidecar.store.dead_letters(
                mailbox=mailbox, statuses=statuses, limit=limit
            )
        except StoreError as exc:
            return _unavailable(exc, masker.mask)
        body = {"dead_letters": [_view(letter) for letter in letters]}
        return web.json_response(masker.mask_value(body), dumps=_dumps)

    async def redrive(request: web.Request) -> web.Response:
        # A JSON body cannot be sent cross-site without a CORS preflight, which is never
        # granted: another page in the operator's browser cannot make this request.
        if request.content_type != "application/json":
            return web.json_response(
                {"error": "send Content-Type: application/json (a JSON object, may be empty)"},
                status=415,
            )
        email_id = request.match_info["email_id"]
        if not _EMAIL_ID.match(email_id):
            return web.json_response(
                {"error": "email id: expected the 32 hex characters of an Idempotency-Key"},
                status=400,
            )
        mailboxes = [box.name for box in sidecar.settings.mailboxes] or None
        try:
            answer = await request_redrive(sidecar.store, email_id, mailboxes=mailboxes)
        except StoreError as exc:
            return _unavailable(exc, masker.mask)
        log.info(
            "email.redrive_requested",
            email_id=email_id,
            mailbox=answer.letter.mailbox if answer.letter else None,
            result=answer.answer,
            source="api",
        )
        body: dict[str, Any] = {
            "result": answer.answer,
            "message": answer.describe(),
            "dead_letter": _view(answer.letter) if answer.letter else None,
        }
        if not answer.accepted:
            body["error"] = answer.describe()
        return web.json_response(
            masker.mask_value(body), status=_STATUS_CODES[answer.answer], dumps=_dumps
        )

    app.router.add_get("/api/dead-letters", list_letters)
    app.router.add_post("/api/dead-letters/{email_id}/redrive", redrive)


def _filters(query: Any) -> tuple[str | None, list[DeadLetterStatus], int]:
    limit_text = query.get("limit", "")
    try:
        limit = int(limit_text) if limit_text else _LIMIT_DEFAULT
    except ValueError:
        raise ValueError(f"limit: expected an integer, got {limit_text!r}") from None
    if limit < 1:
        raise ValueError("limit: expected a positive integer")
    statuses: list[DeadLetterStatus] = []
    for name in filter(None, query.get("status", "").split(",")):
        if name not in _STATUSES:
            raise ValueError(f"status: expected some of {', '.join(sorted(_STATUSES))}")
        statuses.append(name)
    return query.get("mailbox") or None, statuses, min(limit, _LIMIT_MAX)


def _view(letter: DeadLetter) -> dict[str, Any]:
    return dataclasses.asdict(letter)


def _unavailable(exc: StoreError, mask: Callable[[str], str]) -> web.Response:
    error = f"the state store is unavailable: {mask(str(exc))}"
    return web.json_response({"error": error}, status=503)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)
