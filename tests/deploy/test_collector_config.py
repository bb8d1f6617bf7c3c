"""Collector, Jaeger, Prometheus and Alertmanager files are valid for the binaries that run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.components import ROOT, require_binary, require_file

CONFIG_DIR = ROOT / "collector-config"
JAEGER = ROOT / "tools" / "bin" / "jaeger"
_JAEGER_HINT = "run `make jaeger` (scripts/build-jaeger.sh)"

# otel/opentelemetry-collector-contrib at this version (the image docker-compose.yml pins), the
# same collector release the pinned Jaeger (tools/versions.env) is built on.
CONTRIB_VERSION = "0.140.1"
# Components of the contrib distribution at CONTRIB_VERSION (its manifest.yaml), by kind; only
# the ones a sidecar pipeline would reasonably use are listed.
CONTRIB_COMPONENTS: dict[str, frozenset[str]] = {
    "receivers": frozenset(
        {
            "otlp",
            "prometheus",
            "hostmetrics",
            "filelog",
            "jaeger",
            "zipkin",
            "kafka",
            "k8s_cluster",
            "k8s_events",
            "kubeletstats",
            "journald",
            "syslog",
            "redis",
            "nop",
        }
    ),
    "processors": frozenset(
        {
            "batch",
            "memory_limiter",
            "attributes",
            "resource",
            "resourcedetection",
            "filter",
            "transform",
            "k8sattributes",
            "tail_sampling",
            "probabilistic_sampler",
            "groupbytrace",
            "cumulativetodelta",
            "deltatocumulative",
            "metricstransform",
            "redaction",
        }
    ),
    "exporters": frozenset(
        {
            "otlp",
            "otlphttp",
            "debug",
            "prometheus",
            "prometheusremotewrite",
            "kafka",
            "file",
            "loadbalancing",
            "nop",
        }
    ),
    "extensions": frozenset(
        {
            "health_check",
            "pprof",
            "zpages",
            "basicauth",
            "bearertokenauth",
            "file_storage",
            "oauth2client",
        }
    ),
    "connectors": frozenset({"forward", "spanmetrics", "count", "routing", "servicegraph"}),
}
# Every ${env:...} the files read, set as the test bed sets them.
_ENV = {
    "COLLECTOR_BIND": "127.0.0.1",
    "OTLP_GRPC_PORT": "14317",
    "OTLP_HTTP_PORT": "14318",
    "PROMETHEUS_EXPORTER_PORT": "18889",
    "JAEGER_OTLP_ENDPOINT": "127.0.0.1:24317",
    "COLLECTOR_BATCH_TIMEOUT": "200ms",
    "JAEGER_BIND": "127.0.0.1",
    "JAEGER_OTLP_GRPC_PORT": "24317",
    "JAEGER_OTLP_HTTP_PORT": "24318",
    "JAEGER_QUERY_PORT": "26686",
    "JAEGER_QUERY_GRPC_PORT": "26685",
}


def _jaeger(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_file(JAEGER, _JAEGER_HINT)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OTEL_TRACES_EXPORTER": "none", **_ENV}
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _used_components(path: Path) -> dict[str, set[str]]:
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    used: dict[str, set[str]] = {}
    for kind in CONTRIB_COMPONENTS:
        used[kind] = {name.split("/", 1)[0] for name in (config.get(kind) or {})}
    return used


@pytest.mark.parametrize("name", ["collector.yaml", "jaeger.yaml"])
def test_jaeger_validate_accepts_the_config(name: str) -> None:
    result = _jaeger("validate", "--config", str(CONFIG_DIR / name))
    assert result.returncode == 0, result.stderr[-3000:]


def test_jaeger_validate_rejects_an_unknown_component(tmp_path: Path) -> None:
    """Guards the check above: validate really loads the components."""
    broken = tmp_path / "broken.yaml"
    broken.write_text((CONFIG_DIR / "collector.yaml").read_text().replace("batch:", "batchy:", 1))
    assert _jaeger("validate", "--config", str(broken)).returncode != 0


def test_the_collector_uses_only_components_of_the_jaeger_binary() -> None:
    result = _jaeger("components")
    assert result.returncode == 0, result.stderr
    available: dict[str, Any] = yaml.safe_load(result.stdout)
    for kind, names in _used_components(CONFIG_DIR / "collector.yaml").items():
        present = {entry["name"] for entry in available.get(kind) or []}
        assert names <= present, f"{kind} {sorted(names - present)} missing from tools/bin/jaeger"


def test_the_collector_uses_only_components_of_the_contrib_distribution() -> None:
    for kind, names in _used_components(CONFIG_DIR / "collector.yaml").items():
        missing = names - CONTRIB_COMPONENTS[kind]
        assert not missing, f"{kind} {sorted(missing)} not in collector-contrib {CONTRIB_VERSION}"


def test_compose_pins_the_contrib_version_the_component_list_describes() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["otel-collector"]["image"]
    assert image == f"otel/opentelemetry-collector-contrib:{CONTRIB_VERSION}"


def test_promtool_accepts_prometheus_yml() -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(CONFIG_DIR / "prometheus.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_collector_prometheus_exporter() -> None:
    config: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
    collector: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "collector.yaml").read_text())
    port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":-", 1)[-1].rstrip("}")
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert f"otel-collector:{port}" in targets


def test_amtool_accepts_alertmanager_yml() -> None:
    amtool = require_binary("amtool", "apt-get install prometheus-alertmanager")
    result = subprocess.run(
        [amtool, "check-config", str(CONFIG_DIR / "alertmanager.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_to_a_webhook_receiver() -> None:
    config: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    default = receivers[config["route"]["receiver"]]
    assert default["webhook_configs"][0]["url"].startswith("http")
