"""The r2 check against the real Worker under Miniflare: the probe, and services.r2 in /health."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from agent.config import Settings, settings_from_mapping
from agent.health.base import ProbeContext
from agent.health.probes.r2 import probe
from agent.telemetry.certificates import CertificateExpiry
from tests.fixtures.miniflare import R2Worker, R2WorkerFactory
from tests.fixtures.receiver import Receiver
from tests.support.sidecar import SidecarProcess
from tests.support.tls import Certificate

_FAST = """\
[health]
interval = "300ms"
timeout = "2s"
failures_before_error = 1
"""


async def test_the_probe_is_ok_with_its_latency_when_the_worker_answers(
    r2_worker: R2Worker,
) -> None:
    settings = settings_from_mapping({"r2": {"fetch_endpoint": r2_worker.url + "/"}})
    async with aiohttp.ClientSession() as session:
        result = await probe(ProbeContext(settings=settings, http=session))
    assert result.status == "ok"
    assert result.latency is not None
    assert 0 < result.latency < 2.0


async def test_the_probe_is_not_configured_without_r2_fetch_endpoint() -> None:
    result = await probe(ProbeContext(settings=Settings()))
    assert result.status == "not_configured"


def _r2_status(proc: SidecarProcess) -> dict[str, Any]:
    _, body = proc.get_json("/health")
    return dict(body["services"]["r2"])


def _until(proc: SidecarProcess, status: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        service = _r2_status(proc)
        if service["status"] == status:
            return service
        if time.monotonic() > deadline:
            raise AssertionError(f"services.r2 not {status} within {timeout}s: {service}")
        time.sleep(0.1)


def test_services_r2_is_ok_with_the_worker_up_and_error_once_it_is_stopped(
    r2_worker_factory: R2WorkerFactory, sidecar_process: Callable[..., SidecarProcess]
) -> None:
    worker = r2_worker_factory()
    proc = sidecar_process(
        env={"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true",
             "R2_FETCH_ENDPOINT": worker.url, "R2_FETCH_TOKEN": worker.token},
        config=_FAST,
    )  # fmt: skip
    up = _until(proc, "ok")
    assert up["latency_ms"] is not None
    assert up["error"] is None
    worker.stop()
    down = _until(proc, "error")
    assert down["error"]
    assert worker.token not in proc.get("/health")[1]


def test_services_r2_is_not_configured_without_r2_fetch_endpoint(
    sidecar_process: Callable[..., SidecarProcess],
) -> None:
    proc = sidecar_process(
        env={"ENABLE_BACKGROUND_TASKS": "false", "OTEL_SDK_DISABLED": "true"}, config=_FAST
    )
    time.sleep(0.5)
    assert _r2_status(proc)["status"] == "not_configured"


async def test_the_r2_probe_notes_the_worker_certificate_from_its_health_request(
    https_receiver: Receiver, ten_day_certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(ten_day_certificate.cert))
    settings = settings_from_mapping({"r2": {"fetch_endpoint": https_receiver.url + "/fetch"}})
    certificates = CertificateExpiry()
    async with aiohttp.ClientSession() as session:
        context = ProbeContext(settings=settings, http=session, certificates=certificates)
        result = await probe(context)

    assert result.status == "ok"
    assert [r.path for r in https_receiver.requests] == ["/health"]
    (seen,) = certificates.seen()
    assert (seen.endpoint, seen.port) == ("r2", https_receiver.port)
    assert 10 * 86400 - 600 < seen.not_after - seen.seen_at <= 10 * 86400
