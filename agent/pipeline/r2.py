"""Has the R2 fetch Worker copy each delivery link into the bucket, with per-provider timeouts.

`requests` (instrumented by opentelemetry-instrumentation-requests, so each call has an HTTP
client span and sends `traceparent` to the Worker) runs in a small thread pool off the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, get_args

import requests
from opentelemetry.trace import Span, StatusCode, Tracer

from agent.config import Settings
from agent.pipeline.links import DeliveryLink, LinkRegistry
from agent.retry import Backoff, RetryBudget
from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger
from agent.telemetry.masking import Masker

Outcome = Literal["success", "failure", "timeout", "rejected", "unauthorized"]
_CONNECT_TIMEOUT = 5.0
_MAX_ANSWER_BYTES = 64 * 1024
_instrument_lock = threading.Lock()
_instrumented: list[bool] = []


@dataclass(frozen=True)
class _Attempt:
    outcome: Outcome
    retryable: bool
    error: str
    answer: dict[str, Any]
    status: int | None = None


def instrument_requests(masker: Masker, tracer_provider: Any = None) -> None:
    """Instruments `requests` once per process, with hooks that mask URLs on the client spans."""
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    def request_hook(span: Span, request: Any) -> None:
        if span.is_recording():
            span.set_attribute("url.full", masker.mask_url(str(request.url)))
            span.set_attribute("http.url", masker.mask_url(str(request.url)))

    def response_hook(span: Span, request: Any, _response: Any) -> None:
        request_hook(span, request)

    with _instrument_lock:
        if _instrumented:
            return
        RequestsInstrumentor().instrument(
            tracer_provider=tracer_provider,
            request_hook=request_hook,
            response_hook=response_hook,
        )
        _instrumented.append(True)


class TransferClient:
    """POSTs {source_url, provider, email_id, filename?} to the Worker for each link."""

    def __init__(
        self, settings: Settings, *, telemetry: Any, registry: LinkRegistry | None = None
    ) -> None:
        self._settings = settings
        self._endpoint = settings.r2.fetch_endpoint.rstrip("/") + "/"
        self._token = settings.r2.fetch_token
        self._registry = registry or LinkRegistry(
            settings.links, max_url_length=settings.parse.max_url_length
        )
        self._tracer: Tracer = telemetry.tracer("agent.r2")
        self._instruments: Instruments = telemetry.instruments
        self._masker: Masker = telemetry.masker
        self._log = get_logger("r2_transfer")
        concurrency = settings.r2.concurrency
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="r2-transfer"
        )
        self._semaphore = asyncio.Semaphore(concurrency)
        self._local = threading.local()
        self._backoff = Backoff(initial=1.0, maximum=30.0)
        self._closed = False
        instrument_requests(self._masker, telemetry.tracer_provider)
        # Every provider and outcome series exists from the start, at zero: a first burst of
        # failures is then an increase to any rule engine (the built-in one, Prometheus).
        for provider in self._registry.providers:
            for outcome in get_args(Outcome):
                self._instruments.r2_transfers.add(
                    0, {"r2.provider": provider.id, "outcome": outcome}
                )

    async def close(self) -> None:
        """Stops the thread pool (running transfers finish on their own timeouts)."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def transfer_all(
        self, links: list[DeliveryLink], *, email_id: str
    ) -> list[dict[str, Any]]:
        """One delivery_links entry per link, in order; transfers run concurrently (bounded)."""
        return list(
            await asyncio.gather(*(self.transfer(link, email_id=email_id) for link in links))
        )

    async def transfer(self, link: DeliveryLink, *, email_id: str) -> dict[str, Any]:
        """Transfers one link (with retries inside the budget) and returns its entry."""
        if self._closed:
            raise RuntimeError("TransferClient is closed")
        timeout = self._registry.timeout_for(link)
        entry: dict[str, Any] = {
            "provider": link.provider,
            "url": link.url,
            "status": "failed",
            "key": None,
            "r2_url": None,
            "size": None,
            "error": None,
        }
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            "r2.transfer",
            attributes={
                "r2.provider": link.provider,
                "r2.timeout": timeout,
                "email.id": email_id,
                "url.full": self._masker.mask_url(link.url),
            },
        ) as span:
            if self._registry.classify(link.url) is None:
                result = _Attempt(
                    "rejected", False, "source URL is not an allowed delivery link", {}
                )
                attempts = 0
            else:
                async with self._semaphore:
                    result, attempts = await self._with_retries(link, email_id, timeout)
            duration = time.perf_counter() - started
            span.set_attribute("outcome", result.outcome)
            span.set_attribute("r2.attempts", attempts)
            if result.outcome == "success":
                answer = result.answer
                entry.update(
                    status="transferred",
                    key=answer.get("key"),
                    r2_url=answer.get("r2_url"),
                    size=answer.get("size"),
                    content_type=answer.get("content_type"),
                    original_filename=answer.get("original_filename"),
                )
                span.set_attribute("r2.object.key", str(answer.get("key", "")))
                if isinstance(answer.get("size"), int):
                    span.set_attribute("r2.object.size", answer["size"])
                    self._instruments.r2_transfer_size.record(
                        answer["size"], {"r2.provider": link.provider}
                    )
            else:
                entry["status"] = "rejected" if result.outcome == "rejected" else "failed"
                entry["error"] = self._masker.mask(result.error)
                span.set_status(StatusCode.ERROR, entry["error"])
                span.set_attribute("error.type", result.outcome)
        attributes = {"r2.provider": link.provider, "outcome": result.outcome}
        self._instruments.r2_transfers.add(1, attributes)
        self._instruments.r2_transfer_duration.record(duration, attributes)
        log = self._log.info if result.outcome == "success" else self._log.warning
        log(
            "r2.transfer",
            provider=link.provider,
            outcome=result.outcome,
            email_id=email_id,
            url=self._masker.mask_url(link.url),
            key=entry["key"],
            size=entry["size"],
            error=entry["error"],
            attempts=attempts,
            timeout_s=timeout,
            duration_ms=round(duration * 1000, 1),
        )
        return entry

    async def _with_retries(
        self, link: DeliveryLink, email_id: str, read_timeout: float
    ) -> tuple[_Attempt, int]:
        r2 = self._settings.r2
        budget = RetryBudget(seconds=r2.retry_budget, max_attempts=r2.max_attempts)
        loop = asyncio.get_running_loop()
        while True:
            budget.attempts += 1
            context = contextvars.copy_context()
            result = await loop.run_in_executor(
                self._executor, context.run, self._post, link, email_id, read_timeout
            )
            if result.outcome == "success" or not result.retryable:
                return result, budget.attempts
            delay = self._backoff.delay(budget.attempts)
            if not budget.allows(delay + read_timeout):
                return result, budget.attempts
            await asyncio.sleep(delay)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _post(self, link: DeliveryLink, email_id: str, timeout: float) -> _Attempt:
        body = {
            "source_url": self._registry.direct_url(link),
            "provider": link.provider,
            "email_id": email_id,
            # The Worker stops copying when we stop waiting, so a given-up copy never lands.
            "deadline_ms": max(1, int(timeout * 1000)),
        }
        headers = {"X-R2-FETCH-TOKEN": self._token, "Content-Type": "application/json"}
        try:
            response = self._session().post(
                self._endpoint,
                json=body,
                headers=headers,
                timeout=(_CONNECT_TIMEOUT, timeout),
                allow_redirects=False,
            )
        except requests.Timeout:
            return _Attempt("timeout", True, f"timed out after {timeout:g}s", {})
        except requests.ConnectionError as exc:
            return _Attempt("failure", True, f"worker unreachable: {type(exc).__name__}", {})
        except requests.RequestException as exc:
            return _Attempt("failure", False, f"request failed: {type(exc).__name__}", {})
        answer = _json(response)
        status = response.status_code
        if status == 401:
            return _Attempt(
                "unauthorized",
                False,
                "the Worker refused the token (check R2_FETCH_TOKEN)",
                answer,
                status,
            )
        if 200 <= status < 300 and answer.get("success") is True:
            return _Attempt("success", False, "", answer, status)
        error = str(answer.get("error") or f"HTTP {status}")[:500]
        retryable = bool(answer.get("retryable", status >= 500 or status == 429))
        outcome: Outcome = "rejected" if status == 403 else "failure"
        if status == 504 or "timed out" in error.lower() or "timeout" in error.lower():
            outcome = "timeout"
        return _Attempt(outcome, retryable, f"HTTP {status}: {error}", answer, status)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json() if len(response.content) <= _MAX_ANSWER_BYTES else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
