"""The dashboard's Dead letters panel in Debian's Chromium, against a real sidecar and Dovecot."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.fixtures.browser import BrowserPage
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.sidecar import ROOT, SidecarProcess

ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "dash-" + secrets.token_hex(12)
Start = Callable[..., SidecarProcess]
OpenPage = Callable[..., BrowserPage]


def _env(dovecot: Dovecot, app: Receiver) -> dict[str, str]:
    return {
        **dovecot.env("alice"),
        "WEBHOOK_URL": app.url + "/hook",
        "SIDECAR_API_TOKEN": TOKEN,
        "SIDECAR_DASHBOARD_POLL_INTERVAL": "1",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }


def _keyed(app: Receiver, key: str) -> int:
    return sum(1 for r in app.requests if r.headers.get("Idempotency-Key") == key)


def _row_status(page: Any, key: str) -> str | None:
    row = page.query_selector(f"#dead-letters tr[data-email-id='{key}']")
    return None if row is None else row.get_attribute("data-status")


def test_a_dead_letter_is_re_driven_from_the_dashboard_after_confirming_and_delivered_once(
    sidecar_process: Start,
    dovecot: Dovecot,
    threaded_receiver: Receiver,
    browser_page: OpenPage,
) -> None:
    app = threaded_receiver
    app.default = 400
    sidecar = sidecar_process(env=_env(dovecot, app))
    dovecot.append("alice", make_message(message_id=f"<{uuid.uuid4().hex}@dashboard.e2e>"))
    opened = browser_page()
    page = opened.page
    page.goto(f"{sidecar.url}/#token={TOKEN}")
    page.wait_for_selector("#connection[data-state='connected']", timeout=15_000)
    row = page.wait_for_selector("#dead-letters tr[data-status='dead_lettered']", timeout=30_000)
    assert row is not None
    key = row.get_attribute("data-email-id") or ""
    assert _keyed(app, key) == 1
    assert "HTTP 400: permanent failure" in (row.text_content() or "")

    # Cancelling the confirmation asks for nothing.
    page.click(f"#dead-letters tr[data-email-id='{key}'] button.redrive")
    page.wait_for_selector("#redrive-dialog[open]")
    assert "UID 1" in (page.text_content("#redrive-what") or "")
    page.click("#redrive-cancel")
    page.wait_for_selector("#redrive-dialog", state="hidden")
    time.sleep(1.5)  # more than one poll cycle of the mailbox
    assert _row_status(page, key) == "dead_lettered"
    assert _keyed(app, key) == 1

    app.default = 200
    page.click(f"#dead-letters tr[data-email-id='{key}'] button.redrive")
    page.wait_for_selector("#redrive-dialog[open]")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-redrive-confirm.png"), full_page=True)
    page.click("#redrive-confirm")
    page.wait_for_selector("#redrive-dialog", state="hidden")
    message = page.wait_for_selector("#dead-letters-message:not([hidden])")
    assert message is not None
    assert "re-drive requested" in (message.text_content() or "")
    page.wait_for_selector(
        f"#dead-letters tr[data-email-id='{key}'][data-status='delivered']", timeout=20_000
    )
    assert page.query_selector(f"#dead-letters tr[data-email-id='{key}'] button.redrive") is None
    page.wait_for_selector("#dead-letters-message:has-text('delivered to the app')")
    page.screenshot(path=str(ARTIFACTS / "dashboard-dead-letters.png"), full_page=True)

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert _keyed(app, key) <= 2
        time.sleep(0.2)
    assert _keyed(app, key) == 2, "refused once, then delivered exactly once"
    assert TOKEN not in page.content()
    assert opened.console_errors == []


def test_the_dead_letters_panel_fits_a_phone_width(
    sidecar_process: Start,
    dovecot: Dovecot,
    threaded_receiver: Receiver,
    browser_page: OpenPage,
) -> None:
    threaded_receiver.default = 400
    sidecar = sidecar_process(env=_env(dovecot, threaded_receiver))
    dovecot.append("alice", make_message(message_id=f"<{uuid.uuid4().hex}@dashboard.e2e>"))
    opened = browser_page(width=390, height=844)
    page = opened.page
    page.goto(f"{sidecar.url}/#token={TOKEN}")
    page.wait_for_selector("#dead-letters tr[data-status='dead_lettered']", timeout=30_000)
    page.click("#dead-letters button.redrive")
    page.wait_for_selector("#redrive-dialog[open]")
    dialog = page.eval_on_selector("#redrive-dialog", "d => d.getBoundingClientRect().right")
    assert dialog <= 390
    page.click("#redrive-cancel")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    assert opened.console_errors == []
