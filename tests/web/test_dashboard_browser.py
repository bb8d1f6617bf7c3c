"""The dashboard in Debian's Chromium against a real `signal-sidecar run` process."""

from __future__ import annotations

import itertools
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.browser import BrowserPage
from tests.fixtures.collector import TelemetryStack
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.receiver import Receiver
from tests.fixtures.redis import RedisServer
from tests.support.sidecar import ROOT, SidecarProcess

POLL = 1.0
ARTIFACTS = ROOT / "test-artifacts"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
Start = Callable[..., SidecarProcess]
OpenPage = Callable[..., BrowserPage]

# Headless Chromium never hides a page or blurs its window: the test flips the state itself.
_SET_HIDDEN = """(hidden) => {
  Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
  Object.defineProperty(document, "visibilityState",
    {configurable: true, get: () => (hidden ? "hidden" : "visible")});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def _env(**extra: str) -> dict[str, str]:
    return {
        "SIDECAR_DASHBOARD_POLL_INTERVAL": str(POLL),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        **extra,
    }


def _mailbox_env(redis: RedisServer, dovecot: Dovecot) -> dict[str, str]:
    return _env(
        REDIS_URL=redis.url,
        IMAP_HOST=dovecot.host,
        IMAP_PORT=str(dovecot.port),
        IMAP_USERNAME="alice",
        IMAP_PASSWORD=dovecot.users["alice"],
        IMAP_TLS="none",
        IMAP_POLL_INTERVAL="1",
    )


def _open(open_page: OpenPage, url: str, **size: int) -> BrowserPage:
    opened = open_page(**size)
    opened.page.goto(url)
    opened.page.wait_for_selector("#connection[data-state='connected']", timeout=15_000)
    return opened


def _api_requests(sidecar: SidecarProcess) -> int:
    """API requests the sidecar served, counted from its own JSON log (not through the API);
    they are logged at debug, so the sidecar must run with SIDECAR_LOG_LEVEL=debug."""
    return sum(
        1
        for event in sidecar.log_events()
        if event.get("event") == "http.request" and str(event.get("route", "")).startswith("/api/")
    )


def _wait_for_new_request(sidecar: SidecarProcess, after: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout + 1.0:
        if _api_requests(sidecar) > after:
            return time.monotonic() - started
        time.sleep(0.02)
    return float("inf")


def _message(subject: str) -> bytes:
    return (
        f"From: sender@example.com\r\nTo: alice@example.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n\r\nHello.\r\n"
    ).encode()


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(_text(item) for item in value.values())
    if isinstance(value, list):
        return "\n".join(_text(item) for item in value)
    return "" if value is None else str(value)


def _table_rows(opened: BrowserPage) -> list[tuple[str, str, str]]:
    rows: list[list[str]] = opened.page.eval_on_selector_all(
        "#logs tbody tr",
        "rows => rows.map(r => [r.dataset.timestamp, r.dataset.logger, r.cells[3].textContent])",
    )
    return sorted((ts, logger, event) for ts, logger, event in rows)


def _eventually_equal(
    actual: Callable[[], list[tuple[str, str, str]]],
    expected: Callable[[], list[tuple[str, str, str]]],
    timeout: float = 15.0,
) -> list[tuple[str, str, str]]:
    """New events keep arriving: the table must settle on exactly the expected rows."""
    deadline = time.monotonic() + timeout
    while True:
        want, got = expected(), actual()
        if got == want or time.monotonic() > deadline:
            assert got == want
            return got
        time.sleep(0.3)


def _log_key(event: dict[str, Any]) -> tuple[str, str, str]:
    return (str(event["timestamp"]), str(event.get("logger", "")), str(event["event"]))


def test_page_renders_live_data_from_a_sidecar_with_redis_and_dovecot_without_console_errors(
    sidecar_process: Start, redis_server: RedisServer, dovecot: Dovecot, browser_page: OpenPage
) -> None:
    dovecot.append_many("alice", [_message("first"), _message("second")])
    # Checks every second, so each one has a few runs of history to show.
    config = '[health]\ninterval = "1s"\n'
    sidecar = sidecar_process(env=_mailbox_env(redis_server, dovecot), config=config)
    opened = _open(browser_page, sidecar.url)
    page = opened.page
    page.wait_for_selector("#pollers tr[data-mailbox='default'] td:nth-child(3):text('yes')")
    page.wait_for_function(
        "() => document.querySelector(\"#pollers tr[data-mailbox='default'] td:nth-child(5)\")"
        ".textContent === '2'",
        timeout=15_000,
    )
    page.wait_for_selector("#checks [data-check='redis'] .badge[data-status='ok']")
    page.wait_for_selector("#checks [data-check='imap'] .badge[data-status='ok']")
    page.wait_for_selector("#checks [data-check='redis'] .history .run[data-status='ok']")
    page.wait_for_function(
        "() => document.getElementById('value-memory').textContent.includes('MB')"
    )
    page.wait_for_selector("#logs tbody tr[data-logger='http']")
    # A few metric exports and check runs, so charts and histories have something to draw.
    time.sleep(4)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert page.text_content("#overall") in {"ok", "degraded"}
    assert opened.console_errors == []


def test_mailboxes_show_their_mode_and_the_lag_chart_its_percentiles(
    sidecar_process: Start,
    redis_server: RedisServer,
    dovecot: Dovecot,
    threaded_receiver: Receiver,
    browser_page: OpenPage,
) -> None:
    env = _mailbox_env(redis_server, dovecot) | {
        "IMAP_POLL_INTERVAL": "300",
        "WEBHOOK_URL": threaded_receiver.url + "/hook",
    }
    sidecar = sidecar_process(env=env)
    opened = _open(browser_page, sidecar.url)
    page = opened.page
    mode = "#pollers tr[data-mailbox='default'] td:nth-child(7)"
    page.wait_for_selector(f"{mode}:text('idle')", timeout=15_000)
    assert page.text_content("#value-lag") == "–"
    dovecot.append_many("alice", [_message("lag one"), _message("lag two")])
    page.wait_for_function(
        "() => document.getElementById('value-lag').textContent.startsWith('p50 ')",
        timeout=15_000,
    )
    text = page.text_content("#value-lag") or ""
    assert [part.split(" ")[0] for part in text.split(" · ")] == ["p50", "p90", "p99"]
    assert len(threaded_receiver.requests) == 2
    assert opened.console_errors == []


def test_page_fits_a_phone_width_without_sideways_scrolling(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false"))
    opened = _open(browser_page, sidecar.url, width=390, height=844)
    opened.page.wait_for_selector("#checks [data-check='redis']")
    ARTIFACTS.mkdir(exist_ok=True)
    opened.page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    width = opened.page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390
    assert opened.console_errors == []


def test_no_api_request_while_hidden_and_one_within_a_second_when_visible_again(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false", SIDECAR_LOG_LEVEL="debug"))
    opened = _open(browser_page, sidecar.url)
    opened.page.evaluate(_SET_HIDDEN, True)
    time.sleep(0.5)  # a refresh already in flight may still land
    before = _api_requests(sidecar)
    time.sleep(4 * POLL)
    assert _api_requests(sidecar) == before
    opened.page.evaluate(_SET_HIDDEN, False)
    assert _wait_for_new_request(sidecar, before, timeout=1.0) < 1.0


def test_no_api_request_while_blurred_and_one_within_a_second_on_focus(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false", SIDECAR_LOG_LEVEL="debug"))
    opened = _open(browser_page, sidecar.url)
    opened.page.evaluate("() => window.dispatchEvent(new Event('blur'))")
    time.sleep(0.5)
    before = _api_requests(sidecar)
    time.sleep(4 * POLL)
    assert _api_requests(sidecar) == before
    opened.page.evaluate("() => window.dispatchEvent(new Event('focus'))")
    assert _wait_for_new_request(sidecar, before, timeout=1.0) < 1.0


def _two_mailboxes(dovecot: Dovecot, marker: str) -> str:
    """alice polls fine; bob's wrong password makes warnings that name the marker."""
    return f"""
[[mailboxes]]
name = "alice-box"
host = "{dovecot.host}"
port = {dovecot.port}
username = "alice"
password = "{dovecot.users["alice"]}"
tls = "none"
poll_interval = "1s"

[[mailboxes]]
name = "bob-{marker}"
host = "{dovecot.host}"
port = {dovecot.port}
username = "bob"
password = "not-bobs-password"
tls = "none"
poll_interval = "2s"
"""


def test_level_filter_shows_exactly_the_events_at_or_above_the_level(
    sidecar_process: Start, redis_server: RedisServer, dovecot: Dovecot, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(
        env=_env(REDIS_URL=redis_server.url), config=_two_mailboxes(dovecot, "levels")
    )
    opened = _open(browser_page, sidecar.url)
    opened.page.select_option("#log-level", "warning")

    def expected() -> list[tuple[str, str, str]]:
        events = [
            e
            for e in sidecar.log_events()
            if LEVELS.get(str(e.get("level")), 0) >= LEVELS["warning"]
        ]
        return sorted(_log_key(e) for e in events)[-200:]

    # The wrong password produces warnings once its first cycle fails; the machine may be slow.
    deadline = time.monotonic() + 30
    while not expected() and time.monotonic() < deadline:
        time.sleep(0.3)
    rows = _eventually_equal(lambda: _table_rows(opened), expected)
    assert rows, "the wrong password should have produced warnings"
    levels = opened.page.eval_on_selector_all(
        "#logs tbody tr", "rows => rows.map(r => r.dataset.level)"
    )
    assert set(levels) <= {"warning", "error", "critical"}
    assert opened.console_errors == []


def test_search_shows_exactly_the_events_containing_the_text(
    sidecar_process: Start, redis_server: RedisServer, dovecot: Dovecot, browser_page: OpenPage
) -> None:
    marker = f"Needle{secrets.token_hex(3)}"
    sidecar = sidecar_process(
        env=_env(REDIS_URL=redis_server.url), config=_two_mailboxes(dovecot, marker.lower())
    )
    opened = _open(browser_page, sidecar.url)
    opened.page.fill("#log-search", marker.upper())

    def expected() -> list[tuple[str, str, str]]:
        events = [e for e in sidecar.log_events() if marker.lower() in _text(e).lower()]
        return sorted(_log_key(e) for e in events)[-200:]

    rows = _eventually_equal(lambda: _table_rows(opened), expected)
    assert rows, "events naming the mailbox should match"
    assert len(rows) < len(sidecar.log_events())


@pytest.mark.parametrize(
    ("jaeger_ui_url", "expected"),
    [
        ("http://jaeger.example:16686/", "http://jaeger.example:16686/trace/{}"),
        ("http://127.0.0.1:16686/api/traces/{trace_id}", "http://127.0.0.1:16686/api/traces/{}"),
    ],
)
def test_trace_id_in_a_log_row_links_to_jaeger(
    sidecar_process: Start, browser_page: OpenPage, jaeger_ui_url: str, expected: str
) -> None:
    sidecar = sidecar_process(
        env=_env(ENABLE_BACKGROUND_TASKS="false", JAEGER_UI_URL=jaeger_ui_url)
    )
    opened = _open(browser_page, sidecar.url)
    link = opened.page.wait_for_selector("#logs tbody tr a.trace")
    assert link is not None
    href = link.get_attribute("href") or ""
    trace_id = link.get_attribute("title") or ""
    assert len(trace_id) == 32
    assert href == expected.format(trace_id)


TOKEN = "dash-" + secrets.token_hex(12)


def test_page_asks_for_the_token_and_the_token_appears_nowhere(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false", SIDECAR_API_TOKEN=TOKEN))
    opened = browser_page()
    page = opened.page
    page.goto(sidecar.url)
    page.wait_for_selector("#auth-form", state="visible")
    assert page.is_hidden("#content")
    page.fill("#token-input", TOKEN)
    page.click("#auth-form button[type=submit]")
    page.wait_for_selector("#connection[data-state='connected']")
    page.wait_for_selector("#checks [data-check='redis']")
    page.wait_for_selector("#logs tbody tr")
    assert TOKEN not in page.content()
    assert TOKEN not in page.url
    _status, logs = sidecar.get("/api/logs?limit=1000", {"Authorization": f"Bearer {TOKEN}"})
    assert "http.request" in logs
    assert TOKEN not in logs
    assert TOKEN not in sidecar.log_text()
    assert opened.console_errors == [] or all("401" in e for e in opened.console_errors)


def test_token_in_the_fragment_is_used_then_removed_from_the_address_bar(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false", SIDECAR_API_TOKEN=TOKEN))
    opened = browser_page()
    page = opened.page
    page.goto(f"{sidecar.url}/#token={TOKEN}")
    page.wait_for_selector("#connection[data-state='connected']")
    page.wait_for_selector("#checks [data-check='redis']")
    assert page.is_hidden("#auth")
    assert TOKEN not in page.url
    assert TOKEN not in page.evaluate("() => location.href + document.documentElement.outerHTML")
    assert opened.console_errors == []


def test_page_asks_again_when_the_token_is_refused(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false", SIDECAR_API_TOKEN=TOKEN))
    page = browser_page().page
    page.goto(f"{sidecar.url}/#token=wrong-token")
    page.wait_for_selector("#auth-form", state="visible")
    assert "refused" in (page.text_content("#auth-message") or "")
    assert page.evaluate("() => sessionStorage.length") == 0


def test_page_shows_disconnected_and_backs_off_while_the_sidecar_is_gone(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false"))
    opened = _open(browser_page, sidecar.url)
    failures: list[float] = []
    opened.page.on(
        "requestfailed",
        lambda request: (
            failures.append(time.monotonic())
            if "/api/config" not in request.url and "/api/status" in request.url
            else None
        ),
    )
    sidecar.kill()
    opened.page.wait_for_selector("#connection[data-state='disconnected']", timeout=10_000)
    assert "disconnected" in (opened.page.text_content("#connection") or "")
    deadline = time.monotonic() + 20
    while len(failures) < 4 and time.monotonic() < deadline:
        opened.page.wait_for_timeout(200)
    gaps = [later - earlier for earlier, later in itertools.pairwise(failures)]
    assert len(gaps) >= 3, failures
    # Doubling from the 1 s interval: about 4 s then 8 s (with +-10 % jitter).
    assert gaps[1] > 1.5 * gaps[0]
    assert gaps[2] > 1.5 * gaps[1]


def test_page_load_timing_reaches_the_collector(
    sidecar_process: Start, telemetry_stack: TelemetryStack, browser_page: OpenPage
) -> None:
    service = f"dash-{uuid.uuid4().hex[:8]}"
    sidecar = sidecar_process(
        env=_env(
            ENABLE_BACKGROUND_TASKS="false",
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=telemetry_stack.otlp_http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_SERVICE_NAME=service,
        )
    )
    _open(browser_page, sidecar.url)
    deadline = time.monotonic() + 20
    ours: list[str] = []
    while time.monotonic() < deadline:
        ours = [
            line
            for line in telemetry_stack.prometheus_text().splitlines()
            if f'job="{service}"' in line and line.startswith("browser_")
        ]
        if any(
            line.startswith("browser_page_load_duration") and 'browser_metric="navigation"' in line
            for line in ours
        ) and any(line.startswith("browser_api_request_duration") for line in ours):
            break
        time.sleep(0.5)
    navigation = [
        line
        for line in ours
        if line.startswith("browser_page_load_duration_seconds_count")
        and 'browser_metric="navigation"' in line
    ]
    assert navigation, "\n".join(ours) or "no browser_* series"
    assert float(navigation[0].rsplit(" ", 1)[1]) >= 1
    assert any('http_route="/api/status"' in line for line in ours)


def test_alerts_panel_says_prometheus_evaluates_the_rules_and_links_there(
    sidecar_process: Start, browser_page: OpenPage
) -> None:
    where = "http://prometheus.example:9090/alerts"
    config = f'[alerts]\nevaluator = "prometheus"\nevaluator_url = "{where}"\n'
    sidecar = sidecar_process(env=_env(ENABLE_BACKGROUND_TASKS="false"), config=config)
    opened = _open(browser_page, sidecar.url)
    note = opened.page.wait_for_selector("#alerts-evaluator:not([hidden])", timeout=15_000)
    assert note is not None
    assert "evaluated by Prometheus" in (note.text_content() or "")
    assert opened.page.get_attribute("#alerts-evaluator a", "href") == where
    # "No alerts." would claim what this sidecar cannot know.
    assert opened.page.is_hidden("#alerts-empty")
    assert opened.console_errors == []


def test_certificates_panel_shows_the_days_left_of_the_imap_server_certificate(
    sidecar_process: Start, dovecot_tls: Dovecot, browser_page: OpenPage
) -> None:
    env = _env(
        IMAP_HOST=dovecot_tls.host,
        IMAP_PORT=str(dovecot_tls.tls_port),
        IMAP_USERNAME="alice",
        IMAP_PASSWORD=dovecot_tls.users["alice"],
        IMAP_TLS="ssl",
        IMAP_POLL_INTERVAL="1",
        SSL_CERT_FILE=str(dovecot_tls.cert_path),
    )
    sidecar = sidecar_process(env=env)
    opened = _open(browser_page, sidecar.url)
    row = "#certificates tr[data-endpoint='imap']"
    opened.page.wait_for_selector(f"{row} .badge[data-status='critical']", timeout=15_000)
    cells = opened.page.eval_on_selector_all(f"{row} td", "(tds) => tds.map((t) => t.textContent)")
    assert cells[1] == f"127.0.0.1:{dovecot_tls.tls_port}"
    assert cells[2] in {"2.0 critical", "1.9 critical"}  # made with -days 2
    assert opened.page.is_hidden("#certificates-empty")
    assert opened.console_errors == []
