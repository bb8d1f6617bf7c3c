"""The [alerts] table is validated into rules; every mistake names its key."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agent.alerts.rules import DEFAULT_RULES, load_alert_config, render
from agent.config import ConfigError

GOOD = {"alert": "A", "metric": "system.cpu.utilization", "op": ">", "threshold": 0.5}


def load(raw: dict[str, Any]) -> Any:
    """Loads with the export interval of 15 s."""
    return load_alert_config(raw, source="sidecar.toml", default_interval=15.0)


def test_absent_rules_give_the_defaults() -> None:
    cfg = load({})
    names = [r.alert for r in cfg.rules]
    assert names == [r.alert for r in DEFAULT_RULES]
    assert {
        "HighWebhookErrorRate",
        "HighMemoryUsage",
        "CriticalMemoryUsage",
        "HighDiskUsage",
        "HighCpuUsage",
        "PollerStalled",
        "CollectorExportsFailing",
        "MailDeadLettered",
        "R2TransfersFailing",
        "R2TransfersTimingOut",
        "CertificateExpiresSoon",
        "MailboxAuthFailing",
    } == set(names)


def test_default_rules_reproduce_the_seed_thresholds() -> None:
    rules = {r.alert: r for r in load({}).rules}
    assert (rules["HighWebhookErrorRate"].metric, rules["HighWebhookErrorRate"].threshold) == (
        "webhook.error_ratio",
        0.10,
    )
    assert rules["HighMemoryUsage"].threshold == 0.80
    assert rules["CriticalMemoryUsage"].labels["severity"] == "critical"
    assert rules["HighDiskUsage"].threshold == 0.85
    assert (rules["HighCpuUsage"].threshold, rules["HighCpuUsage"].for_) == (0.90, 300.0)
    timeouts = rules["R2TransfersTimingOut"]
    assert (timeouts.function, timeouts.window, timeouts.match) == (
        "increase",
        900.0,
        {"outcome": "timeout"},
    )


def test_mail_dead_lettered_fires_on_any_dead_letter_per_mailbox_and_reason_as_critical() -> None:
    rule = {r.alert: r for r in load({}).rules}["MailDeadLettered"]
    assert (rule.function, rule.metric, rule.match, rule.op, rule.threshold, rule.for_) == (
        "increase",
        "imap.messages",
        {"outcome": "dead_lettered"},
        ">",
        0.0,
        0.0,
    )
    assert rule.labels == {"severity": "critical"}
    assert "{{ labels.imap_mailbox }}" in rule.annotations["summary"]
    assert "{{ labels.error_type }}" in rule.annotations["summary"]


def test_r2_transfers_failing_is_the_share_of_every_outcome_but_success() -> None:
    rule = {r.alert: r for r in load({}).rules}["R2TransfersFailing"]
    assert rule.function == "ratio"
    assert rule.numerator is not None
    assert rule.denominator is not None
    assert (rule.numerator.metric, rule.numerator.match, rule.numerator.exclude) == (
        "r2.transfers",
        {},
        {"outcome": "success"},
    )
    assert (rule.denominator.metric, rule.denominator.match, rule.denominator.exclude) == (
        "r2.transfers",
        {},
        {},
    )
    assert (rule.window, rule.threshold, rule.resolve_threshold, rule.min_denominator) == (
        900.0,
        0.25,
        0.10,
        5.0,
    )
    assert (rule.no_data, rule.labels) == ("ok", {"severity": "warning"})


def test_exclude_is_read_on_a_rule_and_on_each_ratio_series() -> None:
    increase = GOOD | {
        "alert": "NotOk",
        "metric": "r2.transfers",
        "function": "increase",
        "window": "5m",
        "exclude": {"outcome": "success"},
    }
    ratio = {
        "alert": "Share",
        "function": "ratio",
        "window": "5m",
        "op": ">",
        "threshold": 0.5,
        "min_denominator": 10,
        "numerator": {"metric": "r2.transfers", "exclude": {"outcome": "success"}},
        "denominator": {"metric": "r2.transfers", "match": {"r2.provider": "dropbox"}},
    }
    rules = {r.alert: r for r in load({"use_defaults": False, "rules": [increase, ratio]}).rules}
    assert rules["NotOk"].exclude == {"outcome": "success"}
    assert rules["Share"].numerator is not None
    assert rules["Share"].numerator.exclude == {"outcome": "success"}
    assert rules["Share"].min_denominator == 10.0


def test_evaluation_interval_defaults_to_the_export_interval() -> None:
    assert load({}).evaluation_interval == 15.0
    assert load({"evaluation_interval": "30s"}).evaluation_interval == 30.0


def test_use_defaults_false_drops_them() -> None:
    cfg = load({"use_defaults": False, "rules": [GOOD]})
    assert [r.alert for r in cfg.rules] == ["A"]


def test_user_rule_with_a_default_name_replaces_it() -> None:
    cfg = load({"rules": [GOOD | {"alert": "HighCpuUsage", "threshold": 0.5}]})
    cpu = [r for r in cfg.rules if r.alert == "HighCpuUsage"]
    assert [(r.threshold, r.for_) for r in cpu] == [(0.5, 0.0)]
    assert len(cfg.rules) == len(DEFAULT_RULES)


def test_full_rule_schema_is_read() -> None:
    raw = {
        "evaluation_interval": "15s",
        "repeat_interval": "4h",
        "send_resolved": True,
        "rules": [
            {
                "alert": "HighWebhookErrorRate",
                "metric": "webhook.error_ratio",
                "match": {},
                "function": "value",
                "op": ">",
                "threshold": 0.10,
                "resolve_threshold": 0.08,
                "for": "5m",
                "keep_firing_for": "0s",
                "no_data": "keep_last",
                "labels": {"severity": "warning"},
                "annotations": {"summary": "Webhook error rate {{ value }} over 24h"},
            }
        ],
    }
    cfg = load(raw)
    rule = next(r for r in cfg.rules if r.alert == "HighWebhookErrorRate")
    assert (rule.resolve_threshold, rule.for_, cfg.repeat_interval) == (0.08, 300.0, 14400.0)


def test_a_histogram_is_read_through_its_count_and_sum() -> None:
    rule = GOOD | {"metric": "imap.poll.duration.count", "function": "increase", "window": "5m"}
    assert load({"rules": [rule]}).rules[-1].metric == "imap.poll.duration.count"


BAD = [
    ({"colour": "red"}, "sidecar.toml: alerts.colour: unknown key"),
    ({"evaluation_interval": "soon"}, "alerts.evaluation_interval: expected a duration"),
    ({"send_resolved": "yes"}, "alerts.send_resolved: expected true or false"),
    ({"rules": {"alert": "A"}}, "alerts.rules: expected an array of tables"),
    (
        {"rules": [GOOD, GOOD | {"metric": "foo.bar"}]},
        "alerts.rules[1].metric: unknown metric 'foo.bar'",
    ),
    ({"rules": [GOOD | {"shape": 1}]}, "alerts.rules[0].shape: unknown key"),
    ({"rules": [GOOD | {"function": "avg"}]}, "alerts.rules[0].function: unknown function 'avg'"),
    ({"rules": [GOOD | {"op": "=>"}]}, "alerts.rules[0].op: unknown operator '=>'"),
    ({"rules": [GOOD | {"no_data": "panic"}]}, "alerts.rules[0].no_data: unknown policy 'panic'"),
    (
        {"rules": [{k: v for k, v in GOOD.items() if k != "alert"}]},
        "alerts.rules[0].alert: expected a non-empty string",
    ),
    (
        {"rules": [{k: v for k, v in GOOD.items() if k != "threshold"}]},
        "alerts.rules[0].threshold: required",
    ),
    ({"rules": [GOOD | {"threshold": "high"}]}, "alerts.rules[0].threshold: expected a number"),
    (
        {"rules": [GOOD | {"function": "increase"}]},
        "alerts.rules[0].metric: 'system.cpu.utilization' is a gauge, not a counter",
    ),
    (
        {"rules": [GOOD | {"metric": "r2.transfers", "function": "rate"}]},
        "alerts.rules[0].window: required by function 'rate'",
    ),
    ({"rules": [GOOD | {"window": "5m"}]}, "alerts.rules[0].window: function 'value' takes no"),
    (
        {"rules": [GOOD | {"metric": "imap.poll.duration"}]},
        "alerts.rules[0].metric: 'imap.poll.duration' is a histogram; use",
    ),
    (
        {
            "rules": [
                {
                    "alert": "R",
                    "function": "ratio",
                    "window": "1h",
                    "op": ">",
                    "threshold": 1,
                    "numerator": {"metric": "r2.transfers"},
                }
            ]
        },
        "alerts.rules[0].denominator: required by function 'ratio'",
    ),
    (
        {
            "rules": [
                {
                    "alert": "R",
                    "function": "ratio",
                    "window": "1h",
                    "op": ">",
                    "threshold": 1,
                    "numerator": {"metric": "r2.transfers", "labels": {}},
                    "denominator": {"metric": "r2.transfers"},
                }
            ]
        },
        "alerts.rules[0].numerator.labels: unknown key",
    ),
    (
        {"rules": [GOOD | {"resolve_threshold": 0.9}]},
        "alerts.rules[0].resolve_threshold: must lie on the resolved side",
    ),
    ({"rules": [GOOD | {"for": "later"}]}, "alerts.rules[0].for: expected a duration"),
    (
        {"rules": [GOOD | {"labels": {"team-name": "x"}}]},
        "alerts.rules[0].labels.team-name: invalid label name",
    ),
    (
        {"rules": [GOOD | {"labels": {"severity": 3}}]},
        "alerts.rules[0].labels.severity: expected a string",
    ),
    (
        {"rules": [GOOD | {"annotations": {"summary": "{{ $value }}"}}]},
        "alerts.rules[0].annotations.summary: unknown template '{{ $value }}'",
    ),
    ({"rules": [GOOD, GOOD]}, "alerts.rules[1].alert: duplicate alert name 'A'"),
    (
        {"rules": [GOOD | {"exclude": {"outcome": 1}}]},
        "alerts.rules[0].exclude.outcome: expected a string",
    ),
    (
        {"rules": [GOOD | {"min_denominator": 5}]},
        "alerts.rules[0].min_denominator: only function 'ratio' takes it",
    ),
    (
        {
            "rules": [
                {
                    "alert": "R",
                    "function": "ratio",
                    "window": "1h",
                    "op": ">",
                    "threshold": 1,
                    "min_denominator": -1,
                    "numerator": {"metric": "r2.transfers"},
                    "denominator": {"metric": "r2.transfers"},
                }
            ]
        },
        "alerts.rules[0].min_denominator: must not be negative",
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_config_is_an_error_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(raw)
    assert message in str(caught.value)
    assert str(caught.value).startswith("sidecar.toml: ")


def test_annotations_substitute_value_and_labels() -> None:
    text = render(
        "{{ value }} on {{ labels.mount }} ({{labels.missing}})", 0.912345, {"mount": "/"}
    )
    assert text == "0.9123 on / ()"


def test_annotations_find_labels_by_their_attribute_name() -> None:
    assert render("{{ labels.imap.mailbox }}", None, {"imap_mailbox": "INBOX"}) == "INBOX"


def test_the_sidecar_evaluates_its_rules_by_default() -> None:
    assert (load({}).evaluator, load({}).evaluator_url) == ("sidecar", "")


@pytest.mark.parametrize("evaluator", ["sidecar", "prometheus", "both"])
def test_each_evaluator_is_accepted_with_where_to_find_the_alerts(evaluator: str) -> None:
    cfg = load({"evaluator": evaluator, "evaluator_url": "http://prometheus:9090"})
    assert (cfg.evaluator, cfg.evaluator_url) == (evaluator, "http://prometheus:9090")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"evaluator": "thanos"}, "alerts.evaluator: expected one of sidecar, prometheus, both"),
        ({"evaluator": "prometheus"}, "alerts.evaluator_url: required when alerts.evaluator"),
        ({"evaluator_url": "prometheus:9090"}, "alerts.evaluator_url: expected an http(s) URL"),
        ({"evaluator_url": 9090}, "alerts.evaluator_url: expected an http(s) URL"),
    ],
)
def test_a_bad_evaluator_is_an_error_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(raw)


def test_a_bad_evaluator_url_is_not_repeated_in_the_error() -> None:
    with pytest.raises(ConfigError) as caught:
        load({"evaluator_url": "ftp://admin:s3cret@prometheus"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "written"),
    [
        (172_799.6, "1d 23h 59m 59s"),
        (7_384.0, "2h 3m 4s"),
        (61.0, "1m 1s"),
        (5.5, "5.5s"),
        (-90_000.0, "-1d 1h 0m 0s"),
        (0.25, "250ms"),
        (0.0, "0s"),
    ],
)
def test_value_duration_is_written_as_prometheus_humanize_duration_writes_it(
    seconds: float, written: str
) -> None:
    assert render("in {{ value_duration }}", seconds, {}) == f"in {written}"
