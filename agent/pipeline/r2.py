"""Has the R2 fetch Worker copy each delivery link's files into the bucket, and reports each link.

The Worker resolves a share link to its files; the sidecar sends the provider's timeout (applied
per file) and what is left of the link's retry budget (the whole transfer's deadline), retries
only what a retry can fix, and turns the answer into the link's webhook entry.

`requests` (instrumented by opentelemetry-instrumentation-requests, so each call has an HTTP
client span and sends `traceparent` to the Worker) runs in a small thread pool off the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import requests
from opentelemetry.trace import Span, StatusCode, Tracer

from agent.config import Settings
from agent.pipeline.links import DeliveryLink, LinkRegistry
from agent.retry import Backoff, RetryBudget
from agent.telemetry.catalogue import Instruments
from agent.telemetry.logs import get_logger
from agent.telemetry.masking import Masker

Outcome = Literal[
    "success", "failure", "timeout", "rejected", "unauthorized", "unresolved", "unavailable"
]
# The link's status in the webhook, by outcome; everything else is "failed".
_STATUS: dict[str, str] = {
    "success": "transferred",
    "rejected": "rejected",
    "unresolved": "unresolved",
    "unavailable": "unavailable",
}
# Worker outcomes that no retry can change: the link leads to no files, or the provider says the
# files are gone or locked.
_FINAL: frozenset[str] = frozenset({"unresolved", "unavailable"})
_CONNECT_TIMEOUT = 5.0
# The Worker answers its own deadline first; past this margin the client stops waiting.
_ANSWER_GRACE = 2.0
_MAX_ANSWER_BYTES = 256 * 1024
_instrument_lock = threading.Lock()
_instrumented: list[bool] = []


@dataclass(frozen=True)
class StoredFile:
    """One file the Worker stored, as its answer lists it."""

    key: str
    r2_url: str
    size: int
    filename: str
    content_type: str
    started_ms: int
    duration_ms: int

    @classmethod
    def parse(cls, entry: object) -> StoredFile | None:
        """The file from one `files[]` entry, or None when the entry is not well formed."""
        if not isinstance(entry, dict):
            return None
        texts = ("key", "r2_url", "filename")
        numbers = ("size", "started_ms", "duration_ms")
        if not all(isinstance(entry.get(k), str) and entry[k] for k in texts):
            return None
        if not isinstance(entry.get("content_type"), str):
            return None
        if not all(_count(entry.get(k)) for k in numbers):
            return None
        return cls(
            entry["key"],
            entry["r2_url"],
            entry["size"],
            entry["filename"],
            entry["content_type"],
            entry["started_ms"],
            entry["duration_ms"],
        )

    def entry(self) -> dict[str, Any]:
        """The file as the webhook lists it under `files[]`."""
        return {
            "key": self.key,
            "r2_url": self.r2_url,
            "size": self.size,
            "filename": self.filename,
            "content_type": self.content_type,
        }


@dataclass(frozen=True)
class _Attempt:
    outcome: Outcome
    retryable: bool
    error: str
    answer: dict[str, Any]
    status: int | None = None
    files: list[StoredFile] = field(default_factory=list)
    sent_ns: int = 0


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
    """POSTs {source_url, provider, email_id, file_timeout_ms, deadline_ms} per link."""

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
            "files": [],
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
            entry["status"] = _STATUS.get(result.outcome, "failed")
            if result.outcome == "success":
                self._record_success(entry, result, link)
                self._file_spans(result)
                span.set_attribute("r2.files", len(result.files))
                span.set_attribute("r2.object.size", entry["size"])
                if entry["key"] is not None:
                    span.set_attribute("r2.object.key", entry["key"])
            else:
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
            files=len(entry["files"]),
            error=entry["error"],
            attempts=attempts,
            timeout_s=timeout,
            duration_ms=round(duration * 1000, 1),
        )
        return entry

    def _record_success(self, entry: dict[str, Any], result: _Attempt, link: DeliveryLink) -> None:
        """Fills the entry from the Worker's answer: every file, and the total size."""
        answer = result.answer
        single = len(result.files) == 1
        entry.update(
            files=[stored.entry() for stored in result.files],
            size=sum(stored.size for stored in result.files),
            # One file keeps the flat fields it always had; several are only under files[].
            key=result.files[0].key if single else None,
            r2_url=result.files[0].r2_url if single else None,
            content_type=answer.get("content_type") if single else None,
            original_filename=answer.get("original_filename") if single else None,
        )
        self._instruments.r2_transfer_size.record(entry["size"], {"r2.provider": link.provider})

    def _file_spans(self, result: _Attempt) -> None:
        """One r2.file child per stored file, placed where the Worker says it copied it."""
        now = time.time_ns()
        for index, stored in enumerate(result.files):
            start = result.sent_ns + stored.started_ms * 1_000_000
            end = min(now, start + stored.duration_ms * 1_000_000)
            span = self._tracer.start_span(
                "r2.file",
                start_time=min(start, now),
                attributes={
                    "r2.file.index": index,
                    "r2.object.key": stored.key,
                    "r2.object.size": stored.size,
                    "r2.object.content_type": stored.content_type,
                },
            )
            span.end(end_time=end)

    async def _with_retries(
        self, link: DeliveryLink, email_id: str, file_timeout: float
    ) -> tuple[_Attempt, int]:
        r2 = self._settings.r2
        budget = RetryBudget(seconds=r2.retry_budget, max_attempts=r2.max_attempts)
        loop = asyncio.get_running_loop()
        while True:
            budget.attempts += 1
            # The whole transfer (every file of a share) may use what is left of the budget.
            deadline = max(budget.remaining(), 1.0)
            context = contextvars.copy_context()
            result = await loop.run_in_executor(
                self._executor, context.run, self._post, link, email_id, file_timeout, deadline
            )
            if result.outcome == "success" or not result.retryable:
                return result, budget.attempts
            delay = self._backoff.delay(budget.attempts)
            # Another attempt is only worth it when at least one file's timeout still fits.
            if not budget.allows(delay + file_timeout):
                return result, budget.attempts
            await asyncio.sleep(delay)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
        return session

    def _post(
        self, link: DeliveryLink, email_id: str, file_timeout: float, deadline: float
    ) -> _Attempt:
        body = {
            # The link as the mail gave it: the Worker resolves it to its files.
            "source_url": link.url,
            "provider": link.provider,
            "email_id": email_id,
            "file_timeout_ms": max(1, int(file_timeout * 1000)),
            # The Worker stops copying when we stop waiting, so a given-up copy never lands.
            "deadline_ms": max(1, int(deadline * 1000)),
        }
        headers = {"X-R2-FETCH-TOKEN": self._token, "Content-Type": "application/json"}
        sent_ns = time.time_ns()
        wait = deadline + _ANSWER_GRACE
        try:
            response = self._session().post(
                self._endpoint,
                json=body,
                headers=headers,
                timeout=(_CONNECT_TIMEOUT, wait),
                allow_redirects=False,
                hooks={"response": self._note_certificate},
            )
        except requests.Timeout:
            return _Attempt("timeout", True, f"timed out after {wait:g}s", {})
        except requests.ConnectionError as exc:
            return _Attempt("failure", True, f"worker unreachable: {type(exc).__name__}", {})
        except requests.RequestException as exc:
            return _Attempt("failure", False, f"request failed: {type(exc).__name__}", {})
        return _interpret(response, sent_ns)

    def _note_certificate(self, response: requests.Response, **_kwargs: Any) -> None:
        """The Worker's certificate, from the connection the answer came on (HTTPS only).

        A response hook runs before requests reads the body, while urllib3 still holds the
        connection (it is back in the pool afterwards).
        """
        connection = getattr(response.raw, "connection", None)  # urllib3's HTTPResponse
        sock = getattr(connection, "sock", None)
        if isinstance(sock, ssl.SSLSocket):
            url = urlsplit(response.url)
            self._instruments.certificates.record(
                "r2", url.hostname or "", url.port or 443, sock.getpeercert()
            )


def _interpret(response: requests.Response, sent_ns: int) -> _Attempt:
    """The attempt's outcome from the Worker's answer."""
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
        listed = answer.get("files")
        files = [StoredFile.parse(entry) for entry in listed] if isinstance(listed, list) else []
        stored = [f for f in files if f is not None]
        if not stored or len(stored) != len(files):
            # Never report a transfer whose files the answer does not show.
            return _Attempt("failure", True, "the Worker's answer lists no stored files", answer)
        return _Attempt("success", False, "", answer, status, stored, sent_ns)
    error = str(answer.get("error") or f"HTTP {status}")[:500]
    worker_outcome = answer.get("outcome")
    retryable = bool(answer.get("retryable", status >= 500 or status == 429))
    outcome: Outcome = "failure"
    if worker_outcome in _FINAL:
        outcome = "unresolved" if worker_outcome == "unresolved" else "unavailable"
        retryable = False
    elif status == 403:
        outcome = "rejected"
    elif status == 504 or worker_outcome == "timeout" or "timed out" in error.lower():
        outcome = "timeout"
    return _Attempt(outcome, retryable, f"HTTP {status}: {error}", answer, status)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json() if len(response.content) <= _MAX_ANSWER_BYTES else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
