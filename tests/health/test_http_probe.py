"""The http check against a real HTTP server standing in for the app's own health URL."""

from __future__ import annotations

import aiohttp

from agent.config import Settings, settings_from_mapping
from agent.health.base import ProbeContext, ProbeResult
from agent.health.probes.http import probe
from tests.fixtures.receiver import Receiver


def _settings(url: str) -> Settings:
    return settings_from_mapping({"health": {"app_health_url": url, "timeout": "1s"}})


async def _probe(url: str) -> ProbeResult:
    async with aiohttp.ClientSession() as session:
        return await probe(ProbeContext(settings=_settings(url), http=session))


async def test_a_2xx_answer_is_ok_with_its_latency(receiver: Receiver) -> None:
    result = await _probe(receiver.url + "/healthz")
    assert result.status == "ok"
    assert result.latency is not None
    assert receiver.requests[0].path == "/healthz"


async def test_a_503_answer_is_an_error_naming_the_status(receiver: Receiver) -> None:
    receiver.default = 503
    result = await _probe(receiver.url + "/healthz")
    assert result.status == "error"
    assert result.detail == "HTTP 503"
    assert result.data == {"status_code": 503}


async def test_a_redirect_is_not_followed_and_is_an_error(receiver: Receiver) -> None:
    receiver.default = 302
    result = await _probe(receiver.url + "/healthz")
    assert result.status == "error"
    assert len(receiver.requests) == 1


async def test_without_a_url_the_check_is_not_configured() -> None:
    assert (await probe(ProbeContext(settings=Settings()))).status == "not_configured"
