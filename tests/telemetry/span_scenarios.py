"""The tracing scenarios both tracers must export alike: every API call, sampler and limit."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits
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


class Counting(IdGenerator):
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


class Boom(BaseException):
    """Not an Exception: like GeneratorExit, the span ends but records no error."""


class Tagging(Sampler):
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
        with pytest.raises(Boom), tracer.start_as_current_span("base exception"):
            raise Boom()
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
    # Links without attributes, as the pipeline links an email to its poll: one, then two.
    with tracer.start_as_current_span("linked plainly", links=[Link(REMOTE_SAMPLED)]):
        pass
    with tracer.start_as_current_span(
        "linked plainly twice", links=[Link(REMOTE_SAMPLED), Link(REMOTE_UNSAMPLED)]
    ):
        pass
    generated = (Link(context) for context in (REMOTE_SAMPLED, REMOTE_UNSAMPLED))
    with tracer.start_as_current_span("links from a generator", links=generated):  # type: ignore[arg-type]
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
    "tagging, record-only children": Tagging(),
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
