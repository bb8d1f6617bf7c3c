"""LeanTracer makes what the SDK tracer makes: the same calls export the same spans."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from agent.config import Settings
from agent.telemetry.setup import telemetry_for_tests
from agent.telemetry.tracing import LeanSpan, LeanTracer, LeanTracerProvider
from tests.telemetry.span_scenarios import LIMITS, SAMPLERS, SCENARIOS, Counting, Scenario


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
        id_generator=Counting(random_ids),
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
