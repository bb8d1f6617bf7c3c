"""The dashboard's transfer view in Chromium, fed by a real sidecar, Worker and stand-ins."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from tests.fixtures.browser import BrowserPage
from tests.fixtures.dovecot import Dovecot
from tests.fixtures.miniflare import R2Worker
from tests.fixtures.providers import ProviderStandIns, wetransfer_link
from tests.pipeline import hostile
from tests.support.sidecar import ROOT, SidecarProcess

Start = Callable[..., SidecarProcess]
OpenPage = Callable[..., BrowserPage]


def test_transfers_show_by_outcome_with_the_reason_of_an_unresolved_link(
    sidecar_process: Start,
    dovecot: Dovecot,
    browser_page: OpenPage,
    provider_worker: R2Worker,
    provider_stand_ins: ProviderStandIns,
) -> None:
    landing = f"{provider_stand_ins.origin}/landing"
    dovecot.append("alice", hostile.make_message(
        links=[landing, wetransfer_link("wt-three")], message_id=f"<{uuid.uuid4().hex}@view>"
    ))  # fmt: skip
    sidecar = sidecar_process(env={
        "IMAP_HOST": dovecot.host,
        "IMAP_PORT": str(dovecot.port),
        "IMAP_USERNAME": "alice",
        "IMAP_PASSWORD": dovecot.users["alice"],
        "IMAP_TLS": "none",
        "IMAP_POLL_INTERVAL": "1",
        "LINK_ALLOWED_HOSTS": provider_stand_ins.origin,
        "R2_FETCH_ENDPOINT": provider_worker.url,
        "R2_FETCH_TOKEN": provider_worker.token,
        "SIDECAR_DASHBOARD_POLL_INTERVAL": "1",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    })  # fmt: skip
    opened = browser_page()
    page = opened.page
    page.goto(sidecar.url)
    unresolved = "#transfers tbody tr[data-outcome='unresolved'][data-provider='generic']"
    page.wait_for_selector(unresolved, timeout=60_000)
    assert "landing page" in (page.text_content(unresolved) or "")
    success = "#transfers tbody tr[data-outcome='success'][data-provider='wetransfer']"
    page.wait_for_selector(success, timeout=30_000)
    assert page.text_content(f"{success} td:nth-child(4)") == "3"
    count = "#transfer-counts tr[data-provider='generic'] td[data-outcome='unresolved']"
    page.wait_for_function(
        f"() => document.querySelector(\"{count}\")?.textContent === '1'", timeout=30_000
    )
    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    page.locator("#transfers-panel").screenshot(path=str(ROOT / "test-artifacts/transfers.png"))
    assert opened.console_errors == []
