"""The SDK's tracer with less work per span, because span bookkeeping dominated telemetry's cost.

`LeanTracerProvider` is the SDK `TracerProvider` (same sampler, id generator, limits, resource,
span processors and exporters); only its tracers differ. A `LeanTracer` makes `LeanSpan`s, which
are SDK spans (`isinstance(span, sdk.trace.Span)`, same private fields, so every processor and
exporter reads them unchanged) built with fewer allocations:

- `start_as_current_span` is a small context-manager class instead of two nested generators;
- the default sampler (parent-based, always on) is decided inline, every other sampler is asked,
  and whatever it records is a LeanSpan;
- attributes of the common types (str within the length limit, bool, int, float) skip the
  SDK's recursive value cleaning and per-item locking; any other value takes the SDK's path;
- empty event and link lists are shared empty tuples until something is added;
- an ended span goes to the processors as it is, not as a copy (it can no longer change).

When the provider's only span processor offers a `span_maker` (the telemetry shipper's does),
sampled spans are made by it instead: agent/telemetry/row_spans.py.

Everything observable is the SDK's behaviour: tests/telemetry/test_tracing.py runs the same
calls through both tracers and compares what reaches the exporter.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import Any, TypeGuard, cast

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan as SdkReadableSpan
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import SpanLimits, sampling
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util import types

_logger = logging.getLogger("opentelemetry.sdk.trace")

# Attribute values the SDK stores as they are (a str too, within the length limit).
PLAIN_TYPES = frozenset({bool, int, float})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_DEFAULT = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_NO_ATTRIBUTES: Mapping[str, types.AnyValue] = {}
_RECORD_AND_SAMPLE = sampling.Decision.RECORD_AND_SAMPLE
_DROP = sampling.Decision.DROP
# Classes seen to be trace_api.Span: isinstance against the ABC costs more than a set lookup.
_SPAN_CLASSES: set[type] = set()


def _is_span(value: object) -> TypeGuard[trace_api.Span]:
    """isinstance(value, trace_api.Span), remembering the classes that are."""
    kind = value.__class__
    if kind in _SPAN_CLASSES:
        return True
    if isinstance(value, trace_api.Span):
        _SPAN_CLASSES.add(kind)
        return True
    return False


def _default_sampler(sampler: sampling.Sampler) -> bool:
    """True for ParentBased(ALWAYS_ON) with the default delegates: decided inline, same result."""
    if type(sampler) is not sampling.ParentBased:
        return False
    delegates = (
        sampler._root,
        sampler._remote_parent_sampled,
        sampler._local_parent_sampled,
        sampler._remote_parent_not_sampled,
        sampler._local_parent_not_sampled,
    )
    on, off = sampling.ALWAYS_ON, sampling.ALWAYS_OFF
    return delegates == (on, on, on, off, off)


class LeanTracerProvider(SdkTracerProvider):
    """The SDK TracerProvider, handing out LeanTracers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean_tracers: dict[SdkTracer, LeanTracer] = {}

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace_api.Tracer:
        """The SDK's tracer for this scope, as a LeanTracer (one per scope, like the SDK's)."""
        tracer = super().get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        if type(tracer) is not SdkTracer:
            return tracer  # the provider is disabled: the SDK's no-op tracer
        with self._tracers_lock:
            lean = self._lean_tracers.get(tracer)
            if lean is None:
                lean = self._lean_tracers[tracer] = LeanTracer(tracer)
        return lean

    def _update_resource(self, resource: Resource) -> None:
        # The SDK merges a resource in after a fork (a new process id); its tracers follow.
        super()._update_resource(resource)
        with self._tracers_lock:
            for lean in self._lean_tracers.values():
                lean._set_resource(self._resource)


class LeanTracer(SdkTracer):
    """An SDK Tracer whose spans are LeanSpans; built from the SDK tracer of the same scope."""

    def __init__(self, tracer: SdkTracer) -> None:
        self.__dict__.update(tracer.__dict__)
        self._sdk = tracer
        self._inline_sampling = _default_sampler(self.sampler)
        self._random_ids = self.id_generator.is_trace_id_random()
        self._span_maker: tuple[Any, Callable[..., trace_api.Span] | None] = (None, None)

    def _maker(self) -> tuple[Any, Callable[..., trace_api.Span] | None]:
        """The processors, and the span maker of the only one when it offers one (the shipper).

        A processor that makes its own spans is told nothing when they start and receives
        them itself when they end (row_spans.RowSpan); any other set of processors gets
        LeanSpans. Looked up again whenever the provider's processors change.
        """
        processors = getattr(self.span_processor, "_span_processors", None)
        known = self._span_maker
        if known[0] is not processors:
            maker = None
            if processors is not None and len(processors) == 1:
                maker = getattr(processors[0], "span_maker", None)
            known = self._span_maker = (processors, maker)
        return known

    def _is_enabled(self) -> bool:
        # The provider's tracer configurator updates the SDK tracer of this scope.
        return self._sdk._is_enabled()

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _CurrentSpan:
        """Starts a span on entry, makes it current, and ends it on exit (as the SDK does)."""
        return _CurrentSpan(
            self,
            (name, context, kind, attributes, links, start_time, record_exception,
             set_status_on_exception),
            end_on_exit,
        )  # fmt: skip

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[trace_api.Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        """The SDK's start_span, with the default sampler decided inline and a LeanSpan made."""
        if not self._is_enabled():
            return SdkTracer.start_span(
                self, name, context, kind, attributes, links, start_time, record_exception,
                set_status_on_exception,
            )  # fmt: skip
        links = links or ()
        parent = context_api.get_value(_SPAN_KEY, context)
        parent_context = parent.get_span_context() if _is_span(parent) else None
        # A SpanContext is a tuple: (trace id, span id, remote, flags, trace state, valid).
        if parent_context is None or not parent_context[5]:
            parent_context = None
            trace_id = self.id_generator.generate_trace_id()
            random_id = self._random_ids
        else:
            trace_id = parent_context[0]
            random_id = bool(parent_context[3] & TraceFlags.RANDOM_TRACE_ID)
        if self._inline_sampling:
            # ParentBased(ALWAYS_ON): a root or a sampled parent records, an unsampled one drops;
            # the parent's trace state is kept, as the SDK's static samplers keep it.
            if parent_context is None:
                decision, trace_state = _RECORD_AND_SAMPLE, None
            else:
                sampled = parent_context[3] & TraceFlags.SAMPLED
                decision = _RECORD_AND_SAMPLE if sampled else _DROP
                trace_state = parent_context[4]
        else:
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            decision, trace_state = result.decision, result.trace_state
            attributes = result.attributes
        if decision is _RECORD_AND_SAMPLE:
            flags = _SAMPLED_RANDOM if random_id else _SAMPLED
        else:
            flags = _RANDOM if random_id else _DEFAULT
        span_context = _span_context(trace_id, self.id_generator.generate_span_id(), flags,
                                     trace_state)  # fmt: skip
        record_end_metrics = self._tracer_metrics.start_span(parent_context, decision)
        if decision is _DROP:
            return trace_api.NonRecordingSpan(context=span_context)
        if decision is _RECORD_AND_SAMPLE:
            processors, maker = self._maker()
            if maker is not None:
                return maker(self, name, span_context, parent_context, attributes, links, kind,
                             record_exception, set_status_on_exception, record_end_metrics,
                             start_time, processors)  # fmt: skip
        span = LeanSpan.create(
            self,
            name,
            span_context,
            parent_context,
            attributes,
            links,
            kind,
            record_exception,
            set_status_on_exception,
            record_end_metrics,
        )
        span._start_time = start_time if start_time is not None else time_ns()
        self.span_processor.on_start(span, parent_context=context)
        return span


class _CurrentSpan:
    """What `with tracer.start_as_current_span(...)` enters: trace_api.use_span's rules."""

    __slots__ = ("_arguments", "_end_on_exit", "_span", "_token", "_tracer")

    def __init__(self, tracer: LeanTracer, arguments: tuple[Any, ...], end_on_exit: bool) -> None:
        self._tracer = tracer
        self._arguments = arguments
        self._end_on_exit = end_on_exit

    def __enter__(self) -> trace_api.Span:
        span = self._tracer.start_span(*self._arguments)
        self._span = span
        self._token = context_api.attach(context_api.set_value(_SPAN_KEY, span))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            context_api.detach(self._token)
            # As use_span: only Exception subclasses are errors (not GeneratorExit and the like).
            if exc is not None and isinstance(exc, Exception) and span.is_recording():
                if self._arguments[6]:
                    span.record_exception(exc)
                if self._arguments[7]:
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            if self._end_on_exit:
                span.end()

    def __call__(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """As the SDK's context manager, usable as a decorator: a new span per call."""
        tracer, arguments, end_on_exit = self._tracer, self._arguments, self._end_on_exit
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with _CurrentSpan(tracer, arguments, end_on_exit):
                    return await function(*args, **kwargs)

            return run_async

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _CurrentSpan(tracer, arguments, end_on_exit):
                return function(*args, **kwargs)

        return run


class LeanSpan(SdkSpan):
    """An SDK span, built and ended with less work; read by processors exactly as one."""

    @classmethod
    def create(
        cls,
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
    ) -> LeanSpan:
        """A started-to-be span with the SDK's fields (no __init__: that is the cost avoided)."""
        span = object.__new__(cls)
        limits: SpanLimits = tracer._span_limits
        span._name = name
        span._context = context
        span._kind = kind
        span._instrumentation_info = tracer.instrumentation_info
        span._instrumentation_scope = tracer._instrumentation_scope
        span._parent = parent
        span._start_time = None
        span._end_time = None
        span._resource = tracer.resource
        span._status = _UNSET
        span._sampler = tracer.sampler
        span._trace_config = None
        span._record_exception = record_exception
        span._set_status_on_exception = set_status_on_exception
        span._span_processor = tracer.span_processor
        span._limits = limits
        span._lock = threading.Lock()
        span._attributes = _attributes(limits, attributes or _NO_ATTRIBUTES)
        span._events = ()
        span._links = span._new_links(links) if links else ()
        span._record_end_metrics = record_end_metrics
        return span

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """The SDK's set_attribute; values of the common types skip its cleaning."""
        attributes = cast(BoundedAttributes, self._attributes)
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Setting attribute on ended span.")
                return
            if not _plain_into(attributes, key, value):
                attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """The SDK's set_attributes; values of the common types skip its cleaning."""
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Setting attribute on ended span.")
                return
            store_attributes(cast(BoundedAttributes, self._attributes), attributes)

    def _add_event(self, event: Any) -> None:
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Tried calling %s on an ended span.", "_add_event")
                return
            if type(self._events) is tuple:
                self._events = BoundedList(self._limits.max_events)
            cast("BoundedList[Any]", self._events).append(event)

    def _add_link(self, link: trace_api.Link) -> None:
        with self._lock:
            if self._end_time is not None:
                _logger.warning("Tried calling %s on an ended span.", "_add_link")
                return
            if type(self._links) is tuple:
                self._links = BoundedList(self._limits.max_links)
            cast("BoundedList[Any]", self._links).append(link)

    def end(self, end_time: int | None = None) -> None:
        """The SDK's end, handing the span itself to the processors (it is immutable now)."""
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                _logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            cast(BoundedAttributes, self._attributes)._immutable = True
        if self._record_end_metrics is not None:
            self._record_end_metrics()
        processor = self._span_processor
        processor._on_ending(self)
        processor.on_end(self)


_UNSET = Status(StatusCode.UNSET)
_TRACE_ID_MAX = (1 << 128) - 1
_SPAN_ID_MAX = (1 << 64) - 1


def _span_context(
    trace_id: int, span_id: int, flags: TraceFlags, state: TraceState | None
) -> SpanContext:
    """SpanContext(trace_id, span_id, is_remote=False, ...) as its __new__ builds it, directly."""
    valid = 0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX
    state = DEFAULT_TRACE_STATE if state is None else state
    return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, valid))


def _attributes(limits: SpanLimits, initial: Mapping[str, types.AnyValue]) -> BoundedAttributes:
    """A span's BoundedAttributes, as the SDK builds them."""
    return bounded_attributes(limits.max_span_attributes, limits.max_span_attribute_length, initial)


def bounded_attributes(
    maxlen: int | None, max_value_len: int | None, initial: Mapping[str, types.AnyValue]
) -> BoundedAttributes:
    """Mutable BoundedAttributes as the SDK builds them; plain values are stored uncleaned."""
    attributes = BoundedAttributes.__new__(BoundedAttributes)
    attributes._dict = {}
    attributes.maxlen = maxlen
    attributes.dropped = 0
    attributes.max_value_len = max_value_len
    attributes._lock = threading.Lock()
    attributes._immutable = False
    store_attributes(attributes, initial)
    return attributes


def own_attributes(span: SdkReadableSpan) -> Mapping[str, Any]:
    """A span's own attributes, not the read-only proxy its property makes of them."""
    attributes = getattr(span, "_attributes", None)
    return attributes if attributes is not None else cast(Mapping[str, Any], span.attributes)


def attribute_dict(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """The dict inside BoundedAttributes, which iterates without its Python-level methods."""
    inner = getattr(attributes, "_dict", None)
    return inner if isinstance(inner, dict) else attributes


def store_attributes(attributes: BoundedAttributes, values: Mapping[str, types.AnyValue]) -> None:
    """Plain values straight in, until the first other one: from there on, the SDK's way.

    Keeping the order keeps the SDK's result exactly, eviction at the count limit included.
    """
    rest: dict[Any, types.AnyValue] | None = None
    for key, value in values.items():
        if rest is None and _plain_into(attributes, key, value):
            continue
        if rest is None:
            rest = {}
        rest[key] = value
    if rest:
        attributes._set_items(rest)


def _plain_into(attributes: BoundedAttributes, key: str, value: types.AnyValue) -> bool:
    """Stores a common-typed value as BoundedAttributes would; False leaves it to the SDK."""
    kind = type(value)
    if kind is str:
        limit = attributes.max_value_len
        if limit is not None and len(cast(str, value)) > limit:
            return False
    elif kind not in PLAIN_TYPES:
        return False
    if type(key) is not str or not key:
        return False
    stored = attributes._dict
    if key in stored:
        del stored[key]
    elif attributes.maxlen is not None and len(stored) >= attributes.maxlen:
        return False
    stored[key] = value
    return True
