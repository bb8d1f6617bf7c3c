"""The landing-page guard: a link meant as a file that answers with an HTML page is not stored."""

from __future__ import annotations

import pytest

from tests.fixtures.miniflare import R2Worker, R2WorkerFactory
from tests.fixtures.providers import LANDING_PAGE, ProviderStandIns
from tests.r2_worker.shares import assert_failure, stored_under


def test_an_allowed_link_serving_text_html_is_unresolved_and_nothing_is_stored(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns
) -> None:
    response = provider_worker.transfer(
        f"{provider_stand_ins.origin}/landing", email_id="guard-html"
    )

    error = assert_failure(response, 422, "unresolved", retryable=False)
    assert error == (
        "source answered with an HTML page (Content-Type text/html), not a file: "
        "a landing page is never stored"
    )
    assert stored_under(provider_worker, "guard-html") == []


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/sniffed", "HTML content under Content-Type application/octet-stream"),
        ("/untyped", "HTML content under no Content-Type"),
    ],
)
def test_html_bytes_under_a_generic_or_missing_type_are_unresolved(
    provider_worker: R2Worker, provider_stand_ins: ProviderStandIns, path: str, detail: str
) -> None:
    email_id = f"guard{path.replace('/', '-')}"
    response = provider_worker.transfer(f"{provider_stand_ins.origin}{path}", email_id=email_id)

    assert detail in assert_failure(response, 422, "unresolved", retryable=False)
    assert stored_under(provider_worker, email_id) == []


def test_an_origin_that_opts_in_to_html_has_the_page_stored(
    r2_worker_factory: R2WorkerFactory, provider_stand_ins: ProviderStandIns
) -> None:
    origin = provider_stand_ins.origin
    worker = r2_worker_factory(allowed_hosts=origin, R2_HTML_ALLOWED_ORIGINS=origin)

    response = worker.transfer(f"{origin}/landing", email_id="guard-opt-in")

    assert response.status_code == 200, response.text
    assert worker.get_object(response.json()["key"]) == LANDING_PAGE
