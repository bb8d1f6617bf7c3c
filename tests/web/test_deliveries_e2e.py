"""Deliveries end to end: real Dovecot, receiver, Worker under Miniflare and Jaeger, then the API
and the dashboard's Deliveries view in Chromium find each mail, its files and its trace."""

from __future__ import annotations

import json
import secrets
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.browser import BrowserPage
from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.fileserver import FileServer, sha256_of
from tests.fixtures.miniflare import R2Worker
from tests.fixtures.receiver import Receiver
from tests.pipeline.hostile import make_message
from tests.support.sidecar import ROOT, SidecarProcess

pytestmark = pytest.mark.timeout(240)

ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "deliveries-" + secrets.token_hex(10)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Start = Callable[..., SidecarProcess]
OpenPage = Callable[..., BrowserPage]
# One mail at a time, so the receiver's programmed answers meet the mails in UID order.
_CONFIG = """\
[imap]
concurrency = 1
[links]
timeout_default = "60s"
[r2]
max_attempts = 1
[health]
interval = "500ms"
"""
_ORIGINAL_FROM = b"From: Alice Example <alice@example.com>"
_SET_HIDDEN = """(hidden) => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


@dataclass(frozen=True)
class Mail:
    """One mail of the mix and what the log must say of it."""

    sender: str
    subject: str
    message_id: str
    links: list[str]
    outcome: str
    statuses: list[str]


@dataclass
class Mix:
    """The sidecar after the mix was delivered, and the mails by role."""

    sidecar: SidecarProcess
    mails: dict[str, Mail]
    tag: str


def _mix(file_server: FileServer, tag: str) -> dict[str, Mail]:
    def mail(role: str, name: str, subject: str, links: list[str], outcome: str,
             statuses: list[str]) -> Mail:  # fmt: skip
        sender = f"{name} <{role}.{tag}@customer.example>"
        return Mail(sender, f"{subject} {tag}", f"<{role}-{tag}@e2e>", links, outcome, statuses)

    ok = [file_server.url("/bytes/1024"), file_server.url("/bytes/2048")]
    return {
        # Answered in this order: 200, 400, 200, 200.
        "delivered": mail(
            "delivered",
            "Dana Files",
            "Tuesday delivery",
            ok,
            "delivered",
            ["transferred", "transferred"],
        ),
        "refused": mail(
            "refused",
            "Rex Refused",
            "Refused parcel",
            [file_server.url("/bytes/512")],
            "dead_lettered",
            ["transferred"],
        ),
        "broken": mail(
            "broken",
            "Fay Failing",
            "Broken share",
            [file_server.url("/status/500")],
            "delivered",
            ["failed"],
        ),
        "plain": mail("plain", "Pat Plain", "Just saying hello", [], "delivered", []),
    }


def _deliver_mix(
    start: Start,
    dovecot: Dovecot,
    app: Receiver,
    worker: R2Worker,
    file_server: FileServer,
    stack: TelemetryStack,
) -> Mix:
    tag = uuid.uuid4().hex[:8]
    mails = _mix(file_server, tag)
    app.answers = [200, 400, 200, 200]
    app.default = 400  # the app stays broken for the refused mail until the test fixes it
    for mail in mails.values():
        raw = make_message(subject=mail.subject, links=mail.links, message_id=mail.message_id)
        dovecot.append("alice", raw.replace(_ORIGINAL_FROM, f"From: {mail.sender}".encode()))
    env = {
        **dovecot.env("alice"),
        "WEBHOOK_URL": app.url + "/hook",
        "LINK_ALLOWED_HOSTS": file_server.origin,
        "R2_FETCH_ENDPOINT": worker.url,
        "R2_FETCH_TOKEN": worker.token,
        "SIDECAR_API_TOKEN": TOKEN,
        "SIDECAR_DASHBOARD_POLL_INTERVAL": "1",
        "JAEGER_UI_URL": stack.jaeger_query_url + "/api/traces/{trace_id}",
        "OTEL_SERVICE_NAME": f"deliveries-{tag}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_http_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRICS_EXPORTER": "none",
    }
    sidecar = start(env=env, config=_CONFIG)
    _until(lambda: len(app.requests) >= 4, 120, "four webhooks")
    mix = Mix(sidecar, mails, tag)
    _until(lambda: len(_search(mix, q=tag)) == 4, 20, "four entries in the delivery log")
    return mix


def _until(ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {seconds}s")
        time.sleep(0.2)


def _search(mix: Mix, **params: str) -> list[dict[str, Any]]:
    status, body = mix.sidecar.get_json("/api/deliveries?" + urllib.parse.urlencode(params), AUTH)
    assert status == 200, body
    return list(body["deliveries"])


def _keyed(app: Receiver, key: str) -> list[Any]:
    return [r for r in app.requests if r.headers.get("Idempotency-Key") == key]


def _jaeger_trace(stack: TelemetryStack, trace_id: str) -> dict[str, Any]:
    """GET /api/traces/<id> once Jaeger holds the mail's email.process span."""
    deadline = time.monotonic() + 30
    while True:
        try:
            url = f"{stack.jaeger_query_url}/api/traces/{trace_id}"
            with urllib.request.urlopen(url, timeout=5) as response:
                data = json.loads(response.read())
            (trace,) = data["data"]
            if any(s["operationName"] == "email.process" for s in trace["spans"]):
                return dict(trace)
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"trace {trace_id} is not in Jaeger")
        time.sleep(0.3)


def test_each_mail_is_found_by_sender_subject_and_message_id_with_its_files_and_trace(
    sidecar_process: Start,
    dovecot: Dovecot,
    threaded_receiver: Receiver,
    r2_worker: R2Worker,
    file_server: FileServer,
    telemetry_stack: TelemetryStack,
) -> None:
    app = threaded_receiver
    mix = _deliver_mix(sidecar_process, dovecot, app, r2_worker, file_server, telemetry_stack)
    for role, mail in mix.mails.items():
        local = mail.sender.split("<")[1].split("@")[0]
        by_sender = _search(mix, q=local.upper())
        by_subject = _search(mix, q=mail.subject.split()[0].lower() + " " + mail.subject.split()[1])
        by_message_id = _search(mix, q=mail.message_id)
        assert [e["message_id"] for e in by_sender] == [mail.message_id], role
        assert [e["message_id"] for e in by_subject] == [mail.message_id], role
        (entry,) = by_message_id
        assert entry == by_sender[0] == by_subject[0]
        assert entry["outcome"] == mail.outcome, role
        assert [link["status"] for link in entry["links"]] == mail.statuses, role
        assert entry["sender"] == mail.sender
        (request,) = _keyed(app, entry["email_id"])  # the email id is the Idempotency-Key
        assert request.json["message_id"] == mail.message_id
        assert entry["trace_id"] == request.headers["traceparent"].split("-")[1], role
        assert entry["received_at"] is not None
        assert entry["lag_seconds"] is not None

        trace = _jaeger_trace(telemetry_stack, entry["trace_id"])
        (process,) = [s for s in trace["spans"] if s["operationName"] == "email.process"]
        tags = {t["key"]: t["value"] for t in process["tags"]}
        assert tags["email.id"] == entry["email_id"], role

    delivered = _search(mix, q=mix.mails["delivered"].message_id)[0]
    files = [f for link in delivered["links"] for f in link["files"]]
    assert sorted(f["size"] for f in files) == [1024, 2048]
    for file in files:
        assert r2_worker.object_sha256(file["r2_key"]) == sha256_of(file["size"])
        assert file["r2_key"].split("/")[3] == delivered["email_id"]
    assert delivered["status_code"] == 200

    refused = _search(mix, q=mix.mails["refused"].message_id)[0]
    assert (refused["status_code"], refused["reason"]) == (400, "HTTP 400: permanent failure")
    (key,) = [f["r2_key"] for f in refused["links"][0]["files"]]
    assert r2_worker.object_sha256(key) == sha256_of(512)

    broken = _search(mix, q=mix.mails["broken"].message_id)[0]
    assert broken["links"][0]["error"]
    assert broken["links"][0]["files"] == []
    assert broken["links"][0]["r2_key"] is None

    assert [e["message_id"] for e in _search(mix, q=mix.tag, status="failed")] == [
        mix.mails["broken"].message_id
    ]
    assert [e["message_id"] for e in _search(mix, q=mix.tag, outcome="dead_lettered")] == [
        mix.mails["refused"].message_id
    ]
    _status, health = mix.sidecar.get_json("/health")
    assert health["metrics"]["delivery_log"]["records"] >= 4


def test_the_deliveries_view_finds_a_mail_opens_its_links_and_trace_and_re_drives_it_once(
    sidecar_process: Start,
    dovecot: Dovecot,
    threaded_receiver: Receiver,
    r2_worker: R2Worker,
    file_server: FileServer,
    telemetry_stack: TelemetryStack,
    browser_page: OpenPage,
) -> None:
    app = threaded_receiver
    mix = _deliver_mix(sidecar_process, dovecot, app, r2_worker, file_server, telemetry_stack)
    opened = browser_page()
    page = opened.page
    page.goto(f"{mix.sidecar.url}/#token={TOKEN}")
    page.wait_for_selector("#connection[data-state='connected']", timeout=15_000)
    page.wait_for_selector("#deliveries tbody tr", timeout=15_000)

    # Search a delivered mail's subject: one row; its details list each link and file.
    page.fill("#delivery-search", mix.mails["delivered"].subject)
    page.wait_for_function("() => document.querySelectorAll('#deliveries tbody tr').length === 1")
    row = page.query_selector("#deliveries tbody tr")
    assert row is not None
    assert row.get_attribute("data-outcome") == "delivered"
    assert "2 transferred" in (row.text_content() or "")
    row.click()
    page.wait_for_selector("#delivery-dialog[open]")
    statuses = page.eval_on_selector_all(
        "#delivery-links > li", "items => items.map(i => i.dataset.status)"
    )
    assert statuses == ["transferred", "transferred"]
    assert len(page.query_selector_all("#delivery-links .files li")) == 2
    assert page.is_hidden("#delivery-redrive")
    page.click("#delivery-close")

    # The refused mail: its reason, its trace link followed to Jaeger, then the re-drive.
    page.fill("#delivery-search", mix.mails["refused"].subject)
    page.wait_for_function(
        "() => { const rows = document.querySelectorAll('#deliveries tbody tr');"
        " return rows.length === 1 && rows[0].dataset.outcome === 'dead_lettered'; }"
    )
    key = page.get_attribute("#deliveries tbody tr", "data-email-id") or ""
    page.fill("#delivery-search", mix.tag)  # the whole mix, for the picture of the view
    page.wait_for_function("() => document.querySelectorAll('#deliveries tbody tr').length === 4")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#deliveries-panel").screenshot(path=str(ARTIFACTS / "dashboard-deliveries.png"))
    page.fill("#delivery-search", mix.mails["refused"].subject)
    page.wait_for_function("() => document.querySelectorAll('#deliveries tbody tr').length === 1")
    page.click("#deliveries tbody tr")
    page.wait_for_selector("#delivery-dialog[open]")
    assert "HTTP 400: permanent failure" in (page.text_content("#delivery-facts") or "")
    assert page.eval_on_selector_all(
        "#delivery-links > li", "items => items.map(i => i.dataset.status)"
    ) == ["transferred"]
    page.wait_for_selector("#delivery-redrive:not([hidden])")
    (request,) = _keyed(app, key)
    trace_id = request.headers["traceparent"].split("-")[1]
    href = page.get_attribute("#delivery-trace", "href") or ""
    assert href == f"{telemetry_stack.jaeger_query_url}/api/traces/{trace_id}"
    _jaeger_trace(telemetry_stack, trace_id)  # Jaeger holds it before the link is followed
    with page.context.expect_page() as new_tab:
        page.click("#delivery-trace")
    jaeger = new_tab.value
    jaeger.wait_for_load_state()
    followed = json.loads(jaeger.evaluate("() => document.body.innerText"))
    (trace,) = followed["data"]
    assert trace["traceID"] == trace_id
    assert "email.process" in {s["operationName"] for s in trace["spans"]}
    jaeger.close()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-delivery-details.png"))

    app.default = 200  # the app is fixed
    page.click("#delivery-redrive")
    page.wait_for_selector("#redrive-dialog[open]")
    page.click("#redrive-confirm")
    page.wait_for_selector("#redrive-dialog", state="hidden")
    answer = page.wait_for_selector("#deliveries-message:not([hidden])")
    assert answer is not None
    assert "re-drive requested" in (answer.text_content() or "")
    _until(lambda: len(_keyed(app, key)) >= 2, 30, "the re-driven webhook")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#deliveries tbody tr')]"
        ".some(r => r.dataset.outcome === 'delivered')",
        timeout=15_000,
    )
    time.sleep(3)  # several poll cycles: a second delivery would arrive now
    refused, redriven = _keyed(app, key)
    assert (refused.json["email_id"], redriven.json["email_id"]) == (key, key)
    assert [e["outcome"] for e in _search(mix, q=mix.mails["refused"].message_id)] == [
        "delivered",
        "dead_lettered",
    ]

    # Polling sleeps while the page is hidden.
    page.evaluate(_SET_HIDDEN, True)
    time.sleep(0.5)
    before = sum("/api/deliveries" in url for url in opened.requests)
    time.sleep(3)
    assert sum("/api/deliveries" in url for url in opened.requests) == before
    assert TOKEN not in page.content()
    assert opened.console_errors == []


def test_the_deliveries_view_is_usable_at_phone_width(
    sidecar_process: Start, dovecot: Dovecot, threaded_receiver: Receiver, browser_page: OpenPage
) -> None:
    tag = uuid.uuid4().hex[:8]
    subject = f"A rather long subject line that must wrap on a phone {tag}"
    dovecot.append("alice", make_message(subject=subject, message_id=f"<phone-{tag}@e2e>"))
    sidecar = sidecar_process(
        env={
            **dovecot.env("alice"),
            "WEBHOOK_URL": threaded_receiver.url + "/hook",
            "SIDECAR_API_TOKEN": TOKEN,
            "SIDECAR_DASHBOARD_POLL_INTERVAL": "1",
            "OTEL_SDK_DISABLED": "true",
        }
    )
    opened = browser_page(width=390, height=844)
    page = opened.page
    page.goto(f"{sidecar.url}/#token={TOKEN}")
    page.wait_for_selector("#deliveries tbody tr", timeout=30_000)
    page.fill("#delivery-search", tag)
    page.wait_for_function("() => document.querySelectorAll('#deliveries tbody tr').length === 1")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    right = page.eval_on_selector("#deliveries", "t => t.getBoundingClientRect().right")
    assert right <= 390
    page.click("#deliveries tbody tr")
    page.wait_for_selector("#delivery-dialog[open]")
    box = page.eval_on_selector(
        "#delivery-dialog",
        "d => { const r = d.getBoundingClientRect(); return [r.left, r.right]; }",
    )
    assert box[0] >= 0
    assert box[1] <= 390
    assert subject in (page.text_content("#delivery-title") or "")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-deliveries-phone.png"))
    assert opened.console_errors == []
