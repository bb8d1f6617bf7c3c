"""The R2 Worker's and the webhook's certificates, read from the connections the sidecar makes."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from agent.config import settings_from_mapping
from agent.pipeline.links import DeliveryLink
from agent.pipeline.r2 import TransferClient
from agent.pipeline.webhook import WebhookClient
from agent.store.local import LocalStore
from agent.telemetry.certificates import SeenCertificate
from tests.fixtures.receiver import Receiver
from tests.support.telemetry import metric_points, telemetry_for_tests
from tests.support.tls import Certificate

DAY = 86400.0


def ten_days(seen: SeenCertificate) -> bool:
    """Whether the certificate was made with -days 10, a moment ago."""
    return 10 * DAY - 600 < seen.not_after - seen.seen_at <= 10 * DAY


async def test_the_webhook_certificate_expiry_comes_from_the_delivery_connection(
    https_receiver: Receiver,
    ten_day_certificate: Certificate,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A private CA is trusted through SSL_CERT_FILE, as the sidecar documents.
    monkeypatch.setenv("SSL_CERT_FILE", str(ten_day_certificate.cert))
    settings = settings_from_mapping({"webhook": {"url": https_receiver.url + "/hook"}})
    telemetry, _spans, reader, _logs = telemetry_for_tests(settings)
    store = LocalStore(tmp_path / "state.sqlite3")
    await store.start()
    async with aiohttp.ClientSession() as session:
        client = WebhookClient(
            settings.webhook,
            session=session,
            tracer=telemetry.tracer("test"),
            instruments=telemetry.instruments,
            store=store,
            masker=telemetry.masker,
        )
        result = await client.deliver(
            {"email_id": "e1"}, idempotency_key="k1", mailbox="box", email_id="e1"
        )
    await store.close()

    assert result.outcome == "delivered"
    (seen,) = telemetry.instruments.certificates.seen()
    assert (seen.endpoint, seen.host, seen.port) == ("webhook", "127.0.0.1", https_receiver.port)
    assert ten_days(seen)
    (point,) = metric_points(reader.get_metrics_data(), "tls.certificate.expiry")
    assert point.attributes["tls.endpoint"] == "webhook"
    assert 10 * DAY - 600 < point.value <= 10 * DAY
    assert len(https_receiver.requests) == 1, "no connection of its own was made"
    telemetry.shutdown(2.0)


async def test_the_r2_worker_certificate_expiry_comes_from_the_transfer_connection(
    https_receiver: Receiver,
    ten_day_certificate: Certificate,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests trusts a private CA through REQUESTS_CA_BUNDLE, read when a request is sent.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ten_day_certificate.cert))
    settings = settings_from_mapping(
        {
            "r2": {"fetch_endpoint": https_receiver.url + "/fetch", "fetch_token": "t0ken-r2"},
            "links": {"allowed_hosts": ["https://files.example:443"]},
        }
    )
    telemetry, _spans, _reader, _logs = telemetry_for_tests(settings)
    client = TransferClient(settings, telemetry=telemetry)
    https_receiver.default = 500  # whatever the Worker answers, the connection was made

    await client.transfer(DeliveryLink("generic", "https://files.example/f.zip"), email_id="e1")
    await client.close()

    seen = telemetry.instruments.certificates.seen()
    assert [(s.endpoint, s.host, s.port) for s in seen] == [
        ("r2", "127.0.0.1", https_receiver.port)
    ]
    assert ten_days(seen[0])
    telemetry.shutdown(2.0)
