"""LeanTracer makes what the SDK tracer makes: the same calls export the same spans."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from agent.config import Settings
from agent.telemetry.setup import telemetry_for_tests
from agent.telemetry.tracing import LeanSpan, LeanTracer, LeanTracerProvider

Scenario = Callable[[trace.Tracer], None]

REMOTE_SAMPLED = SpanContext(
    trace_id=0xABC,
    span_id=0xDEF,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "v1")]),
)
REMOTE_UNSAMPLED = SpanContext(
    trace_id=0xABD,
    span_id=0xDF0,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.RANDOM_TRACE_ID),
)


class _Counting(IdGenerator):
    """Ids 1, 2, 3...: both tracers see the same ids, so their spans compare field by field."""

    def __init__(self, random: bool) -> None:
        self._next = itertools.count(1)
        self._random = random

    def is_trace_id_random(self) -> bool:
        return self._random

    def generate_span_id(self) -> int:
        return next(self._next)

    def generate_trace_id(self) -> int:
        # Spread over the ratio sampler's range (it compares the low 64 bits with a bound).
        return (next(self._next) * 0x9E3779B97F4A7C15) % (1 << 64) | (1 << 100)


class _Boom(BaseException):
    """Not an Exception: like GeneratorExit, the span ends but records no error."""


class _Tagging(Sampler):
    """Adds an attribute and the trace state, and records spans named "child" without sampling."""

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_ONLY if name == "child" else Decision.RECORD_AND_SAMPLE
        tagged = {**(attributes or {}), "sampler.tag": name}
        return SamplingResult(decision, tagged, TraceState([("sampler", "tagging")]))

    def get_description(self) -> str:
        return "Tagging"


class _Every(SpanProcessor):
    """Keeps every ended span, sampled or only recorded (an exporter sees only the sampled)."""

    def __init__(self, ended: list[ReadableSpan]) -> None:
        self._ended = ended

    def on_end(self, span: ReadableSpan) -> None:
        self._ended.append(span)


def _exported(
    provider_class: type[TracerProvider],
    scenario: Scenario,
    sampler: Sampler,
    limits: SpanLimits,
    random_ids: bool = True,
) -> list[dict[str, Any]]:
    ended: list[ReadableSpan] = []
    provider = provider_class(
        resource=Resource.create({"service.name": "lean"}),
        sampler=sampler,
        id_generator=_Counting(random_ids),
        span_limits=limits,
        shutdown_on_exit=False,
    )
    provider.add_span_processor(_Every(ended))
    scenario(provider.get_tracer("scenario", "1.0"))
    provider.shutdown()
    return [_fields(span) for span in ended]


def _fields(span: ReadableSpan) -> dict[str, Any]:
    """Everything exported except clock readings (and the stack trace's tracer frames)."""
    events = []
    for event in span.events:
        attributes = dict(event.attributes or {})
        stack = attributes.pop("exception.stacktrace", None)
        if stack is not None:
            assert "scenario raised" in str(stack)
        events.append((event.name, attributes, event.dropped_attributes))
    assert span.start_time is not None
    assert span.end_time is not None
    return {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "kind": span.kind,
        "attributes": dict(span.attributes or {}),
        "attribute_order": list(span.attributes or {}),
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
        "events": events,
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "scope": span.instrumentation_scope,
        "resource": span.resource.attributes,
    }


def _typed_attributes(tracer: trace.Tracer) -> None:
    opaque = object()
    with tracer.start_as_current_span(
        "typed",
        attributes={"s": "text", "b": True, "i": -3, "f": 0.5, "list": [1, 2], "t": ("a",)},
    ) as span:
        span.set_attribute("bytes", b"\x00\x01")
        span.set_attribute("none", None)
        span.set_attribute("opaque", opaque)
        span.set_attribute("", "empty key")
        span.set_attribute("i", 7)  # replaced: moves to the end, as the SDK orders it
        span.set_attributes({"m": {"k": 1}, "x": 1.5, "later": "z"})
        span.set_attributes({"plain": 1, "then": [True]})


def _limits(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span(
        "limits", attributes={"a": "short", "b": "much too long"}
    ) as span:
        span.set_attributes({"c": 1, "d": "long as well"})
        span.set_attribute("b", "long once more")
        span.set_attribute("e", "longer than five")
        span.set_attribute("a", "again")
        for index in range(4):
            span.add_event(f"event {index}", {"k": "value", "extra": 1, "more": 2})
        span.add_link(REMOTE_SAMPLED, {"why": "because"})
        span.add_link(REMOTE_UNSAMPLED)
        span.add_link(SpanContext(0, 0, False))  # invalid: not added


def _nesting_and_errors(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER) as root:
        with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(StatusCode.OK)
            child.set_status(StatusCode.ERROR, "ignored after OK")
        with pytest.raises(ValueError, match="scenario"), tracer.start_as_current_span("failing"):
            raise ValueError("scenario raised")
        with (
            pytest.raises(KeyError),
            tracer.start_as_current_span(
                "quiet", record_exception=False, set_status_on_exception=False
            ),
        ):
            raise KeyError("scenario raised")
        with pytest.raises(_Boom), tracer.start_as_current_span("base exception"):
            raise _Boom()
        root.set_status(Status(StatusCode.ERROR, "root failed"))
        root.update_name("root renamed")
    root.set_attribute("after end", 1)
    root.add_event("after end")
    root.end()


def _contexts(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("outer"):
        with tracer.start_as_current_span("new root", context=otel_context.Context()):
            pass
        remote = trace.set_span_in_context(NonRecordingSpan(REMOTE_SAMPLED))
        with tracer.start_as_current_span("under remote", context=remote):
            pass
        unsampled = trace.set_span_in_context(NonRecordingSpan(REMOTE_UNSAMPLED))
        with (
            tracer.start_as_current_span("under unsampled", context=unsampled) as dropped,
            tracer.start_as_current_span("unsampled child"),
        ):
            pass
    # What a span that is not exported looks like, reported by one that is.
    seen = dropped.get_span_context()
    report = {"flags": int(seen.trace_flags), "state": seen.trace_state.to_header()}
    with tracer.start_as_current_span("report", context=otel_context.Context(), attributes=report):
        pass
    links = [Link(REMOTE_SAMPLED, {"poll": "cycle"}), Link(SpanContext(0, 0, False))]
    with tracer.start_as_current_span("linked", links=links, start_time=1_000):
        pass
    span = tracer.start_span("manual", start_time=2_000)
    with (
        trace.use_span(span),
        tracer.start_as_current_span("kept open", end_on_exit=False) as kept,
    ):
        pass
    kept.end(end_time=3_000)
    span.end(end_time=4_000)


def _decorators(tracer: trace.Tracer) -> None:
    @tracer.start_as_current_span("decorated")
    def work(value: int) -> int:
        trace.get_current_span().set_attribute("value", value)
        return value * 2

    @tracer.start_as_current_span("decorated async")
    async def work_async(value: int) -> int:
        await asyncio.sleep(0)
        trace.get_current_span().set_attribute("value", value)
        return value + 1

    assert work(2) == 4
    assert work(3) == 6
    assert asyncio.run(work_async(5)) == 6


SCENARIOS: dict[str, Scenario] = {
    "typed attributes": _typed_attributes,
    "limits": _limits,
    "nesting and errors": _nesting_and_errors,
    "contexts": _contexts,
    "decorators": _decorators,
}
SAMPLERS: dict[str, Sampler] = {
    "parent-based always on (inline)": ParentBased(ALWAYS_ON),
    "always on": ALWAYS_ON,
    "parent-based ratio": ParentBased(TraceIdRatioBased(0.5)),
    "parent-based always off": ParentBased(ALWAYS_OFF),
    "parent-based, unsampled parents recorded": ParentBased(
        ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON
    ),
    "tagging, record-only children": _Tagging(),
}
LIMITS = {
    "default limits": SpanLimits(),
    "tight limits": SpanLimits(
        max_span_attributes=4,
        max_span_attribute_length=5,
        max_events=2,
        max_links=1,
        max_event_attributes=2,
        max_link_attributes=1,
    ),
}


@pytest.mark.parametrize("random_ids", [True, False], ids=["random ids", "other ids"])
@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_the_same_calls_export_the_same_spans(
    scenario: Scenario, sampler: Sampler, limits: SpanLimits, random_ids: bool
) -> None:
    sdk = _exported(TracerProvider, scenario, sampler, limits, random_ids)
    lean = _exported(LeanTracerProvider, scenario, sampler, limits, random_ids)
    assert lean == sdk


def test_the_default_sampler_is_decided_inline_and_others_are_asked() -> None:
    def tracer(sampler: Sampler) -> LeanTracer:
        made = LeanTracerProvider(sampler=sampler, shutdown_on_exit=False).get_tracer("t")
        assert isinstance(made, LeanTracer)
        return made

    assert tracer(ParentBased(ALWAYS_ON))._inline_sampling
    for other in (ALWAYS_ON, ParentBased(TraceIdRatioBased(0.5)), ParentBased(ALWAYS_OFF)):
        assert not tracer(other)._inline_sampling


def test_spans_recorded_under_any_sampler_are_lean_spans() -> None:
    for sampler in (ParentBased(TraceIdRatioBased(1.0)), ALWAYS_ON, ParentBased(ALWAYS_ON)):
        exporter = InMemorySpanExporter()
        provider = LeanTracerProvider(sampler=sampler, shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("one"):
            pass
        assert [type(span) for span in exporter.get_finished_spans()] == [LeanSpan]


def test_spans_reach_processors_as_themselves_not_as_copies() -> None:
    seen: list[ReadableSpan] = []

    class Keep(SimpleSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span)

    provider = LeanTracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(Keep(InMemorySpanExporter()))
    with provider.get_tracer("t").start_as_current_span("one") as span:
        pass
    assert seen == [span]
    assert isinstance(span, LeanSpan)
    assert isinstance(span, SdkSpan)


def test_a_resource_merged_in_later_reaches_the_spans_of_existing_tracers() -> None:
    provider = LeanTracerProvider(resource=Resource.create({"a": "1"}), shutdown_on_exit=False)
    ended: list[ReadableSpan] = []
    provider.add_span_processor(_Every(ended))
    tracer = provider.get_tracer("t")
    provider._update_resource(Resource({"process.pid": 4242}))  # what the SDK does after fork
    with tracer.start_as_current_span("after"):
        pass
    assert ended[0].resource.attributes["process.pid"] == 4242
    assert ended[0].resource.attributes["a"] == "1"


def test_one_tracer_per_scope_and_none_when_the_provider_is_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = LeanTracerProvider(shutdown_on_exit=False)
    assert provider.get_tracer("a", "1") is provider.get_tracer("a", "1")
    assert provider.get_tracer("a", "1") is not provider.get_tracer("b", "1")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    disabled = LeanTracerProvider(shutdown_on_exit=False)
    assert not isinstance(disabled.get_tracer("a"), LeanTracer)


def test_the_sidecar_traces_with_lean_spans() -> None:
    telemetry, spans, _reader, _logs = telemetry_for_tests(Settings())
    try:
        with telemetry.tracer("agent.test").start_as_current_span("work"):
            pass
        (span,) = spans.get_finished_spans()
        assert isinstance(span, LeanSpan)
    finally:
        telemetry.shutdown(5.0)


@pytest.fixture(autouse=True)
def _no_leaked_context() -> Iterator[None]:
    before = trace.get_current_span()
    yield
    assert trace.get_current_span() is before
