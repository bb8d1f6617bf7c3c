"""/api/deliveries on a real app and store: filters, paging, bounds, masking, auth, /health."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agent.components import start_delivery_stats
from agent.config import settings_from_mapping
from agent.runtime import Sidecar
from agent.store.base import DeliveryRecord, LoggedFile, LoggedLink
from agent.telemetry.logs import configure_logging
from agent.web.app import create_app
from tests.support.telemetry import telemetry_for_tests

SECRET = "wh-secret-5d1e0c9a"
TOKEN = "api-token-77aa01bc"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Running:
    """One app under test and its sidecar (whose store the test fills)."""

    sidecar: Sidecar
    client: TestClient[Any, Any]

    async def search(self, **params: str) -> tuple[int, dict[str, Any]]:
        response = await self.client.get("/api/deliveries", params=params)
        return response.status, await response.json()


Factory = Callable[..., Awaitable[Running]]


@pytest.fixture
async def make_app(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[Running] = []

    async def factory(**env: str) -> Running:
        settings = settings_from_mapping(
            {},
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


@pytest.fixture
async def app(make_app: Factory) -> Running:
    return await make_app(JAEGER_UI_URL="https://jaeger.example/ui/trace/{trace_id}?uiFind=x")


def _delivered(at: float, n: int, **fields: Any) -> DeliveryRecord:
    values: dict[str, Any] = {
        "at": at,
        "outcome": "delivered",
        "mailbox": "alice",
        "email_id": f"{n:032x}",
        "message_id": f"<m{n}@mail.example>",
        "sender": f"Customer {n} <c{n}@example.org>",
        "subject": f"Files for order {n}",
        "status_code": 200,
        "received_at": at - 42.5,
        "trace_id": TRACE,
    }
    return DeliveryRecord(**(values | fields))


async def test_an_entry_holds_every_field_of_the_mail_and_its_trace_link(app: Running) -> None:
    now = time.time()
    link = LoggedLink(
        "wetransfer",
        "https://we.tl/t-abc",
        "transferred",
        None,
        30,
        "",
        (LoggedFile("2026/12/05/x/wetransfer-1/a.pdf", 10, "a.pdf"),
         LoggedFile("2026/12/05/x/wetransfer-1/b.pdf", 20, "b.pdf")),
    )  # fmt: skip
    await app.sidecar.store.append_delivery(_delivered(now, 1, attempts=2, links=(link,)))
    status, body = await app.search(q="order 1")
    assert status == 200
    (entry,) = body["deliveries"]
    assert entry["email_id"] == f"{1:032x}"
    assert (entry["message_id"], entry["mailbox"]) == ("<m1@mail.example>", "alice")
    assert (entry["sender"], entry["subject"]) == (
        "Customer 1 <c1@example.org>",
        "Files for order 1",
    )
    assert entry["received_at"].endswith("Z")
    assert entry["delivered_at"] == entry["recorded_at"]
    assert entry["lag_seconds"] == 42.5
    assert (entry["outcome"], entry["reason"], entry["attempts"], entry["status_code"]) == (
        "delivered", None, 2, 200)  # fmt: skip
    assert entry["links"] == [{
        "provider": "wetransfer", "url": "https://we.tl/t-abc", "status": "transferred",
        "r2_key": None, "size": 30, "error": None,
        "files": [{"r2_key": "2026/12/05/x/wetransfer-1/a.pdf", "size": 10, "filename": "a.pdf"},
                  {"r2_key": "2026/12/05/x/wetransfer-1/b.pdf", "size": 20, "filename": "b.pdf"}],
    }]  # fmt: skip
    assert entry["trace_id"] == TRACE
    assert entry["trace_url"] == f"https://jaeger.example/ui/trace/{TRACE}?uiFind=x"
    assert body["next_cursor"] is None


async def test_filters_narrow_the_search(app: Running) -> None:
    now = time.time()
    store = app.sidecar.store
    await store.append_delivery(
        _delivered(now - 3, 1, links=(LoggedLink("dropbox", "u", "failed"),))
    )
    await store.append_delivery(_delivered(now - 2, 2, outcome="dead_lettered", status_code=400))
    await store.append_delivery(_delivered(now - 1, 3, mailbox="bob"))

    async def ids(**params: str) -> list[str]:
        status, body = await app.search(**params)
        assert status == 200, body
        return [e["message_id"] for e in body["deliveries"]]

    assert await ids() == ["<m3@mail.example>", "<m2@mail.example>", "<m1@mail.example>"]
    assert await ids(mailbox="bob") == ["<m3@mail.example>"]
    assert await ids(outcome="dead_lettered") == ["<m2@mail.example>"]
    assert await ids(status="failed") == ["<m1@mail.example>"]
    assert await ids(q="C2@EXAMPLE") == ["<m2@mail.example>"]
    assert await ids(since=str(now - 2.5), until=str(now - 1.5)) == ["<m2@mail.example>"]
    iso_now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60))
    assert len(await ids(until=iso_now)) == 3


async def test_pages_follow_the_cursor_newest_first(app: Running) -> None:
    now = time.time()
    for n in range(5):
        await app.sidecar.store.append_delivery(_delivered(now - 10 + n, n))
    seen: list[str] = []
    params = {"limit": "2"}
    while True:
        status, body = await app.search(**params)
        assert status == 200
        seen += [e["message_id"] for e in body["deliveries"]]
        if body["next_cursor"] is None:
            break
        params = {"limit": "2", "cursor": body["next_cursor"]}
    assert seen == [f"<m{n}@mail.example>" for n in (4, 3, 2, 1, 0)]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "501"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"outcome": "lost"}, "outcome"),
        ({"status": "stolen"}, "status"),
        ({"since": "last tuesday"}, "since"),
        ({"cursor": "garbage"}, "cursor"),
        ({"q": "x" * 501}, "q"),
    ],
)
async def test_bad_parameters_are_refused_naming_the_parameter(
    app: Running, params: dict[str, str], named: str
) -> None:
    status, body = await app.search(**params)
    assert status == 400
    assert body["error"].startswith(f"{named}:")


async def test_secrets_and_signed_parameters_are_masked_in_entries(app: Running) -> None:
    # A record written before masking existed, or a secret configured since: masked on the way out.
    link = LoggedLink("generic", f"https://files.example/get?id=1&X-Amz-Signature=abc123def456&s={SECRET}",
                      "failed", error=f"worker said {SECRET}")  # fmt: skip
    await app.sidecar.store.append_delivery(
        _delivered(time.time(), 1, outcome="failed", error=f"HTTP 500 {SECRET}", links=(link,))
    )
    response = await app.client.get("/api/deliveries")
    text = await response.text()
    assert SECRET not in text
    assert "abc123def456" not in text
    assert "X-Amz-Signature=***" in text


async def test_the_api_needs_the_token_when_one_is_set(make_app: Factory) -> None:
    app = await make_app(SIDECAR_API_TOKEN=TOKEN)
    refused = await app.client.get("/api/deliveries")
    assert refused.status == 401
    allowed = await app.client.get("/api/deliveries", headers={"Authorization": f"Bearer {TOKEN}"})
    assert allowed.status == 200


async def test_health_says_how_much_the_delivery_log_holds(app: Running) -> None:
    for n in range(3):
        await app.sidecar.store.append_delivery(_delivered(time.time() - 100 + n, n))
    await start_delivery_stats(app.sidecar)  # as `run` starts it: reads the store at once
    response = await app.client.get("/health")
    body = await response.json()
    assert body["metrics"]["delivery_log"]["records"] == 3
    assert body["metrics"]["delivery_log"]["oldest"].endswith("Z")
