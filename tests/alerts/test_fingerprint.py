"""Fingerprints match Alertmanager's, so receivers correlate our alerts with its alerts."""

from __future__ import annotations

from agent.alerts.fingerprint import fingerprint


def test_fingerprint_matches_alertmanager_vector() -> None:
    assert fingerprint({"job": "foo", "severity": "warning"}) == "9266ef3da838ad95"


def test_fingerprint_does_not_depend_on_label_order() -> None:
    forward = {"alertname": "A", "severity": "warning", "zone": "eu"}
    backward = dict(reversed(list(forward.items())))
    assert fingerprint(forward) == fingerprint(backward)


def test_empty_label_set_is_the_fnv_offset() -> None:
    assert fingerprint({}) == "cbf29ce484222325"


def test_separator_keeps_name_and_value_apart() -> None:
    assert fingerprint({"ab": "c"}) != fingerprint({"a": "bc"})
