"""`signal-sidecar alerts export`: every rule shape becomes a rule Prometheus accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.alerts.export import export
from agent.alerts.rules import DEFAULT_RULES, AlertConfig, load_alert_config
from agent.alerts.scope import FLEET, RATIO_GAUGES, fleet_wide
from agent.pipeline.delivery_stats import OUTCOMES
from agent.store.base import DeliveryWindow
from agent.telemetry.catalogue import SPECS
from tests.alerts import run_export, run_promtool
from tests.support.components import require_binary

EVERY_SHAPE: list[dict[str, Any]] = [
    {"alert": "ValueInstance", "metric": "probe.up", "match": {"probe": 'say "hi" \\ there'},
     "op": "<", "threshold": 1, "for": "90s", "keep_firing_for": "150s"},
    {"alert": "ValueFleet", "metric": "imap.mailbox.backlog", "op": ">=", "threshold": 1000},
    {"alert": "IncreaseFleet", "function": "increase", "metric": "webhook.deliveries",
     "match": {"outcome": "failed"}, "window": "10m", "threshold": 5, "resolve_threshold": 1},
    {"alert": "RateInstance", "function": "rate", "metric": "system.network.io", "window": "5m",
     "threshold": 1e6, "no_data": "ok"},
    {"alert": "HistogramCount", "function": "increase", "metric": "imap.poll.duration.count",
     "window": "15m", "op": "<", "threshold": 1, "no_data": "alerting"},
    {"alert": "RatioFleet", "function": "ratio", "window": "1h",
     "numerator": {"metric": "imap.messages", "match": {"outcome": "dead_lettered"}},
     "denominator": {"metric": "imap.messages"}, "threshold": 0.05, "resolve_threshold": 0.01},
    {"alert": "RatioInstance", "function": "ratio", "window": "30m",
     "numerator": {"metric": "alert.notifications", "match": {"outcome": "failed"}},
     "denominator": {"metric": "alert.notifications"}, "op": "<=", "threshold": 0.5,
     "resolve_threshold": 0.75, "no_data": "alerting"},
    {"alert": "AgeFleet", "function": "age", "metric": "webhook.last_delivery.time",
     "threshold": 3600, "labels": {"team": "{{ not a template }}"},
     "annotations": {"summary": "{{ value }}s since {{ labels.imap.mailbox }} {{ oops",
                     "runbook": "https://runbooks.example/{{ labels.alertname }}"}},
    {"alert": "GaugeRatioHysteresis", "metric": "webhook.error_ratio", "threshold": 0.2,
     "resolve_threshold": 0.1, "no_data": "alerting"},
]  # fmt: skip


def _config(rules: list[dict[str, Any]], **top: Any) -> AlertConfig:
    raw = {"use_defaults": False, "rules": rules, **top}
    return load_alert_config(raw, source="export.toml", default_interval=15.0)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool", "apt-get install prometheus (scripts/install-system.sh)")


def test_every_rule_shape_exports_to_rules_promtool_accepts(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(export(_config(EVERY_SHAPE), job="mail/signal-sidecar"))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(EVERY_SHAPE)} rules found" in result.stdout


def test_for_keep_firing_for_and_the_evaluation_interval_carry_over() -> None:
    config = _config(EVERY_SHAPE[:1], evaluation_interval="30s")
    [group] = yaml.safe_load(export(config, job="signal-sidecar"))["groups"]
    [rule] = group["rules"]
    assert (group["interval"], rule["for"], rule["keep_firing_for"]) == ("30s", "1m30s", "2m30s")


def test_every_rule_reads_only_the_sidecars_job() -> None:
    groups = yaml.safe_load(export(_config(EVERY_SHAPE), job="mail/signal-sidecar"))["groups"]
    for rule in groups[0]["rules"]:
        selectors = rule["expr"].count("{") - rule["expr"].count("ALERTS{")
        assert rule["expr"].count('job="mail/signal-sidecar"') == selectors, rule["alert"]


def test_work_is_judged_fleet_wide_and_processes_per_replica() -> None:
    scopes = {rule.alert: fleet_wide(rule) for rule in DEFAULT_RULES}
    assert {name for name, fleet in scopes.items() if fleet} >= {
        "HighWebhookErrorRate",
        "PollerStalled",
        "R2TransfersTimingOut",
    }
    assert not any(
        scopes[name]
        for name in ("HighMemoryUsage", "CriticalMemoryUsage", "HighDiskUsage", "HighCpuUsage",
                     "CollectorExportsFailing")
    )  # fmt: skip


def test_every_fleet_metric_is_in_the_catalogue() -> None:
    assert set(FLEET) <= set(SPECS)
    for name, ratio in RATIO_GAUGES.items():
        assert {name, ratio.parts} <= set(SPECS)
        assert ratio.label in SPECS[ratio.parts].attributes


def test_the_error_ratio_rebuilt_from_its_parts_is_the_one_the_sidecar_reports() -> None:
    ratio = RATIO_GAUGES["webhook.error_ratio"]
    assert set(ratio.numerator) < set(OUTCOMES)
    for counts in ({"delivered": 7, "failed": 2, "dead_lettered": 1}, {"failed": 3}):
        window = DeliveryWindow(counts, None)
        bad = sum(counts.get(o, 0) for o in ratio.numerator)
        assert window.error_ratio == bad / sum(counts.values())


def test_cli_exports_the_user_rules_with_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text('[[alerts.rules]]\nalert = "Mine"\nmetric = "probe.up"\nthreshold = 2\n')
    out = tmp_path / "out.yml"
    result = run_export("--config", str(config), "--job", "edge", "-o", str(out))
    assert result.returncode == 0, result.stderr
    names = [r["alert"] for r in yaml.safe_load(out.read_text())["groups"][0]["rules"]]
    assert names == [r.alert for r in DEFAULT_RULES] + ["Mine"]
    assert 'job="edge"' in out.read_text()


def test_cli_job_defaults_to_the_service_name_and_namespace() -> None:
    result = run_export(
        env={"OTEL_SERVICE_NAME": "mailer", "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=prod"}
    )
    assert result.returncode == 0, result.stderr
    assert 'job="prod/mailer"' in result.stdout


def test_cli_operator_format_carries_the_given_labels() -> None:
    result = run_export("--format", "prometheus-operator", "--label", "release=kube-prometheus")
    resource = yaml.safe_load(result.stdout)
    assert resource["metadata"]["labels"]["release"] == "kube-prometheus"


def test_cli_rejects_a_malformed_label_naming_the_option() -> None:
    result = run_export("--format", "prometheus-operator", "--label", "release")
    assert result.returncode == 2
    assert "--label: expected KEY=VALUE" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_an_invalid_rule_naming_its_key(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text('[[alerts.rules]]\nalert = "Mine"\nmetric = "no.such.metric"\n')
    result = run_export("--config", str(config))
    assert result.returncode == 2
    assert "alerts.rules[0].metric" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_rule_prometheus_would_label_differently(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.toml"
    config.write_text(
        '[[alerts.rules]]\nalert = "Odd"\nmetric = "probe.up"\nthreshold = 1\n'
        'match = { "1st" = "x" }\n'
    )
    result = run_export("--config", str(config))
    assert result.returncode == 2
    assert "Odd: attribute '1st' is 'key_1st' in Prometheus" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_an_unwritable_output_without_a_traceback(tmp_path: Path) -> None:
    result = run_export("-o", str(tmp_path / "missing" / "rules.yml"))
    assert result.returncode == 1
    assert "--output: cannot write" in result.stderr
    assert "Traceback" not in result.stderr
