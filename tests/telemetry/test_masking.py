"""Secret masking: literal secrets, URL credentials, token parameters, auth headers, spans."""

from __future__ import annotations

import random

from opentelemetry import trace
from opentelemetry._logs import LogRecord
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.config import settings_from_mapping
from agent.telemetry.masking import Masker
from agent.telemetry.masking_exporters import MaskingLogExporter, MaskingSpanExporter
from tests.support.telemetry import telemetry_for_tests


def test_configured_secret_is_replaced_wherever_it_appears() -> None:
    masker = Masker(["s3cr3t-value"])
    assert (
        masker.mask("login failed for s3cr3t-value (s3cr3t-value)") == "login failed for *** (***)"
    )


def test_secrets_shorter_than_four_characters_are_left_alone() -> None:
    masker = Masker(["abc"])
    assert masker.mask("abc abcd") == "abc abcd"


def test_longer_secret_containing_a_shorter_one_is_masked_whole() -> None:
    masker = Masker(["pass", "password-long"])
    assert masker.mask("x password-long y") == "x *** y"


def test_url_userinfo_is_masked() -> None:
    masker = Masker()
    assert masker.mask_url("redis://user:pw@redis:6379/0") == "redis://***@redis:6379/0"
    assert masker.mask("see https://:tok@example.com/x") == "see https://***@example.com/x"


def test_token_query_parameters_are_masked_case_insensitively() -> None:
    masker = Masker()
    url = (
        "https://r2.example/f?X-Amz-Signature=abc&X-Amz-Credential=cred&name=report.pdf"
        "&Token=t1&access_token=t2&API_KEY=k&sig=s&dl_token=d&code=c"
    )
    assert masker.mask_url(url) == (
        "https://r2.example/f?X-Amz-Signature=***&X-Amz-Credential=***&name=report.pdf"
        "&Token=***&access_token=***&API_KEY=***&sig=***&dl_token=***&code=***"
    )


def test_ordinary_query_parameters_are_kept() -> None:
    masker = Masker()
    assert (
        masker.mask_url("https://x.example/?page=2&keyword=a")
        == "https://x.example/?page=2&keyword=a"
    )


def test_authorization_header_values_are_masked() -> None:
    masker = Masker()
    assert masker.mask("Authorization: Bearer eyJhbGciOi.x.y") == "Authorization: Bearer ***"
    assert (
        masker.mask('{"authorization": "Basic dXNlcjpwYXNz"}') == '{"authorization": "Basic ***"}'
    )
    assert masker.mask("sent Bearer abcdefgh12345") == "sent Bearer ***"


def test_prose_after_basic_is_not_mistaken_for_a_credential() -> None:
    assert Masker().mask("Basic auth failed") == "Basic auth failed"


def test_mask_value_walks_dicts_lists_and_tuples() -> None:
    masker = Masker(["hunter2hunter2"])
    value = {"a": ["hunter2hunter2", ("x", "https://u:p@h/")], "n": 3, "b": {"c": "hunter2hunter2"}}
    assert masker.mask_value(value) == {
        "a": ["***", ("x", "https://***@h/")],
        "n": 3,
        "b": {"c": "***"},
    }


def test_mask_attributes_returns_a_masked_copy() -> None:
    masker = Masker(["tok-123456"])
    attributes = {"url.full": "https://h/?token=tok-123456", "count": 2}
    assert masker.mask_attributes(attributes) == {"url.full": "https://h/?token=***", "count": 2}
    assert attributes["url.full"] == "https://h/?token=tok-123456"


def test_secret_in_a_span_attribute_and_exception_message_is_masked_before_export() -> None:
    settings = settings_from_mapping({"webhook": {"secret": "whsec-0123456789"}})
    telemetry, spans, _reader, _logs = telemetry_for_tests(settings)
    with telemetry.tracer("test").start_as_current_span("webhook.deliver") as span:
        span.set_attribute("webhook.note", "signed with whsec-0123456789")
        try:
            raise RuntimeError("bad key whsec-0123456789 at https://u:pw@app/hook")
        except RuntimeError as exc:
            span.record_exception(exc)
    telemetry.shutdown(2.0)
    (finished,) = spans.get_finished_spans()
    assert finished.attributes is not None
    assert finished.attributes["webhook.note"] == "signed with ***"
    event = finished.events[0]
    assert event.attributes is not None
    assert event.attributes["exception.message"] == "bad key *** at https://***@app/hook"
    assert "whsec-0123456789" not in str(event.attributes["exception.stacktrace"])


def test_secret_in_a_list_attribute_or_a_link_is_masked_before_export() -> None:
    settings = settings_from_mapping({"r2": {"fetch_token": "r2tok-abcdef"}})
    telemetry, spans, _reader, _logs = telemetry_for_tests(settings)
    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("poll") as poll:
        linked = poll.get_span_context()
    link = trace.Link(linked, {"note": "token r2tok-abcdef"})
    with tracer.start_as_current_span("email.process", links=[link]) as span:
        span.set_attribute("urls", ["https://h/a", "https://h/b?token=r2tok-abcdef"])
    telemetry.shutdown(2.0)
    finished = next(s for s in spans.get_finished_spans() if s.name == "email.process")
    assert finished.attributes is not None
    assert list(finished.attributes["urls"]) == ["https://h/a", "https://h/b?token=***"]
    assert finished.links[0].attributes == {"note": "token ***"}


def test_a_secret_only_in_one_plain_or_list_attribute_is_masked_before_export() -> None:
    settings = settings_from_mapping({"r2": {"fetch_token": "r2tok-abcdef"}})
    telemetry, spans, _reader, _logs = telemetry_for_tests(settings)
    tracer = telemetry.tracer("test")
    with tracer.start_as_current_span("plain", attributes={"n": 1, "note": "r2tok-abcdef"}):
        pass
    listed = {"ok": True, "notes": ["a", "r2tok-abcdef"]}
    with tracer.start_as_current_span("list", attributes=listed):
        pass
    telemetry.shutdown(2.0)
    exported = {s.name: s.attributes for s in spans.get_finished_spans()}
    assert exported["plain"] == {"n": 1, "note": "***"}
    assert exported["list"] == {"ok": True, "notes": ("a", "***")}


def test_the_substring_precheck_never_skips_a_string_the_pattern_would_mask() -> None:
    masker = Masker(["s3cr3t-value"])
    pieces = [
        *("https://", "u:p@", "host", "/p", "?", "&", "token=", "sig=", "x=", "Bearer "),
        *("basic ", "Authorization: ", "abcdefgh12345", "s3cr3t-value", " ", "=", "@", "TOKEN"),
    ]
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
        expected = masker._pattern.sub(masker._replace, text)
        assert masker.mask(text) == expected, text
        assert masker.finds(text) == (expected != text), text


def test_a_batch_is_searched_once_and_only_its_dirty_spans_are_copied() -> None:
    searches: list[str] = []

    class Counting(Masker):
        def finds(self, value: object) -> bool:
            searches.append(str(value))
            return super().finds(value)

    exporter = InMemorySpanExporter()
    masking = MaskingSpanExporter(exporter, Counting(["whsec-0123456789"]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("test")
    batch = []
    for index in range(50):
        with tracer.start_as_current_span(f"clean {index}", attributes={"n": index}) as span:
            if index == 31:
                span.add_event("retry", {"why": "key whsec-0123456789 refused"})
        batch.append(span)

    masking.export(batch[:31])  # nothing to mask: the spans themselves go out
    assert list(exporter.get_finished_spans()) == batch[:31]
    assert len(searches) == 1
    exporter.clear()
    masking.export(batch)
    exported = list(exporter.get_finished_spans())
    assert [s.name for s in exported] == [s.name for s in batch]
    pairs = zip(exported, batch, strict=True)
    assert all(sent is kept for sent, kept in pairs if sent.name != "clean 31")
    assert exported[31] is not batch[31]
    assert exported[31].events[0].attributes == {"why": "key *** refused"}


def test_a_log_event_is_searched_once_and_copied_only_when_it_holds_a_secret() -> None:
    masker = Masker(["s3cr3t-value"])
    clean = {"event": "webhook.delivery", "status_code": 200, "urls": ["https://h/a"]}
    assert masker.mask_event(clean) is clean
    dirty = {"event": "x", "context": {"urls": ["https://h/a", "https://h/b?token=abc"]},
             "note": ("ok", "key s3cr3t-value")}  # fmt: skip
    masked = masker.mask_event(dirty)
    assert masked == {"event": "x", "context": {"urls": ["https://h/a", "https://h/b?token=***"]},
                      "note": ("ok", "key ***")}  # fmt: skip
    assert dirty["note"] == ("ok", "key s3cr3t-value")


def test_finds_never_misses_a_secret_in_any_string_of_a_container() -> None:
    masker = Masker(["s3cr3t-value"])
    pieces = ["plain", "https://u:p@h/", "?sig=abc", "Bearer abcdefgh1234", "s3cr3t-value", "="]
    rng = random.Random(11)
    for _ in range(2000):
        strings = [rng.choice(pieces) + rng.choice(pieces) for _ in range(rng.randint(1, 4))]
        expected = any(masker.mask(text) != text for text in strings)
        if expected:
            assert masker.finds({"a": strings, "b": tuple(strings)}), strings
        else:
            assert masker.mask_value(strings) == strings


def test_a_log_record_emitted_past_structlog_is_masked_before_export() -> None:
    settings = settings_from_mapping({"webhook": {"secret": "whsec-0123456789"}})
    telemetry, _spans, _reader, logs = telemetry_for_tests(settings)
    assert telemetry.logger_provider is not None
    bridge = telemetry.logger_provider.get_logger("third-party")
    bridge.emit(body="signed with whsec-0123456789",
                attributes={"url": "https://u:pw@app/hook", "n": 3})  # fmt: skip
    bridge.emit(body="clean", attributes={"n": 4})
    telemetry.shutdown(2.0)
    masked, clean = (record.log_record for record in logs.get_finished_logs())
    assert masked.body == "signed with ***"
    assert dict(masked.attributes or {}) == {"url": "https://***@app/hook", "n": 3}
    assert (clean.body, dict(clean.attributes or {})) == ("clean", {"n": 4})


def test_a_log_batch_without_secrets_is_exported_as_it_is() -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    masking = MaskingLogExporter(exporter, Masker(["whsec-0123456789"]))
    records = [
        ReadableLogRecord(LogRecord(body=f"line {i}", attributes={"n": i}), resource=Resource({}))
        for i in range(3)
    ]
    masking.export(records)
    assert all(sent is kept for sent, kept in zip(exporter.get_finished_logs(), records,
                                                  strict=True))  # fmt: skip


def test_a_secret_remembered_at_run_time_is_masked_from_then_on() -> None:
    masker = Masker(["configured-secret"])
    token = "at-fetched-at-run-time-1234"
    assert masker.mask(f"got {token}") == f"got {token}"

    masker.remember(token)

    assert masker.mask(f"got {token} and configured-secret") == "got *** and ***"
    assert token in masker.secrets


def test_credentials_as_json_members_are_masked() -> None:
    masker = Masker()
    text = '{"access_token": "ya29.a0AfH6", "refresh_token":"1//0gLx", "expires_in": 3599}'

    masked = masker.mask(text)

    assert masked == '{"access_token": "***", "refresh_token":"***", "expires_in": 3599}'
