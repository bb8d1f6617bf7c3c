"""Alert rules as data: the [alerts] table validated into rules, with the seed's defaults."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.config import ConfigError, parse_duration
from agent.telemetry.catalogue import SPECS

Function = Literal["value", "increase", "rate", "ratio", "age"]
NoData = Literal["keep_last", "ok", "alerting"]
Evaluator = Literal["sidecar", "prometheus", "both"]

FUNCTIONS: tuple[str, ...] = ("value", "increase", "rate", "ratio", "age")
NO_DATA: tuple[str, ...] = ("keep_last", "ok", "alerting")
EVALUATORS: tuple[str, ...] = ("sidecar", "prometheus", "both")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
# Histograms are seen by rules as two counters: "<name>.count" and "<name>.sum".
HISTOGRAM_SERIES: tuple[str, ...] = (".count", ".sum")

_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TEMPLATE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_TOP_KEYS = frozenset(
    {
        "evaluation_interval",
        "repeat_interval",
        "send_resolved",
        "use_defaults",
        "rules",
        "evaluator",
        "evaluator_url",
    }
)
_RULE_KEYS = frozenset(
    {
        "alert",
        "metric",
        "match",
        "exclude",
        "function",
        "window",
        "numerator",
        "denominator",
        "min_denominator",
        "op",
        "threshold",
        "resolve_threshold",
        "for",
        "keep_firing_for",
        "no_data",
        "labels",
        "annotations",
    }
)
_WINDOWED = frozenset({"increase", "rate", "ratio"})


@dataclass(frozen=True)
class SeriesRef:
    """A metric, attributes its series must have (match) and values they must not (exclude)."""

    metric: str
    match: Mapping[str, str] = field(default_factory=dict)
    exclude: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertRule:
    """One rule: which series, which function, the comparison, timing, and what to send."""

    alert: str
    metric: str = ""
    match: Mapping[str, str] = field(default_factory=dict)
    exclude: Mapping[str, str] = field(default_factory=dict)
    function: Function = "value"
    window: float = 0.0
    numerator: SeriesRef | None = None
    denominator: SeriesRef | None = None
    # A ratio whose denominator grew by less than this in the window has no data.
    min_denominator: float = 0.0
    op: str = ">"
    threshold: float = 0.0
    resolve_threshold: float | None = None
    for_: float = 0.0
    keep_firing_for: float = 0.0
    no_data: NoData = "keep_last"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # Tells apart rules that share an alert name, as Prometheus allows (a warning level and a
    # critical one); empty for a name with one rule.
    variant: str = ""

    @property
    def key(self) -> str:
        """The rule's identity in the engine and its stored state: alert[/variant]."""
        return f"{self.alert}/{self.variant}" if self.variant else self.alert

    def metrics(self) -> tuple[str, ...]:
        """Every metric the rule reads."""
        if self.function == "ratio" and self.numerator and self.denominator:
            return (self.numerator.metric, self.denominator.metric)
        return (self.metric,)

    def breached(self, value: float, *, firing: bool) -> bool:
        """Whether value meets the condition; a firing alert is held by resolve_threshold."""
        threshold = self.threshold
        if firing and self.resolve_threshold is not None:
            threshold = self.resolve_threshold
        return OPERATORS[self.op](value, threshold)


@dataclass(frozen=True)
class AlertConfig:
    """The validated [alerts] table."""

    evaluation_interval: float
    export_interval: float = 0.0
    repeat_interval: float = 4 * 3600.0
    send_resolved: bool = True
    rules: tuple[AlertRule, ...] = ()
    # Who evaluates: the sidecar, Prometheus (the sidecar only exports metrics), or both; and
    # where operators find the alerts when Prometheus evaluates them.
    evaluator: Evaluator = "sidecar"
    evaluator_url: str = ""

    @property
    def staleness(self) -> float:
        """A series not exported for three intervals has no data."""
        return 3 * max(self.evaluation_interval, self.export_interval)

    def windows(self) -> dict[str, float]:
        """Per metric, the longest window a rule needs (0 for point-in-time functions)."""
        needed: dict[str, float] = {}
        for rule in self.rules:
            for metric in rule.metrics():
                needed[metric] = max(needed.get(metric, 0.0), rule.window)
        return needed


def render(template: str, value: float | None, labels: Mapping[str, str]) -> str:
    """Substitutes {{ value }}, {{ value_duration }} (seconds, as Prometheus' humanizeDuration
    writes them) and {{ labels.x }}; nothing else is a template."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "value":
            return format_value(value)
        if name == "value_duration":
            return "no data" if value is None else humanize_duration(value)
        if name.startswith("labels."):
            key = name.removeprefix("labels.")
            return labels.get(key, labels.get(sanitize_label(key), ""))
        return match.group(0)

    return TEMPLATE.sub(substitute, template)


def format_value(value: float | None) -> str:
    """A short human form of a rule's value."""
    if value is None:
        return "no data"
    return f"{value:.4g}"


def humanize_duration(seconds: float) -> str:
    """Seconds as Prometheus' humanizeDuration template function writes them: "1d 23h 59m 59s"."""
    if math.isnan(seconds) or math.isinf(seconds):
        return f"{seconds:.4g}"
    if seconds == 0:
        return "0s"
    if abs(seconds) < 1:
        scaled, prefix = seconds, ""
        for unit in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(scaled) >= 1:
                break
            scaled, prefix = scaled * 1000, unit
        return f"{scaled:.4g}{prefix}s"
    sign = "-" if seconds < 0 else ""
    whole = int(abs(seconds))
    days, hours = whole // 86400, whole // 3600 % 24
    minutes, secs = whole // 60 % 60, whole % 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{sign}{minutes}m {secs}s"
    return f"{sign}{abs(seconds):.4g}s"


def sanitize_label(name: str) -> str:
    """An OTel attribute name as an Alertmanager label name (dots and dashes become _)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def _rule(alert: str, metric: str, op: str, threshold: float, **kw: Any) -> AlertRule:
    return AlertRule(alert=alert, metric=metric, op=op, threshold=threshold, **kw)


DEFAULT_RULES: tuple[AlertRule, ...] = (
    _rule(
        "HighWebhookErrorRate",
        "webhook.error_ratio",
        ">",
        0.10,
        labels={"severity": "warning"},
        annotations={"summary": "Webhook error rate {{ value }} over 24h (above 10%)"},
    ),
    _rule(
        "HighMemoryUsage",
        "process.memory.utilization",
        ">",
        0.80,
        labels={"severity": "warning"},
        annotations={"summary": "Memory at {{ value }} of the limit (above 80%)"},
    ),
    _rule(
        "CriticalMemoryUsage",
        "process.memory.utilization",
        ">",
        0.90,
        labels={"severity": "critical"},
        annotations={"summary": "Memory at {{ value }} of the limit (above 90%)"},
    ),
    _rule(
        "HighDiskUsage",
        "system.filesystem.utilization",
        ">",
        0.85,
        labels={"severity": "warning"},
        annotations={
            "summary": "Disk {{ labels.system_filesystem_mountpoint }} at {{ value }} (above 85%)"
        },
    ),
    _rule(
        "HighCpuUsage",
        "system.cpu.utilization",
        ">",
        0.90,
        for_=300.0,
        labels={"severity": "warning"},
        annotations={"summary": "CPU at {{ value }} for 5m (above 90%)"},
    ),
    # age = now - value: the gauge holds the Unix time of the last successful cycle.
    _rule(
        "PollerStalled",
        "poller.last_success.time",
        ">",
        600.0,
        function="age",
        labels={"severity": "critical"},
        annotations={
            "summary": "Mailbox {{ labels.imap_mailbox }} has not been polled for {{ value }}s"
        },
    ),
    _rule(
        "CollectorExportsFailing",
        "telemetry.export.failures",
        ">",
        0.0,
        function="increase",
        window=600.0,
        labels={"severity": "warning"},
        annotations={"summary": "{{ value }} failed {{ labels.signal }} exports in 10m"},
    ),
    # Any increase: a customer's delivery never reached the app (re-drive it once fixed).
    _rule(
        "MailDeadLettered",
        "imap.messages",
        ">",
        0.0,
        function="increase",
        window=3600.0,
        match={"outcome": "dead_lettered"},
        labels={"severity": "critical"},
        annotations={
            "summary": "{{ value }} mail dead-lettered in mailbox {{ labels.imap_mailbox }} "
            "in the last hour ({{ labels.error_type }})",
            "description": "A delivery never reached the app. Fix the cause, then re-drive "
            "it: signal-sidecar redrive --list, or the dashboard's Dead letters panel.",
        },
    ),
    # Failed = every outcome but success (failure, timeout, rejected, unauthorized, and any
    # outcome added later); judged once at least 5 transfers were tried in the window.
    AlertRule(
        alert="R2TransfersFailing",
        function="ratio",
        window=900.0,
        numerator=SeriesRef("r2.transfers", exclude={"outcome": "success"}),
        denominator=SeriesRef("r2.transfers"),
        min_denominator=5.0,
        op=">",
        threshold=0.25,
        resolve_threshold=0.10,
        no_data="ok",
        labels={"severity": "warning"},
        annotations={
            "summary": "{{ value }} of the R2 transfers of the last 15m failed "
            "(above 0.25 of at least 5)",
            "description": "Files are not copied into R2; the app gets the original links. "
            "See the r2.transfer spans' error.type: unauthorized (token), failure (Worker or "
            "source 5xx), timeout, rejected.",
        },
    ),
    # Seconds until notAfter of the certificate an endpoint presented at its latest connection;
    # the warning and the critical level are two rules of one alert name, as in Prometheus.
    _rule(
        "CertificateExpiresSoon",
        "tls.certificate.expiry",
        "<",
        14 * 86400.0,
        variant="warning",
        labels={"severity": "warning"},
        annotations={
            "summary": "The certificate of {{ labels.tls_endpoint }} at "
            "{{ labels.server_address }}:{{ labels.server_port }} expires in "
            "{{ value_duration }} (under 14 days)",
            "description": "Renew the server's certificate before it expires, or the sidecar "
            "can no longer connect to it.",
        },
    ),
    _rule(
        "CertificateExpiresSoon",
        "tls.certificate.expiry",
        "<",
        3 * 86400.0,
        variant="critical",
        labels={"severity": "critical"},
        annotations={
            "summary": "The certificate of {{ labels.tls_endpoint }} at "
            "{{ labels.server_address }}:{{ labels.server_port }} expires in "
            "{{ value_duration }} (under 3 days)",
            "description": "Renew the server's certificate now: the sidecar cannot connect to "
            "it once it has expired.",
        },
    ),
    # 1 while the mailbox's latest login failed on authentication (password or token refused,
    # or no token could be had); for 10 minutes, so a single refusal does not page.
    _rule(
        "MailboxAuthFailing",
        "imap.login.failing",
        ">",
        0.0,
        for_=600.0,
        labels={"severity": "critical"},
        annotations={
            "summary": "Mailbox {{ labels.imap_mailbox }} cannot log in ({{ labels.imap_auth }}) "
            "for 10m",
            "description": "No mail is fetched. See /health services.imap and the poller's "
            "error: a refused password or token, or a failing OAuth token refresh.",
        },
    ),
    _rule(
        "R2TransfersTimingOut",
        "r2.transfers",
        ">",
        3.0,
        function="increase",
        window=900.0,
        match={"outcome": "timeout"},
        labels={"severity": "warning"},
        annotations={
            "summary": "{{ value }} R2 transfers from {{ labels.r2_provider }} timed out in 15m"
        },
    ),
)


def load_alert_config(
    raw: Mapping[str, Any], *, source: str, default_interval: float
) -> AlertConfig:
    """Validates the [alerts] table; every error names the key (alerts.rules[i].x) and the file."""
    _known_keys(raw, _TOP_KEYS, "alerts", source)
    interval = default_interval
    if "evaluation_interval" in raw:
        interval = parse_duration(
            raw["evaluation_interval"], key="alerts.evaluation_interval", source=source
        )
    if interval <= 0:
        raise ConfigError(f"{source}: alerts.evaluation_interval: must be above zero")
    repeat = 4 * 3600.0
    if "repeat_interval" in raw:
        repeat = parse_duration(raw["repeat_interval"], key="alerts.repeat_interval", source=source)
        if repeat <= 0:
            raise ConfigError(f"{source}: alerts.repeat_interval: must be above zero")
    send_resolved = _bool(raw, "send_resolved", True, "alerts", source)
    use_defaults = _bool(raw, "use_defaults", True, "alerts", source)
    items = raw.get("rules", [])
    if not isinstance(items, list):
        raise ConfigError(f"{source}: alerts.rules: expected an array of tables, got {items!r}")
    user: list[AlertRule] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        key = f"alerts.rules[{index}]"
        rule = _parse_rule(item, key, source)
        if rule.alert in seen:
            raise ConfigError(f"{source}: {key}.alert: duplicate alert name {rule.alert!r}")
        seen.add(rule.alert)
        user.append(rule)
    defaults = [r for r in DEFAULT_RULES if r.alert not in seen] if use_defaults else []
    evaluator, evaluator_url = _evaluator(raw, source)
    return AlertConfig(
        evaluation_interval=float(interval),
        export_interval=float(default_interval),
        repeat_interval=float(repeat),
        send_resolved=send_resolved,
        rules=tuple(defaults + user),
        evaluator=evaluator,
        evaluator_url=evaluator_url,
    )


def _evaluator(raw: Mapping[str, Any], source: str) -> tuple[Evaluator, str]:
    evaluator = raw.get("evaluator", "sidecar")
    if evaluator not in EVALUATORS:
        raise ConfigError(
            f"{source}: alerts.evaluator: expected one of {', '.join(EVALUATORS)}, "
            f"got {evaluator!r}"
        )
    url = raw.get("evaluator_url", "")
    if not isinstance(url, str) or (url and not re.match(r"^https?://[^/\s]+", url)):
        raise ConfigError(
            f"{source}: alerts.evaluator_url: expected an http(s) URL such as "
            "http://prometheus:9090"
        )
    if evaluator == "prometheus" and not url:
        raise ConfigError(
            f"{source}: alerts.evaluator_url: required when alerts.evaluator is 'prometheus' "
            "(where operators find the alerts, e.g. http://prometheus:9090)"
        )
    return evaluator, url


def _known_keys(table: Mapping[str, Any], allowed: frozenset[str], key: str, source: str) -> None:
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{source}: {key}.{name}: unknown key")


def _bool(table: Mapping[str, Any], name: str, default: bool, key: str, source: str) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key}.{name}: expected true or false, got {value!r}")
    return value


def _string(table: Mapping[str, Any], name: str, key: str, source: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key}.{name}: expected a non-empty string, got {value!r}")
    return value


def _strings(value: object, key: str, source: str, *, label_names: bool = False) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {key}: expected a table of strings, got {value!r}")
    result: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(item, str):
            raise ConfigError(f"{source}: {key}.{name}: expected a string, got {item!r}")
        if label_names and not _LABEL_NAME.match(name):
            raise ConfigError(f"{source}: {key}.{name}: invalid label name (use [A-Za-z0-9_])")
        result[str(name)] = item
    return result


def _number(table: Mapping[str, Any], name: str, key: str, source: str) -> float:
    value = table.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{source}: {key}.{name}: expected a number, got {value!r}")
    return float(value)


def _metric(name: object, key: str, source: str, *, counter: bool) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: {key}: expected a metric name, got {name!r}")
    spec = SPECS.get(name)
    if spec is None:
        base, dot, suffix = name.rpartition(".")
        hist = SPECS.get(base)
        if hist is not None and hist.kind == "histogram" and f"{dot}{suffix}" in HISTOGRAM_SERIES:
            return name
        raise ConfigError(f"{source}: {key}: unknown metric {name!r}")
    if spec.kind == "histogram":
        raise ConfigError(
            f"{source}: {key}: {name!r} is a histogram; use '{name}.count' or '{name}.sum'"
        )
    if counter and spec.kind != "counter":
        raise ConfigError(f"{source}: {key}: {name!r} is a {spec.kind}, not a counter")
    return name


def _series(value: object, key: str, source: str) -> SeriesRef:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: {key}: expected {{ metric = ..., match = {{...}} }}")
    _known_keys(value, frozenset({"metric", "match", "exclude"}), key, source)
    metric = _metric(value.get("metric"), f"{key}.metric", source, counter=True)
    return SeriesRef(
        metric,
        _strings(value.get("match"), f"{key}.match", source),
        _strings(value.get("exclude"), f"{key}.exclude", source),
    )


def _check_template(text: str, key: str, source: str) -> None:
    for match in TEMPLATE.finditer(text):
        name = match.group(1)
        if name in ("value", "value_duration"):
            continue
        if not (name.startswith("labels.") and len(name) > len("labels.")):
            raise ConfigError(
                f"{source}: {key}: unknown template {match.group(0)!r} "
                "(use {{ value }}, {{ value_duration }} or {{ labels.x }})"
            )


def _parse_rule(item: object, key: str, source: str) -> AlertRule:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{source}: {key}: expected a table, got {item!r}")
    _known_keys(item, _RULE_KEYS, key, source)
    alert = _string(item, "alert", key, source)
    if not _LABEL_NAME.match(alert):
        raise ConfigError(f"{source}: {key}.alert: invalid alert name {alert!r} (use [A-Za-z0-9_])")
    function = item.get("function", "value")
    if function not in FUNCTIONS:
        raise ConfigError(
            f"{source}: {key}.function: unknown function {function!r} "
            f"(one of {', '.join(FUNCTIONS)})"
        )
    op = item.get("op", ">")
    if op not in OPERATORS:
        raise ConfigError(
            f"{source}: {key}.op: unknown operator {op!r} (one of {' '.join(OPERATORS)})"
        )
    no_data = item.get("no_data", "keep_last")
    if no_data not in NO_DATA:
        raise ConfigError(
            f"{source}: {key}.no_data: unknown policy {no_data!r} (one of {', '.join(NO_DATA)})"
        )
    metric = ""
    match: dict[str, str] = {}
    exclude: dict[str, str] = {}
    numerator = denominator = None
    min_denominator = 0.0
    if function == "ratio":
        for name in ("metric", "match", "exclude"):
            if name in item:
                raise ConfigError(f"{source}: {key}.{name}: ratio takes numerator and denominator")
        for name in ("numerator", "denominator"):
            if name not in item:
                raise ConfigError(f"{source}: {key}.{name}: required by function 'ratio'")
        numerator = _series(item["numerator"], f"{key}.numerator", source)
        denominator = _series(item["denominator"], f"{key}.denominator", source)
        if "min_denominator" in item:
            min_denominator = _number(item, "min_denominator", key, source)
            if min_denominator < 0:
                raise ConfigError(f"{source}: {key}.min_denominator: must not be negative")
    else:
        for name in ("numerator", "denominator", "min_denominator"):
            if name in item:
                raise ConfigError(f"{source}: {key}.{name}: only function 'ratio' takes it")
        if "metric" not in item:
            raise ConfigError(f"{source}: {key}.metric: required")
        metric = _metric(item["metric"], f"{key}.metric", source, counter=function in _WINDOWED)
        match = _strings(item.get("match"), f"{key}.match", source)
        exclude = _strings(item.get("exclude"), f"{key}.exclude", source)
    window = 0.0
    if function in _WINDOWED:
        if "window" not in item:
            raise ConfigError(f"{source}: {key}.window: required by function {function!r}")
        window = float(parse_duration(item["window"], key=f"{key}.window", source=source))
        if window <= 0:
            raise ConfigError(f"{source}: {key}.window: must be above zero")
    elif "window" in item:
        raise ConfigError(f"{source}: {key}.window: function {function!r} takes no window")
    if "threshold" not in item:
        raise ConfigError(f"{source}: {key}.threshold: required")
    threshold = _number(item, "threshold", key, source)
    resolve: float | None = None
    if "resolve_threshold" in item:
        resolve = _number(item, "resolve_threshold", key, source)
        if (
            op in ("==", "!=")
            or (op in (">", ">=") and resolve > threshold)
            or (op in ("<", "<=") and resolve < threshold)
        ):
            raise ConfigError(
                f"{source}: {key}.resolve_threshold: must lie on the resolved side of threshold "
                f"for op {op!r}"
            )
    labels = _strings(item.get("labels"), f"{key}.labels", source, label_names=True)
    if "alertname" in labels:
        raise ConfigError(f"{source}: {key}.labels.alertname: set by the alert name")
    annotations = _strings(item.get("annotations"), f"{key}.annotations", source)
    for name, text in annotations.items():
        _check_template(text, f"{key}.annotations.{name}", source)
    return AlertRule(
        alert=alert,
        metric=metric,
        match=match,
        exclude=exclude,
        function=function,
        window=window,
        numerator=numerator,
        denominator=denominator,
        min_denominator=min_denominator,
        op=op,
        threshold=threshold,
        resolve_threshold=resolve,
        for_=float(parse_duration(item.get("for", 0), key=f"{key}.for", source=source)),
        keep_firing_for=float(
            parse_duration(
                item.get("keep_firing_for", 0), key=f"{key}.keep_firing_for", source=source
            )
        ),
        no_data=no_data,
        labels=labels,
        annotations=annotations,
    )
