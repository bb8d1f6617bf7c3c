"""RowSpans ship the rows the shipper would make of the SDK's spans for the same calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Sampler

from agent.config import Settings
from agent.telemetry import rows
from agent.telemetry.row_spans import RowSpan
from agent.telemetry.setup import setup_telemetry
from agent.telemetry.shipper import ShippingSpanProcessor, frame
from agent.telemetry.tracing import LeanSpan, LeanTracerProvider
from tests.telemetry.span_scenarios import LIMITS, SAMPLERS, SCENARIOS, Counting, Scenario


class _Queue:
    """The shipper's batcher as its span processor sees it: add() queues, nothing is sent."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        self.items.append(item)

    def flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        """Nothing to stop."""


def _shipping() -> tuple[ShippingSpanProcessor, _Queue]:
    processor = ShippingSpanProcessor.__new__(ShippingSpanProcessor)
    queue = _Queue()
    processor._use(queue)  # type: ignore[arg-type]
    return processor, queue


class _Sampled(SpanProcessor):
    """What the shipper's processor queues of SDK spans: the sampled ones."""

    def __init__(self) -> None:
        self.items: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        if span.context.trace_flags.sampled:
            self.items.append(span)


def _batch(
    provider_class: type[TracerProvider],
    processor: SpanProcessor,
    scenario: Scenario,
    sampler: Sampler,
    limits: SpanLimits,
) -> Any:
    provider = provider_class(
        resource=Resource.create({"service.name": "rows"}),
        sampler=sampler,
        id_generator=Counting(True),
        span_limits=limits,
        shutdown_on_exit=False,
    )
    provider.add_span_processor(processor)
    scenario(provider.get_tracer("scenario", "1.0"))
    provider.shutdown()
    items = processor.items if isinstance(processor, _Sampled) else []
    return items


def _normalised(items: list[Any]) -> Any:
    """The batch, with clock readings and the tracer frames of stack traces taken out."""
    resources, scopes, batch = rows.span_batch(items)
    frame(("traces", (resources, scopes, batch)))  # marshal can write it
    out = []
    for row in batch:
        events = []
        for name, _, attributes, dropped in row[12] or ():
            attributes = dict(attributes or {})
            stack = attributes.pop("exception.stacktrace", None)
            assert stack is None or "scenario raised" in stack or "Boom" in stack
            events.append((name, attributes, dropped))
        attributes = list((row[10] or {}).items())
        out.append((*row[:6], row[8], row[9], attributes, row[11], events, *row[13:]))
    return resources, scopes, out


@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_row_spans_ship_the_rows_of_the_sdks_spans(
    scenario: Scenario, sampler: Sampler, limits: SpanLimits
) -> None:
    expected = _normalised(_batch(TracerProvider, _Sampled(), scenario, sampler, limits))
    processor, queue = _shipping()
    _batch(LeanTracerProvider, processor, scenario, sampler, limits)
    assert _normalised(queue.items) == expected
    if expected[2]:
        assert any(isinstance(item, tuple) for item in queue.items)


def test_only_sampled_spans_under_the_shipper_alone_are_row_spans() -> None:
    processor, queue = _shipping()
    provider = LeanTracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("alone") as alone:
        pass
    assert isinstance(alone, RowSpan)
    assert isinstance(queue.items[0], tuple)
    other = _Sampled()
    provider.add_span_processor(other)
    with tracer.start_as_current_span("beside another processor") as beside:
        pass
    assert isinstance(beside, LeanSpan)
    assert [span.name for span in other.items] == ["beside another processor"]
    assert queue.items[1] is beside


def test_a_row_span_still_open_when_a_processor_is_added_reaches_both() -> None:
    processor, queue = _shipping()
    provider = LeanTracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    span = provider.get_tracer("t").start_span("open", attributes={"k": "v"})
    other = _Sampled()
    provider.add_span_processor(other)
    span.end()
    assert isinstance(span, RowSpan)
    (readable,) = other.items
    assert (readable.name, dict(readable.attributes or {})) == ("open", {"k": "v"})
    assert rows.span_batch(queue.items)[2] == rows.span_batch([readable])[2]


def test_the_sidecar_ships_row_spans() -> None:
    telemetry = setup_telemetry(Settings(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        with telemetry.tracer("agent.test").start_as_current_span("work") as span:
            assert trace.get_current_span() is span
        assert isinstance(span, RowSpan)
    finally:
        telemetry.shutdown(2.0)


@pytest.fixture(autouse=True)
def _no_leaked_context() -> Iterator[None]:
    before = trace.get_current_span()
    yield
    assert trace.get_current_span() is before
