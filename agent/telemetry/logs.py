"""Structured logs: one masked event becomes a JSON line, one OTLP log record and sink calls."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from opentelemetry import trace
from opentelemetry._logs import Logger, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from agent.telemetry.masking import Masker

if TYPE_CHECKING:
    from agent.telemetry.setup import Telemetry

LogSink = Callable[[dict[str, Any]], None]

DOMAINS: tuple[str, ...] = (
    "imap", "webhook", "r2_transfer", "performance", "alerts", "health", "http", "telemetry",
    "store", "app",
)  # fmt: skip

# A plain attribute value: what an OTLP attribute holds as it is (a list of one of these, too).
PLAIN_VALUES = frozenset({str, bool, int, float})

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}  # fmt: skip
_SEVERITY = {"debug": SeverityNumber.DEBUG, "info": SeverityNumber.INFO,
             "warning": SeverityNumber.WARN, "error": SeverityNumber.ERROR,
             "exception": SeverityNumber.ERROR, "critical": SeverityNumber.FATAL}  # fmt: skip
# Keys that are fields of the OTLP record itself, not attributes.
_RECORD_KEYS = frozenset({"event", "level", "timestamp", "trace_id", "span_id"})
_FIRST_KEYS = ("timestamp", "level", "logger", "event", "trace_id", "span_id")
_SDK_LOG_INTERVAL = 60.0
# True while an event is handed to OTLP and the sinks: what they log then is only printed.
_HANDING_OUT: ContextVar[bool] = ContextVar("signal_sidecar_log_handing_out", default=False)
# True for the SDK's own log records: exporting an export failure would only fail again.
_SDK_RECORD: ContextVar[bool] = ContextVar("signal_sidecar_sdk_log", default=False)


class _Pipeline:
    """The last two processors of the current configuration: masking, then the fan-out."""

    def __init__(self, masker: Masker, logger_provider: LoggerProvider | None) -> None:
        self._masker = masker
        self._provider = logger_provider
        self._otel_loggers: dict[str, Logger] = {}

    def mask(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        """The event with its secrets masked (the same dict when it holds none)."""
        masked: EventDict = self._masker.mask_event(event_dict)
        return masked

    def fan_out(self, _logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        """The JSON line; on the way, one OTLP log record and a copy for every sink."""
        event = {key: event_dict[key] for key in _FIRST_KEYS if key in event_dict}
        event.update(event_dict)
        event["event"] = str(event.get("event", ""))
        line = json.dumps(event, default=str, ensure_ascii=False)
        if _HANDING_OUT.get():
            return line  # logged by a sink or an exporter: handing it out again could loop
        token = _HANDING_OUT.set(True)
        try:
            if not _SDK_RECORD.get():
                self._emit_otlp(method, event)
            with _registry.lock:
                sinks = list(_registry.sinks)
            for sink in sinks:
                try:
                    sink(dict(event))
                except Exception:  # a broken sink must not lose the log line
                    get_logger("telemetry").exception("telemetry.log_sink_failed", sink=repr(sink))
        finally:
            _HANDING_OUT.reset(token)
        return line

    def _emit_otlp(self, method: str, event: Mapping[str, Any]) -> None:
        if self._provider is None:
            return
        domain = str(event.get("logger", "app"))
        otel_logger = self._otel_loggers.get(domain)
        if otel_logger is None:  # two threads may both ask: the provider gives equal loggers
            otel_logger = self._provider.get_logger(f"signal-sidecar.{domain}")
            self._otel_loggers[domain] = otel_logger
        level = str(event.get("level", method))
        attributes: dict[str, Any] = {}
        for key, value in event.items():
            if key in _RECORD_KEYS:
                continue
            if key == "exception":
                attributes["exception.stacktrace"] = str(value)
            elif value.__class__ in PLAIN_VALUES:
                attributes[key] = value  # most fields: stored without a call
            else:
                _flatten(attributes, key, value)
        # The record takes its trace and span ids from the current context.
        otel_logger.emit(
            timestamp=time.time_ns(),
            severity_number=_SEVERITY.get(level, SeverityNumber.INFO),
            severity_text=level.upper(),
            body=str(event.get("event", "")),
            attributes=attributes,
        )


class _Registry:
    """The sinks and the SDK log handler; set by configure_logging, never at import."""

    def __init__(self) -> None:
        self.sinks: list[LogSink] = []
        self.lock = threading.Lock()
        self.sdk_handler: logging.Handler | None = None


_registry = _Registry()


def configure_logging(
    telemetry: Telemetry | None, *, level: str = "info", stream: TextIO = sys.stdout
) -> None:
    """Configures structlog for the process (calling it again replaces the configuration)."""
    threshold = _LEVELS.get(level.strip().lower())
    if threshold is None:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(_LEVELS)})")
    masker = telemetry.masker if telemetry is not None else Masker()
    provider = telemetry.logger_provider if telemetry is not None else None
    pipeline = _Pipeline(masker, provider)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            _add_logger_name,
            _add_trace_context,
            structlog.processors.format_exc_info,
            pipeline.mask,
            pipeline.fan_out,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    route_sdk_logs()


def get_logger(domain: str) -> FilteringBoundLogger:
    """A structlog logger whose `logger` field is the domain (imap, webhook, alerts, ...)."""
    logger: FilteringBoundLogger = structlog.get_logger().bind(logger=domain)
    return logger


def add_log_sink(sink: LogSink) -> None:
    """sink(event) receives every final, masked event dict (e.g. the dashboard's log buffer)."""
    with _registry.lock:
        _registry.sinks.append(sink)


def remove_log_sink(sink: LogSink) -> None:
    """Stops calling a sink added with add_log_sink."""
    with _registry.lock:
        if sink in _registry.sinks:
            _registry.sinks.remove(sink)


def _add_logger_name(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("logger", "app")
    return event_dict


def _add_trace_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event_dict["span_id"] = trace.format_span_id(span_context.span_id)
    return event_dict


def _flatten(out: dict[str, Any], key: str, value: Any) -> None:
    """OTLP attribute values: plain values, lists of one plain type; dicts become dotted keys."""
    if value.__class__ in PLAIN_VALUES:
        out[key] = value
    elif value is None:
        out[key] = "None"
    elif isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            _flatten(out, f"{key}.{sub_key}", sub_value)
    elif isinstance(value, list | tuple):
        kinds = {item.__class__ for item in value}
        if len(kinds) == 1 and kinds <= PLAIN_VALUES:
            out[key] = list(value)
        else:
            out[key] = json.dumps(value, default=str, ensure_ascii=False)
    else:
        out[key] = str(value)


class _RateLimit(logging.Filter):
    """Lets one record per (logger, message template) through every interval seconds."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._last: dict[tuple[str, object], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """True when the record was not seen within the interval."""
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return False
            self._last[key] = now
            return True


class _SdkLogHandler(logging.Handler):
    """The SDK's own stdlib log records as structured events of the `telemetry` logger."""

    def emit(self, record: logging.LogRecord) -> None:
        """Logs the record through structlog: a JSON line and the sinks, never an OTLP record."""
        fields: dict[str, Any] = {"message": record.getMessage(), "sdk_logger": record.name}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        token = _SDK_RECORD.set(True)
        try:
            log = get_logger("telemetry")
            if record.levelno >= logging.CRITICAL:
                log.critical("otel.sdk", **fields)
            elif record.levelno >= logging.ERROR:
                log.error("otel.sdk", **fields)
            else:
                log.warning("otel.sdk", **fields)
        except Exception:  # the SDK's warning must never break the thread that logged it
            self.handleError(record)
        finally:
            _SDK_RECORD.reset(token)


def route_sdk_logs() -> None:
    """The SDK's own loggers (WARNING and up, rate-limited) become structured events.

    They go to the JSON stream and the sinks, never to OTLP, and stop propagating, so that no
    handler on the root logger (such as OTel's LoggingHandler) can turn an export failure into
    another record to export.
    """
    sdk_logger = logging.getLogger("opentelemetry")
    if _registry.sdk_handler is not None:
        sdk_logger.removeHandler(_registry.sdk_handler)
    handler = _SdkLogHandler(level=logging.WARNING)
    handler.addFilter(_RateLimit(_SDK_LOG_INTERVAL))
    sdk_logger.addHandler(handler)
    sdk_logger.propagate = False
    _registry.sdk_handler = handler
