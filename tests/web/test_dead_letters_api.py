"""/api/dead-letters and its re-drive action on a real app and store: idempotent and guarded."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.config import settings_from_mapping
from agent.runtime import Sidecar
from agent.store.base import DeadLetter, DeliveryRecord
from agent.telemetry.logs import configure_logging
from agent.web.app import create_app
from tests.support.telemetry import telemetry_for_tests

SECRET = "wh-secret-91be77d0"
TOKEN = "api-token-c4f1e2a8"
JSON = {"Content-Type": "application/json"}


@dataclass
class Running:
    """One app under test and its sidecar (whose store the test fills)."""

    sidecar: Sidecar
    client: TestClient[Any, Any]

    async def dead(self, email_id: str, at: float, mailbox: str = "alice", **extra: Any) -> None:
        fields: dict[str, Any] = {"reason": "HTTP 400: permanent failure", **extra}
        letter = DeadLetter(email_id, mailbox, 7, 3, error_type="webhook_rejected", at=at, **fields)
        record = DeliveryRecord(at, "dead_lettered", mailbox, email_id)
        await self.sidecar.store.record_dead_letter([email_id], 60, record, letter)

    async def redrive(self, email_id: str, **headers: str) -> tuple[int, dict[str, Any]]:
        response = await self.client.post(
            f"/api/dead-letters/{email_id}/redrive", json={}, headers=headers
        )
        return response.status, await response.json()


Factory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[Running] = []

    async def factory(**env: str) -> Running:
        settings = settings_from_mapping(
            {"mailboxes": [{"name": "alice", "host": "imap.invalid", "username": "alice"}]},
            env={
                "SIDECAR_DATA_DIR": str(tmp_path / f"data{len(made)}"),
                "ENABLE_BACKGROUND_TASKS": "false",
                "OTEL_METRICS_EXPORTER": "none",
                "WEBHOOK_SECRET": SECRET,
                **env,
            },
        )
        telemetry, _spans, _reader, _logs = telemetry_for_tests(settings)
        configure_logging(telemetry, stream=io.StringIO())
        sidecar = Sidecar(settings, telemetry)
        client = TestClient(TestServer(create_app(sidecar)))
        await client.start_server()
        await sidecar.start()
        running = Running(sidecar, client)
        made.append(running)
        return running

    yield factory
    for running in made:
        await running.sidecar.stop(deadline=time.monotonic() + 2)
        await running.client.close()
    configure_logging(None, stream=io.StringIO())


def _id(n: int) -> str:
    return f"{n:032x}"


async def test_dead_letters_are_listed_newest_first_filtered_and_masked(make_app: Factory) -> None:
    app = await make_app()
    now = time.time()
    await app.dead(_id(1), now - 30, reason=f"HTTP 401: signature {SECRET} refused")
    await app.dead(_id(2), now - 10, mailbox="bob")
    await app.dead(_id(3), now - 20)
    await app.sidecar.store.request_redrive(_id(3), now)

    response = await app.client.get("/api/dead-letters")
    body = await response.text()
    assert response.status == 200
    assert SECRET not in body
    letters = (await response.json())["dead_letters"]
    assert [d["email_id"] for d in letters] == [_id(2), _id(3), _id(1)]
    assert letters[2]["reason"] == "HTTP 401: signature *** refused"
    assert set(letters[0]) >= {"mailbox", "uidvalidity", "uid", "reason", "error_type", "at"}

    response = await app.client.get(
        "/api/dead-letters", params={"mailbox": "alice", "status": "dead_lettered", "limit": "5"}
    )
    assert [d["email_id"] for d in (await response.json())["dead_letters"]] == [_id(1)]


async def test_a_redrive_is_accepted_once_and_asking_again_changes_nothing(
    make_app: Factory,
) -> None:
    app = await make_app()
    await app.dead(_id(1), time.time() - 5)

    status, first = await app.redrive(_id(1))
    assert (status, first["result"]) == (202, "requested")
    assert first["dead_letter"]["status"] == "redrive_requested"
    status, again = await app.redrive(_id(1))
    assert (status, again["result"]) == (202, "already_requested")
    assert again["dead_letter"]["requested_at"] == first["dead_letter"]["requested_at"]
    letter = await app.sidecar.store.dead_letter(_id(1))
    assert letter is not None
    assert (letter.status, letter.redrives) == ("redrive_requested", 1)
    assert [d.email_id for d in await app.sidecar.store.pending_redrives("alice", 10)] == [_id(1)]


async def test_a_delivered_letter_is_409_and_an_unknown_id_404_and_neither_is_requested(
    make_app: Factory,
) -> None:
    app = await make_app()
    now = time.time()
    await app.dead(_id(1), now - 5)
    await app.sidecar.store.request_redrive(_id(1), now)
    await app.sidecar.store.finish_redrive(_id(1), "delivered", now + 1, "delivered")

    status, body = await app.redrive(_id(1))
    assert (status, body["result"]) == (409, "already_delivered")
    assert "already delivered" in body["error"]
    status, body = await app.redrive(_id(2))
    assert (status, body["result"], body["dead_letter"]) == (404, "not_found", None)
    assert await app.sidecar.store.pending_redrives("alice", 10) == []


async def test_a_letter_of_a_mailbox_nobody_polls_is_409(make_app: Factory) -> None:
    app = await make_app()
    await app.dead(_id(1), time.time(), mailbox="removed-box")
    status, body = await app.redrive(_id(1))
    assert (status, body["result"]) == (409, "not_polled")
    assert await app.sidecar.store.pending_redrives("removed-box", 10) == []


async def test_a_redrive_without_a_json_body_is_refused_so_no_other_page_can_send_one(
    make_app: Factory,
) -> None:
    app = await make_app()
    await app.dead(_id(1), time.time())
    for headers in (
        {},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ):
        response = await app.client.post(
            f"/api/dead-letters/{_id(1)}/redrive", data="{}", headers=headers
        )
        assert response.status == 415, headers
    letter = await app.sidecar.store.dead_letter(_id(1))
    assert letter is not None
    assert letter.status == "dead_lettered"


async def test_the_dead_letter_api_needs_the_bearer_token_when_one_is_set(
    make_app: Factory,
) -> None:
    app = await make_app(SIDECAR_API_TOKEN=TOKEN)
    await app.dead(_id(1), time.time())
    assert (await app.client.get("/api/dead-letters")).status == 401
    status, _ = await app.redrive(_id(1))
    assert status == 401
    wrong = await app.redrive(_id(1), Authorization="Bearer not-it")
    assert wrong[0] == 401
    letter = await app.sidecar.store.dead_letter(_id(1))
    assert letter is not None
    assert letter.status == "dead_lettered"
    status, body = await app.redrive(_id(1), Authorization=f"Bearer {TOKEN}")
    assert (status, body["result"]) == (202, "requested")


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/dead-letters", {"status": "lost"}, "status: expected some of"),
        ("/api/dead-letters", {"limit": "many"}, "limit: expected an integer"),
        ("/api/dead-letters", {"limit": "0"}, "limit: expected a positive integer"),
    ],
)
async def test_bad_list_filters_are_400_naming_the_parameter(
    make_app: Factory, path: str, params: dict[str, str], message: str
) -> None:
    app = await make_app()
    response = await app.client.get(path, params=params)
    assert response.status == 400
    assert message in (await response.json())["error"]


async def test_a_malformed_email_id_is_400(make_app: Factory) -> None:
    app = await make_app()
    response = await app.client.post("/api/dead-letters/not-an-id/redrive", json={}, headers=JSON)
    assert response.status == 400
    assert "32 hex characters" in (await response.json())["error"]
