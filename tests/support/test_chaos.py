"""The chaos test's invariants flag what they promise to flag, and only that."""

from __future__ import annotations

from tests.fixtures.faulty_receiver import Delivery
from tests.support.chaos import (
    Appended,
    MailboxSample,
    Outage,
    Sample,
    false_claims,
    forbidden_duplicates,
    unaccounted,
)


def _ack(key: str, at: float, acked: bool = True) -> Delivery:
    return Delivery(key, f"<{key}@test>", at, acked)


def _sample(at: float, livez: int, status: str, success: float | None) -> Sample:
    box = MailboxSample(status, leader=True, last_success=success)
    return Sample(at, at, 0.0, livez, 200, {"default": box})


def test_a_mail_neither_acknowledged_nor_dead_lettered_is_unaccounted() -> None:
    mails = [Appended("<a>", "ka", 1.0), Appended("<b>", "kb", 1.0), Appended("<c>", "kc", 1.0)]
    assert unaccounted(mails, acked={"ka"}, dead={"kb"}) == ["<c>"]


def test_a_second_acknowledgement_is_allowed_only_across_a_sigkill() -> None:
    deliveries = [_ack("k1", 10.0), _ack("k1", 12.0), _ack("k2", 20.0), _ack("k2", 21.0)]
    found = forbidden_duplicates(deliveries, kills=[11.0, 25.0])
    assert found == ["k2 acknowledged at 20.000 and again at 21.000"]


def test_requests_that_were_not_acknowledged_never_count_as_repeats() -> None:
    deliveries = [_ack("k", 1.0, acked=False), _ack("k", 2.0), _ack("k", 3.0, acked=False)]
    assert forbidden_duplicates(deliveries, kills=[]) == []


def test_livez_200_for_a_leader_without_a_recent_cycle_is_a_false_claim() -> None:
    samples = [_sample(100.0, 200, "error", success=80.0), _sample(100.0, 200, "ok", 98.0)]
    (claim,) = false_claims(samples, [], budget=5.0, slack=1.0)
    assert "livez 200, yet no successful cycle for 20.0s" in claim


def test_a_success_reported_inside_an_outage_is_a_false_claim() -> None:
    samples = [_sample(108.0, 500, "error", success=105.0)]
    outage = Outage("dovecot", 100.0, 110.0)
    (claim,) = false_claims(samples, [outage], budget=5.0, slack=1.0)
    assert "last_success 105.000 during the dovecot outage" in claim


def test_a_leader_must_fail_livez_once_an_outage_outlasts_its_budget() -> None:
    outage = Outage("dovecot", 100.0, 120.0)
    honest = [_sample(115.0, 500, "stalled", success=99.0)]
    assert false_claims(honest, [outage], budget=5.0, slack=1.0) == []
    lying = [_sample(115.0, 200, "error", success=99.0)]
    claims = false_claims(lying, [outage], budget=5.0, slack=1.0)
    assert "115.000 default: livez 200 15.0s into the dovecot outage" in claims
