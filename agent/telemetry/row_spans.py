"""Spans recorded as the shipper's rows from the start, because SDK span objects cost the pipeline.

When the telemetry shipper is the provider's only span processor, a sampled span never needs to
be an SDK span: nothing but the shipper reads it, and the shipper sends rows (rows.py). A
`RowSpan` keeps just the fields a row holds, in slots, with attributes in a plain dict for as
long as the SDK would store them unchanged, and hands its row to the shipper when it ends; the
sender thread then has nothing left to convert. LeanTracer makes one whenever the shipper is
the only processor (the shipper does nothing when a span starts, so none is told).

Behaviour stays the SDK's: status, events, links, exceptions and name changes run the SDK's own
code on these fields, an attribute the SDK would clean or a limit it would apply switches the
span to the SDK's BoundedAttributes, and a span that ends after another processor was added
reaches every processor as an SDK ReadableSpan. tests/telemetry/test_row_spans.py runs the
tracing scenarios through both and compares the rows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.sdk.trace._tracer_metrics import noop as _no_metrics
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util import types

from agent.telemetry import rows
from agent.telemetry.tracing import (
    PLAIN_TYPES,
    LeanSpan,
    LeanTracer,
    bounded_attributes,
    store_attributes,
)

_logger = logging.getLogger("opentelemetry.sdk.trace")
_UNSET = Status(StatusCode.UNSET)

Ship = Callable[[tuple[Any, ...]], None]


class RowSpan(trace_api.Span):
    """A sampled, recording span whose end hands the shipper its row."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_limits",
        "_links",
        "_lock",
        "_name",
        "_parent",
        "_record_end_metrics",
        "_record_exception",
        "_set_status_on_exception",
        "_ship",
        "_shipped_by",
        "_start_time",
        "_status",
        "_tracer",
    )

    def __init__(
        self,
        ship: Ship,
        tracer: LeanTracer,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: types.Attributes,
        links: Sequence[trace_api.Link] | None,
        kind: SpanKind,
        record_exception: bool,
        set_status_on_exception: bool,
        record_end_metrics: Callable[[], None],
        start_time: int | None,
        shipped_by: Any,
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._limits: SpanLimits = tracer._span_limits
        self._lock = threading.Lock()
        self._status = _UNSET
        self._events: Sequence[Any] = ()
        self._links: Sequence[trace_api.Link] = ()
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        # The SDK's own span metrics are off unless asked for: then there is nothing to call.
        self._record_end_metrics = None if record_end_metrics is _no_metrics else record_end_metrics
        self._ship = ship
        self._shipped_by = shipped_by
        self._end_time: int | None = None
        self._attributes: Any = {}
        if attributes:
            self._set_items(attributes)
        if links:
            maximum = self._limits.max_links
            if (
                type(links) in (list, tuple)  # not any iterable: one pass must stay possible
                and (maximum is None or len(links) <= maximum)
                and all(link and not link.attributes and link.context.is_valid for link in links)
            ):
                self._links = tuple(links)  # what the SDK keeps of them, without the copies
            else:
                self._links = SdkSpan._new_links(self, links)  # type: ignore[arg-type]
        self._start_time = start_time if start_time is not None else time_ns()

    # The API, with the SDK's behaviour.

    def get_span_context(self) -> SpanContext:
        """This span's context."""
        return self._context

    def is_recording(self) -> bool:
        """True until the span ends."""
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """As the SDK: stored within the span limits; ignored with a warning after the end."""
        self.set_attributes({key: value})

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """As the SDK: each value stored as set_attribute would, in order."""
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Setting attribute on ended span.")
                return
            self._set_items(attributes)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        """The SDK's add_event."""
        SdkSpan.add_event(self, name, attributes, timestamp)  # type: ignore[arg-type]

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """The SDK's add_link."""
        SdkSpan.add_link(self, context, attributes)  # type: ignore[arg-type]

    def update_name(self, name: str) -> None:
        """The SDK's update_name."""
        SdkSpan.update_name(self, name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """The SDK's set_status (OK is final, UNSET never overrides)."""
        SdkSpan.set_status(self, status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """The SDK's record_exception: an `exception` event."""
        SdkSpan.record_exception(self, exception, attributes, timestamp, escaped)  # type: ignore[arg-type]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """As the SDK's span used as a context manager: records an exception, then ends."""
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exception=exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    def end(self, end_time: int | None = None) -> None:
        """Ends the span and ships its row (to every processor if more were added since)."""
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
        if self._record_end_metrics is not None:
            self._record_end_metrics()
        processor = self._tracer.span_processor
        row = self._row()
        if getattr(processor, "_span_processors", None) is self._shipped_by:
            self._ship(row)
            return
        # Another processor came (or went) while this span was open: SDK objects for them all.
        (readable,) = rows.spans_from(rows.span_batch([row]))
        processor.on_end(readable)

    # What the SDK's methods above read and call.

    def _add_event(self, event: Any) -> None:
        LeanSpan._add_event(self, event)  # type: ignore[arg-type]

    def _add_link(self, link: trace_api.Link) -> None:
        LeanSpan._add_link(self, link)  # type: ignore[arg-type]

    def _set_items(self, values: Mapping[str, types.AnyValue]) -> None:
        """Plain values into the dict while the SDK would store them as they are; else its way."""
        attributes = self._attributes
        if type(attributes) is dict:
            limits = self._limits
            maximum = limits.max_span_attributes
            length = limits.max_span_attribute_length
            items = iter(values.items())
            for key, value in items:
                kind = value.__class__
                if (
                    (
                        kind in PLAIN_TYPES
                        or (kind is str and (length is None or len(value) <= length))  # type: ignore[arg-type]
                    )
                    and key.__class__ is str
                    and key
                ):
                    if key in attributes:
                        del attributes[key]
                        attributes[key] = value
                        continue
                    if maximum is None or len(attributes) < maximum:
                        attributes[key] = value
                        continue
                # From here on, the SDK's BoundedAttributes (with what is stored so far).
                self._attributes = bounded_attributes(maximum, length, attributes)
                store_attributes(self._attributes, {key: value, **dict(items)})
                return
            return
        store_attributes(attributes, values)

    def _row(self) -> tuple[Any, ...]:
        """The row rows.span_batch makes of an ended span, naming its resource and scope."""
        context = self._context
        parent = self._parent
        attributes = self._attributes
        events = self._events
        links = self._links
        status = self._status
        tracer = self._tracer
        if type(attributes) is dict:
            values, dropped = attributes or None, 0
        else:
            values, dropped = attributes._dict or None, attributes.dropped
        # A SpanContext is a tuple. The trace state is usually the parent's own object.
        state = context[4]
        state_row = None if state is DEFAULT_TRACE_STATE or not state else tuple(state.items())
        if parent is None:
            parent_row = None
        elif parent[4] is state:
            parent_row = (parent[0], parent[1], parent[2], int(parent[3]), state_row)
        else:
            parent_row = rows.context_row(parent)
        if status is _UNSET:
            code, description = 0, None
        else:
            code, description = status.status_code._value_, status.description
        return (
            tracer.resource,
            tracer._instrumentation_scope,
            self._name,
            (context[0], context[1], False, int(context[3]), state_row),
            parent_row,
            self._kind._value_,
            self._start_time,
            self._end_time,
            code,
            description,
            values,
            dropped,
            tuple(rows.event_row(event) for event in events) if events else None,
            0 if type(events) is tuple else events.dropped,  # type: ignore[attr-defined]
            tuple(rows.link_row(link) for link in links) if links else None,
            0 if type(links) is tuple else links.dropped,  # type: ignore[attr-defined]
        )
