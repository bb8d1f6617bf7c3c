"""The effective alert rules as a Prometheus rule file or a Prometheus Operator PrometheusRule.

PyYAML writes the files: Prometheus and Kubernetes read YAML, and rule files are reviewed and
versioned by people, so they are written as YAML, not as the JSON subset of it. It is the
reference YAML library for Python, maintained by the YAML project, and only its safe dumper is
used (plain data in, no Python tags out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import unquote

import yaml

from agent.alerts import promnames
from agent.alerts.promql import duration, translate
from agent.alerts.rules import TEMPLATE, AlertConfig, AlertRule, sanitize_label
from agent.config import ConfigError, Settings
from agent.telemetry.resource import DEFAULT_SERVICE_NAME

Format = Literal["prometheus", "prometheus-operator"]
GROUP = "signal-sidecar"
DIFFERENCES = "differences_from_sidecar"
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_HEADER = """\
# signal-sidecar alert rules for {target}, written by `signal-sidecar alerts export`.
# Do not edit: change the [alerts] table and export again (see docs/alerting.md).
# Series of job "{job}" under the names the collector's Prometheus exporter gives them;
# {scrape}, so job and instance name each sidecar replica.
"""


def _literal(text: str) -> str:
    """Text Prometheus' Go templates print as is."""
    return re.sub(r"(\{\{|\}\})", lambda m: '{{ "' + m.group(1) + '" }}', text)


def template(text: str) -> str:
    """A sidecar annotation as a Prometheus one: {{ value }} and {{ labels.x }} print the same."""
    out = []
    end = 0
    for match in TEMPLATE.finditer(text):
        out.append(_literal(text[end : match.start()]))
        name = match.group(1)
        if name == "value":
            out.append('{{ printf "%.4g" $value }}')
        elif name == "value_duration":
            out.append("{{ $value | humanizeDuration }}")
        elif name.startswith("labels."):
            label = sanitize_label(name.removeprefix("labels."))
            out.append(
                f"{{{{ $labels.{label} }}}}"
                if _IDENTIFIER.match(label)
                else f'{{{{ index $labels "{label}" }}}}'
            )
        else:
            out.append(_literal(match.group(0)))
        end = match.end()
    out.append(_literal(text[end:]))
    return "".join(out)


def prometheus_rule(rule: AlertRule, *, job: str) -> dict[str, Any]:
    """One alerting rule of a Prometheus rule group."""
    translation = translate(rule, job=job)
    entry: dict[str, Any] = {"alert": rule.alert, "expr": translation.expr}
    if rule.for_ > 0:
        entry["for"] = duration(rule.for_)
    if rule.keep_firing_for > 0:
        entry["keep_firing_for"] = duration(rule.keep_firing_for)
    if rule.labels:
        entry["labels"] = {name: _literal(value) for name, value in rule.labels.items()}
    annotations = {name: template(text) for name, text in rule.annotations.items()}
    annotations[DIFFERENCES] = _literal("; ".join(translation.notes))
    entry["annotations"] = annotations
    return entry


def rule_groups(config: AlertConfig, *, job: str) -> dict[str, Any]:
    """The rule file's content: one group, evaluated at the sidecar's evaluation interval."""
    return {
        "groups": [
            {
                "name": GROUP,
                "interval": duration(config.evaluation_interval),
                "rules": [prometheus_rule(rule, job=job) for rule in config.rules],
            }
        ]
    }


def prometheus_rule_resource(
    config: AlertConfig, *, job: str, name: str = GROUP, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The same groups as a Prometheus Operator PrometheusRule."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "signal-sidecar", **(labels or {})},
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": rule_groups(config, job=job),
    }


def export(
    config: AlertConfig,
    *,
    job: str,
    output_format: Format = "prometheus",
    labels: Mapping[str, str] | None = None,
) -> str:
    """The file's text: a header saying where it comes from, then the YAML."""
    if output_format == "prometheus":
        content = rule_groups(config, job=job)
        target, scrape = "Prometheus", "scrape the exporter with honor_labels: true"
    else:
        content = prometheus_rule_resource(config, job=job, labels=labels)
        target = "the Prometheus Operator"
        scrape = "scrape the exporter through a ServiceMonitor with honorLabels: true"
    body = str(yaml.safe_dump(content, sort_keys=False, allow_unicode=True, width=10_000))
    return _HEADER.format(target=target, job=job, scrape=scrape) + body


def export_command(
    settings: Settings,
    *,
    output_format: Format,
    job: str | None,
    labels: Sequence[str],
    env: Mapping[str, str],
) -> str:
    """`signal-sidecar alerts export`: the effective rules (defaults plus the TOML file's)."""
    from agent.alerts.wiring import alert_config

    if job is None:
        job = promnames.job(_service_attributes(env))
    if not job:
        raise ConfigError("--job: expected a job label (OTEL_SERVICE_NAME is empty)")
    metadata: dict[str, str] = {}
    for item in labels:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--label: expected KEY=VALUE, got {item!r}")
        metadata[name] = value
    return export(alert_config(settings), job=job, output_format=output_format, labels=metadata)


def _service_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """service.name and service.namespace as the SDK reads them from `env` (the spec's rules:
    OTEL_SERVICE_NAME over OTEL_RESOURCE_ATTRIBUTES over the sidecar's default name)."""
    attributes = {"service.name": DEFAULT_SERVICE_NAME}
    for item in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip() in ("service.name", "service.namespace"):
            attributes[key.strip()] = unquote(value.strip())
    if env.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    return attributes
