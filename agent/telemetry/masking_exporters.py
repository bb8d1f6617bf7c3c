"""Exporter wrappers that mask secrets in every span and log record before export."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status

from agent.telemetry.exporters import Wrapping
from agent.telemetry.masking import Masker, strings_in


class MaskingSpanExporter(Wrapping[SpanExporter], SpanExporter):
    """Masks span names, attributes, events (exception messages), links and status."""

    def __init__(self, inner: SpanExporter, masker: Masker) -> None:
        super().__init__(inner)
        self._masker = masker

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Exports the batch as it is, or with masked copies of the spans that hold a secret."""
        # One search over the whole batch: almost every batch has nothing to mask.
        if not self._masker.finds([_span_texts(span) for span in spans]):
            return self._inner.export(spans)
        return self._inner.export([self._mask(span) for span in spans])

    def _mask(self, span: ReadableSpan) -> ReadableSpan:
        mask = self._masker
        if not mask.finds(_span_texts(span)):
            return span
        status = span.status
        if status.description:
            status = Status(status.status_code, mask.mask(status.description))
        return ReadableSpan(
            name=mask.mask(span.name),
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=mask.mask_attributes(span.attributes or {}),
            events=[
                Event(event.name, mask.mask_attributes(event.attributes or {}), event.timestamp)
                for event in span.events
            ],
            links=[
                Link(link.context, mask.mask_attributes(link.attributes or {}))
                for link in span.links
            ],
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )


def _span_texts(span: ReadableSpan) -> list[str]:
    """Every string of a span that masking reads: name, status, attributes, events, links."""
    texts = [span.name, span.status.description or ""]
    strings_in(texts, span.attributes)
    for event in span.events:
        texts.append(event.name)
        strings_in(texts, event.attributes)
    for link in span.links:
        strings_in(texts, link.attributes)
    return texts


class MaskingLogExporter(Wrapping[LogRecordExporter], LogRecordExporter):
    """Masks log record bodies and attributes (structured logs arrive masked; anything else not)."""

    def __init__(self, inner: LogRecordExporter, masker: Masker) -> None:
        super().__init__(inner)
        self._masker = masker

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        """Exports the batch as it is, or with masked copies of the records that hold a secret."""
        if not self._masker.finds([_record_texts(record) for record in batch]):
            return self._inner.export(batch)
        return self._inner.export([self._mask(record) for record in batch])

    def _mask(self, record: ReadableLogRecord) -> ReadableLogRecord:
        if not self._masker.finds(_record_texts(record)):
            return record
        # As the SDK's batch processor does: a shallow copy of the API record, then new fields.
        masked = copy.copy(record.log_record)
        masked.body = self._masker.mask_value(masked.body)
        masked.attributes = self._masker.mask_attributes(masked.attributes or {})
        return dataclasses.replace(record, log_record=masked)


def _record_texts(record: ReadableLogRecord) -> list[str]:
    texts: list[str] = []
    strings_in(texts, record.log_record.body)
    strings_in(texts, record.log_record.attributes)
    return texts
