"""The operator docs cover what the code has, and the generated parts match the code."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

from agent.alerts.rules import DEFAULT_RULES
from agent.config import section_types
from agent.health.probes import PROBES
from agent.telemetry.catalogue import CATALOGUE
from tests.deploy import load_script
from tests.support.components import ROOT

DOCS = ROOT / "docs"
MY_DOCS = ("architecture", "configuration", "health", "alerting", "telemetry", "operations")


def _read(name: str) -> str:
    return (DOCS / f"{name}.md").read_text()


def test_generated_docs_match_the_code() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_gen_docs_check_fails_on_drift(tmp_path: Path) -> None:
    for name in ("configuration.md", "telemetry.md"):
        shutil.copy(DOCS / name, tmp_path / name)
    stale = (tmp_path / "configuration.md").read_text().replace("`IMAP_HOST`", "`IMAP_SERVER`")
    (tmp_path / "configuration.md").write_text(stale)
    assert load_script("gen_docs").main(["--check", "--docs", str(tmp_path)]) == 1


def test_configuration_reference_lists_every_setting_and_variable() -> None:
    text = _read("configuration")
    for section, cls in section_types().items():
        assert f"[{section}]" in text, section
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f"{section}.{f.name}"
            if f.metadata.get("env"):
                assert f"`{f.metadata['env']}`" in text


def test_telemetry_reference_lists_every_catalogue_metric_with_its_unit() -> None:
    text = _read("telemetry")
    for spec in CATALOGUE:
        assert re.search(rf"\| `{re.escape(spec.name)}` \| {spec.kind} \| `{re.escape(spec.unit)}`",
                         text), spec.name  # fmt: skip


def test_telemetry_reference_names_every_span_the_code_starts() -> None:
    text = _read("telemetry")
    source = "\n".join(p.read_text() for p in (ROOT / "agent").rglob("*.py"))
    names = set(re.findall(r'start_as_current_span\(\s*"([a-z_.]+)"', source))
    assert names, "no span names found in agent/"
    for name in names:
        assert f"`{name}`" in text, name


def test_telemetry_reference_names_every_log_field() -> None:
    text = _read("telemetry")
    for field in ("timestamp", "level", "logger", "event", "trace_id", "span_id"):
        assert f"`{field}`" in text, field


def test_health_doc_describes_each_endpoint_and_check() -> None:
    text = _read("health")
    for endpoint in ("/health", "/livez", "/readyz"):
        assert f"`GET {endpoint}`" in text
    for probe in PROBES:
        assert f"| `{probe}` |" in text, probe


def test_alerting_doc_lists_every_default_rule() -> None:
    text = _read("alerting")
    for rule in DEFAULT_RULES:
        assert f"`{rule.alert}`" in text, rule.alert


def test_operations_doc_has_a_runbook_for_every_default_rule() -> None:
    headings = re.findall(r"^### (.+)$", _read("operations"), re.MULTILINE)
    covered = {name.strip() for heading in headings for name in heading.split("(")[0].split("/")}
    for rule in DEFAULT_RULES:
        assert rule.alert in covered, rule.alert


def test_architecture_doc_has_a_data_flow_picture() -> None:
    picture = re.search(r"## Data flow\n+```\n(.+?)```", _read("architecture"), re.DOTALL)
    assert picture is not None
    for part in ("IMAP", "R2", "webhook", "Collector", "/readyz"):
        assert part in picture.group(1), part


def test_relative_links_in_the_docs_resolve() -> None:
    for name in MY_DOCS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _read(name)):
            assert (DOCS / target).resolve().exists(), f"{name}.md links to missing {target}"
