"""The shipped rule files are exactly `alerts export` of the defaults, valid, and wired in."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.alerts.rules import DEFAULT_RULES
from tests.alerts import run_export, run_promtool
from tests.support.components import ROOT, require_binary

RULES = ROOT / "collector-config" / "prometheus-rules" / "signal-sidecar.rules.yml"
OPERATOR = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"
PROMETHEUS = ROOT / "collector-config" / "prometheus.yml"
COMPOSE = ROOT / "docker-compose.yml"
REGENERATE = "run `make alert-rules` and commit the result"


def _export(*args: str) -> str:
    """`signal-sidecar alerts export` as `make alert-rules` runs it: no config, clean env."""
    result = run_export(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool", "apt-get install prometheus (scripts/install-system.sh)")


def test_shipped_rule_file_is_the_export_of_the_defaults() -> None:
    assert RULES.read_text() == _export(), REGENERATE


def test_shipped_prometheus_rule_resource_is_the_export_of_the_defaults() -> None:
    assert OPERATOR.read_text() == _export("--format", "prometheus-operator"), REGENERATE


def test_shipped_rule_file_passes_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(DEFAULT_RULES)} rules found" in result.stdout


def test_prometheus_rule_resource_holds_the_same_groups_as_the_rule_file() -> None:
    resource: dict[str, Any] = yaml.safe_load(OPERATOR.read_text())
    assert (resource["apiVersion"], resource["kind"]) == ("monitoring.coreos.com/v1",
                                                          "PrometheusRule")  # fmt: skip
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


def test_prometheus_yml_loads_the_shipped_rules_and_keeps_the_senders_labels(
    promtool: str,
) -> None:
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text())
    matched = [p for g in config["rule_files"] for p in PROMETHEUS.parent.glob(g)]
    assert matched == [RULES]
    collector = next(j for j in config["scrape_configs"] if j["job_name"] == "otel-collector")
    assert collector["honor_labels"] is True
    result = run_promtool(promtool, "check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_compose_mounts_the_rules_where_prometheus_yml_looks_for_them() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    prometheus = compose["services"]["prometheus"]
    mounts = dict(str(v).split(":")[:2] for v in prometheus["volumes"])
    config = Path(next(a for a in prometheus["command"] if a.startswith("--config.file=")))
    config_dir = Path(str(config).split("=", 1)[1]).parent
    rules = yaml.safe_load(PROMETHEUS.read_text())["rule_files"]
    for pattern in rules:
        folder = str(config_dir / Path(pattern).parent)
        source = next(s for s, target in mounts.items() if target == folder)
        assert (ROOT / source).resolve() == RULES.parent


def test_compose_sidecar_evaluates_alongside_prometheus() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    sidecar = compose["services"]["sidecar"]
    mounts = dict(str(v).split(":")[:2] for v in sidecar["volumes"])
    [source] = [
        s for s, target in mounts.items() if target == sidecar["environment"]["SIDECAR_CONFIG"]
    ]
    content = (ROOT / source).read_text()
    assert tomllib.loads(content)["alerts"]["evaluator"] == "both"
