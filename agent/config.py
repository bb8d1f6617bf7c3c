"""Settings from one TOML file plus the environment, validated so every error names its key."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

MASK = "***"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """A setting is missing, unknown or malformed; the message names the key and the file."""


class Duration(float):
    """Seconds, written in the file as "15s", "5m", "24h" (a bare number means seconds)."""


def parse_duration(value: object, *, key: str, source: str) -> Duration:
    """Reads "250ms", "15s", "5m", "24h", "1d" or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f'{source}: {key}: expected a duration such as "15s", got {value!r}')
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{source}: {key}: expected a non-negative duration, got {value!r}")
        return Duration(float(value))
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return Duration(float(text))
        match = _DURATION.match(text)
        if match:
            return Duration(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    raise ConfigError(
        f'{source}: {key}: expected a duration such as "15s", "5m" or "24h", got {value!r}'
    )


def _meta(
    env: str | None = None, *, secret: bool = False, doc: str = "", required: bool = False
) -> dict[str, Any]:
    return {"env": env, "secret": secret, "doc": doc, "required": required}


def setting(default: Any, env: str | None = None, *, secret: bool = False, doc: str = "") -> Any:
    """A documented setting with its environment variable (the environment wins over the file)."""
    if isinstance(default, list | dict):
        factory = default.copy
        return field(default_factory=factory, metadata=_meta(env, secret=secret, doc=doc))
    return field(default=default, metadata=_meta(env, secret=secret, doc=doc))


TlsMode = Literal["ssl", "starttls", "none"]
OtlpProtocol = Literal["http/protobuf", "grpc"]


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP listener and where local state lives."""

    host: str = setting("0.0.0.0", "SIDECAR_HOST", doc="Address the HTTP server binds.")
    port: int = setting(8080, "SIDECAR_PORT", doc="Port of /health, /livez, /readyz, /api and /.")
    data_dir: str = setting(
        "./data", "SIDECAR_DATA_DIR", doc="Directory of the embedded store and other local state."
    )
    api_token: str = setting(
        "",
        "SIDECAR_API_TOKEN",
        secret=True,
        doc="Bearer token for /api/* and the dashboard; empty: loopback clients only.",
    )
    enable_background_tasks: bool = setting(
        True,
        "ENABLE_BACKGROUND_TASKS",
        doc="false serves health and the dashboard without polling mail.",
    )
    drain_timeout: Duration = setting(
        Duration(3.0), doc="How long in-flight work may finish after SIGTERM."
    )


@dataclass(frozen=True)
class StoreSettings:
    """The state store: Redis when replicas coordinate, SQLite otherwise."""

    redis_url: str = setting(
        "", "REDIS_URL", secret=True, doc="redis://... to share state; empty: embedded SQLite."
    )
    timeout: Duration = setting(Duration(2.0), doc="Timeout of one store operation.")
    delivery_log_retention: Duration = setting(
        Duration(7 * 86400.0), doc="How long webhook delivery records are kept."
    )
    processed_ttl: Duration = setting(
        Duration(14 * 86400.0), doc="How long processed message ids are remembered for dedupe."
    )


@dataclass(frozen=True)
class MailboxSettings:
    """One IMAP mailbox to watch (from IMAP_* variables, or one [[mailboxes]] table)."""

    name: str = setting("default", doc="Name used in metrics, leases and the webhook's mailbox.")
    host: str = setting("", "IMAP_HOST", doc="IMAP server host; empty: no mailbox is polled.")
    port: int = setting(0, "IMAP_PORT", doc="IMAP port; 0: 993 for ssl, 143 otherwise.")
    username: str = setting("", "IMAP_USERNAME", doc="IMAP login name.")
    password: str = setting("", "IMAP_PASSWORD", secret=True, doc="IMAP password.")
    folder: str = setting("INBOX", "IMAP_FOLDER", doc="Folder to watch.")
    tls: TlsMode = setting("ssl", "IMAP_TLS", doc="ssl, starttls or none.")
    poll_interval: Duration = setting(
        Duration(30.0), "IMAP_POLL_INTERVAL", doc="Seconds between poll cycles."
    )

    @property
    def effective_port(self) -> int:
        """The configured port, or the protocol default for the TLS mode."""
        if self.port:
            return self.port
        return 993 if self.tls == "ssl" else 143


@dataclass(frozen=True)
class ImapSettings:
    """How mailboxes are polled (shared by all mailboxes)."""

    timeout: Duration = setting(
        Duration(30.0), "IMAP_TIMEOUT", doc="Timeout of connect and of every IMAP command."
    )
    lease_ttl: Duration = setting(
        Duration(60.0), doc="Lease time of a mailbox; the leader renews it every cycle."
    )
    batch_size: int = setting(50, doc="Messages fetched per FETCH command.")
    batch_bytes: int = setting(
        8 * 1024 * 1024,
        doc="Raw bytes fetched per batch (and held until it is processed); a larger message "
        "is fetched alone.",
    )
    concurrency: int = setting(8, doc="Messages processed at once per mailbox.")
    max_attempts: int = setting(5, doc="Attempts before a message is dead-lettered.")
    reconnect_max_backoff: Duration = setting(
        Duration(60.0), doc="Upper bound of the reconnect backoff."
    )
    uidvalidity_policy: Literal["skip_existing", "reprocess"] = setting(
        "skip_existing",
        doc="On a UIDVALIDITY change: skip mail already present, or process the folder again.",
    )


@dataclass(frozen=True)
class ParseSettings:
    """Bounds on hostile mail."""

    max_message_bytes: int = setting(
        25 * 1024 * 1024, "MAX_MESSAGE_BYTES", doc="Larger messages are fetched partially."
    )
    max_html_bytes: int = setting(
        1024 * 1024, "MAX_HTML_BYTES", doc="HTML beyond this is truncated before conversion."
    )
    max_bytes_in_flight: int = setting(
        2 * 1024 * 1024,
        doc="Bytes of mail parsed at once, each message counted up to max_html_bytes; an HTML "
        "tree takes about 18 times its document, so this bounds parse memory.",
    )
    max_mime_parts: int = setting(200, doc="MIME parts walked per message.")
    max_header_bytes: int = setting(64 * 1024, doc="Header block size kept per message.")
    max_depth: int = setting(20, doc="MIME nesting depth walked.")
    max_links: int = setting(50, doc="Delivery links kept per message.")
    max_url_length: int = setting(2048, doc="Longer URLs are ignored.")
    excerpt_chars: int = setting(500, doc="Characters of text in the webhook's text_excerpt.")


@dataclass(frozen=True)
class LinkSettings:
    """Which links count as delivery links, and how long each provider may take."""

    allowed_hosts: list[str] = setting(
        [],
        "LINK_ALLOWED_HOSTS",
        doc="Extra origins: host[:port] (HTTPS) or scheme://host:port (exactly that origin).",
    )
    timeout_dropbox_folder: Duration = setting(Duration(120.0), doc="Dropbox /scl/fo/ folders.")
    timeout_fromsmash: Duration = setting(Duration(30.0), doc="FromSmash transfers.")
    timeout_swisstransfer: Duration = setting(Duration(30.0), doc="SwissTransfer transfers.")
    timeout_default: Duration = setting(Duration(15.0), doc="Every other provider.")


@dataclass(frozen=True)
class WebhookSettings:
    """Delivery of one webhook per message to the app."""

    url: str = setting("", "WEBHOOK_URL", secret=False, doc="The app's webhook endpoint.")
    secret: str = setting(
        "", "WEBHOOK_SECRET", secret=True, doc="HMAC-SHA256 key of X-Signature-256."
    )
    timeout: Duration = setting(Duration(10.0), "WEBHOOK_TIMEOUT", doc="Timeout of one attempt.")
    max_attempts: int = setting(5, doc="Attempts per message before it is dead-lettered.")
    retry_budget: Duration = setting(
        Duration(60.0), doc="Total time retries of one message may take."
    )
    backoff_initial: Duration = setting(Duration(0.5), doc="First retry delay.")
    backoff_max: Duration = setting(Duration(30.0), doc="Largest retry delay.")
    only_with_links: bool = setting(
        False, "WEBHOOK_ONLY_WITH_LINKS", doc="true: skip the webhook for mail without links."
    )


@dataclass(frozen=True)
class R2Settings:
    """The R2 fetch Worker that copies files into the bucket."""

    fetch_endpoint: str = setting(
        "", "R2_FETCH_ENDPOINT", doc="The Worker's URL; empty: links are delivered as skipped."
    )
    fetch_token: str = setting("", "R2_FETCH_TOKEN", secret=True, doc="Sent as X-R2-FETCH-TOKEN.")
    max_attempts: int = setting(3, doc="Attempts per link for retryable failures.")
    retry_budget: Duration = setting(
        Duration(300.0), doc="Total time the retries of one link may take."
    )
    concurrency: int = setting(4, doc="Transfers at once across all mailboxes.")


@dataclass(frozen=True)
class HealthSettings:
    """The background checks behind /health, /livez and /readyz."""

    interval: Duration = setting(Duration(10.0), doc="How often each check runs.")
    timeout: Duration = setting(Duration(5.0), doc="Timeout of one check.")
    failures_before_error: int = setting(2, doc="Consecutive failures before a check is error.")
    successes_before_ok: int = setting(1, doc="Consecutive successes before it recovers.")
    history: int = setting(20, doc="Recent results kept per check.")
    app_health_url: str = setting(
        "", "APP_HEALTH_URL", doc="Optional health URL of the app, checked by the http probe."
    )
    required: list[str] = setting(
        ["redis", "imap"], doc="Checks that must be up for /readyz (not_configured counts as up)."
    )
    loop_lag_threshold: Duration = setting(
        Duration(5.0), doc="/livez fails when the event loop lags more than this."
    )
    trace_probes: bool = setting(False, doc="true: each probe run is a span.")


@dataclass(frozen=True)
class TelemetrySettings:
    """Export to the OpenTelemetry collector (standard OTEL_* variables are read by the SDK)."""

    export_interval: Duration = setting(
        Duration(15.0), doc="Metric export interval (OTEL_METRIC_EXPORT_INTERVAL, in ms, wins)."
    )
    shutdown_timeout: Duration = setting(
        Duration(3.0), doc="Upper bound of flushing telemetry at shutdown."
    )
    sampler_interval: Duration = setting(Duration(5.0), doc="psutil sampling interval.")
    log_level: str = setting("info", "SIDECAR_LOG_LEVEL", doc="Lowest level logged.")


@dataclass(frozen=True)
class DashboardSettings:
    """The browser dashboard and its APIs."""

    poll_interval: Duration = setting(
        Duration(30.0), "SIDECAR_DASHBOARD_POLL_INTERVAL", doc="Seconds between page refreshes."
    )
    jaeger_ui_url: str = setting(
        "",
        "JAEGER_UI_URL",
        doc="Jaeger UI base (trace ids in logs link to <base>/trace/<id>), or a URL "
        "template containing {trace_id}.",
    )
    log_buffer_events: int = setting(2000, doc="Log events kept for /api/logs.")
    log_buffer_bytes: int = setting(2 * 1024 * 1024, doc="Bytes of log events kept for /api/logs.")


@dataclass(frozen=True)
class AlertingSettings:
    """Where alert notifications go; the rules live in [alerts] (validated by agent.alerts)."""

    webhook_url: str = setting(
        "", "ALERT_WEBHOOK_URL", doc="Receives the Alertmanager webhook payload (version 4)."
    )
    alertmanager_url: str = setting(
        "", "ALERTMANAGER_URL", doc="An Alertmanager; alerts are pushed to /api/v2/alerts."
    )
    external_url: str = setting(
        "",
        "SIDECAR_EXTERNAL_URL",
        doc="How operators reach this sidecar (externalURL and generatorURL in alerts); "
        "empty: http://<hostname>:<port>.",
    )


@dataclass(frozen=True)
class Settings:
    """The effective configuration."""

    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    mailboxes: list[MailboxSettings] = field(default_factory=list)
    parse: ParseSettings = field(default_factory=ParseSettings)
    links: LinkSettings = field(default_factory=LinkSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    r2: R2Settings = field(default_factory=R2Settings)
    health: HealthSettings = field(default_factory=HealthSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    alerting: AlertingSettings = field(default_factory=AlertingSettings)
    alerts: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    def secrets(self) -> list[str]:
        """Every configured secret value, longest first, for masking."""
        values: list[str] = []
        for section in _sections(self):
            for f in dataclasses.fields(section):
                if f.metadata.get("secret"):
                    value = getattr(section, f.name)
                    if isinstance(value, str) and value:
                        values.append(value)
        return sorted(set(values), key=len, reverse=True)


_SECTION_TYPES: dict[str, type[Any]] = {
    "server": ServerSettings,
    "store": StoreSettings,
    "imap": ImapSettings,
    "parse": ParseSettings,
    "links": LinkSettings,
    "webhook": WebhookSettings,
    "r2": R2Settings,
    "health": HealthSettings,
    "telemetry": TelemetrySettings,
    "dashboard": DashboardSettings,
    "alerting": AlertingSettings,
}

# The [[mailboxes]] environment form: IMAP_* describe one mailbox.
_MAILBOX_ENV_KEYS = ("host", "port", "username", "password", "folder", "tls", "poll_interval")


def _sections(settings: Settings) -> list[Any]:
    return [getattr(settings, name) for name in _SECTION_TYPES] + list(settings.mailboxes)


def section_types() -> dict[str, type[Any]]:
    """The named sections of the file, for documentation."""
    return dict(_SECTION_TYPES) | {"mailboxes": MailboxSettings}


def _convert(value: object, hint: Any, *, key: str, source: str, from_env: bool) -> Any:
    origin = get_origin(hint)
    if hint is Duration:
        return parse_duration(value, key=key, source=source)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ConfigError(f"{source}: {key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            result = value
        elif from_env and isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            result = int(value)
        else:
            raise ConfigError(f"{source}: {key}: expected an integer, got {value!r}")
        if result < 0:
            raise ConfigError(f"{source}: {key}: expected a non-negative integer, got {result}")
        return result
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key}: expected a string, got {value!r}")
    if origin is Literal:
        choices = get_args(hint)
        text = value.strip().lower() if isinstance(value, str) else value
        if text in choices:
            return text
        wanted = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{source}: {key}: expected one of {wanted}, got {value!r}")
    if origin is list:
        if from_env and isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ConfigError(f"{source}: {key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{source}: {key}: unsupported setting type {hint!r}")


_BOOL_WORDS = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _build_section(
    cls: type[Any],
    table: Mapping[str, Any],
    *,
    prefix: str,
    source: str,
    env: Mapping[str, str],
    use_env: bool,
) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (expected one of: {allowed})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_name = f.metadata.get("env")
        key = f"{prefix}{f.name}"
        if use_env and env_name and env_name in env:
            values[f.name] = _convert(
                env[env_name],
                hints[f.name],
                key=f"{env_name} ({key})",
                source="environment",
                from_env=True,
            )
        elif f.name in table:
            values[f.name] = _convert(
                table[f.name], hints[f.name], key=key, source=source, from_env=False
            )
    return cls(**values)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Reads the TOML file (if any) and the environment, validates, and returns the settings."""
    env = os.environ if env is None else env
    if path is None and env.get("SIDECAR_CONFIG"):
        path = env["SIDECAR_CONFIG"]
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with Path(path).open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{source}: file not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return settings_from_mapping(data, env=env, source=source)


def settings_from_mapping(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source: str = "<mapping>"
) -> Settings:
    """Validates an already-parsed TOML document plus the environment."""
    env = {} if env is None else env
    allowed = set(_SECTION_TYPES) | {"mailboxes", "alerts"}
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{source}: {key}: unknown section (expected one of: {', '.join(sorted(allowed))})"
            )
    sections: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name}: expected a table, got {table!r}")
        sections[name] = _build_section(
            cls, table, prefix=f"{name}.", source=source, env=env, use_env=True
        )
    mailboxes = _load_mailboxes(data.get("mailboxes"), source=source, env=env)
    alerts = data.get("alerts", {})
    if not isinstance(alerts, dict):
        raise ConfigError(f"{source}: alerts: expected a table, got {alerts!r}")
    settings = Settings(**sections, mailboxes=mailboxes, alerts=alerts, source=source)
    _check(settings)
    return settings


def _load_mailboxes(raw: object, *, source: str, env: Mapping[str, str]) -> list[MailboxSettings]:
    mailboxes: list[MailboxSettings] = []
    if raw is not None:
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            raise ConfigError(f"{source}: mailboxes: expected [[mailboxes]] tables")
        for index, table in enumerate(raw):
            box = _build_section(
                MailboxSettings,
                table,
                prefix=f"mailboxes[{index}].",
                source=source,
                env=env,
                use_env=False,
            )
            if "name" not in table:
                box = dataclasses.replace(box, name=f"{box.username or 'mailbox'}@{box.host}")
            mailboxes.append(box)
    if any(env.get(f"IMAP_{key.upper()}") for key in _MAILBOX_ENV_KEYS):
        from_env = _build_section(
            MailboxSettings, {}, prefix="", source=source, env=env, use_env=True
        )
        if mailboxes:
            # The environment overrides the first mailbox, as it overrides any other key.
            base = mailboxes[0]
            changes = {
                k: getattr(from_env, k)
                for k in _MAILBOX_ENV_KEYS
                if env.get(str(_field_env(MailboxSettings, k)))
            }
            mailboxes[0] = dataclasses.replace(base, **changes)
        elif from_env.host:
            mailboxes.append(from_env)
    seen: set[str] = set()
    for index, box in enumerate(mailboxes):
        if box.name in seen:
            raise ConfigError(f"{source}: mailboxes[{index}].name: duplicate name {box.name!r}")
        seen.add(box.name)
    return [box for box in mailboxes if box.host]


def _field_env(cls: type[Any], name: str) -> str | None:
    for f in dataclasses.fields(cls):
        if f.name == name:
            env_name = f.metadata.get("env")
            return str(env_name) if env_name else None
    return None


def _check_url(value: str, key: str, source: str, schemes: tuple[str, ...]) -> None:
    if value and not re.match(rf"^({'|'.join(schemes)})://[^\s/]+", value):
        wanted = " or ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{source}: {key}: expected a URL starting with {wanted}")


def _check(settings: Settings) -> None:
    source = settings.source
    if not 0 < settings.server.port < 65536:
        raise ConfigError(f"{source}: server.port: expected 1-65535, got {settings.server.port}")
    _check_url(
        settings.store.redis_url, "store.redis_url (REDIS_URL)", source, ("redis", "rediss", "unix")
    )
    _check_url(settings.webhook.url, "webhook.url (WEBHOOK_URL)", source, ("http", "https"))
    _check_url(
        settings.r2.fetch_endpoint,
        "r2.fetch_endpoint (R2_FETCH_ENDPOINT)",
        source,
        ("http", "https"),
    )
    _check_url(
        settings.alerting.webhook_url,
        "alerting.webhook_url (ALERT_WEBHOOK_URL)",
        source,
        ("http", "https"),
    )
    _check_url(
        settings.alerting.alertmanager_url,
        "alerting.alertmanager_url (ALERTMANAGER_URL)",
        source,
        ("http", "https"),
    )
    _check_url(settings.health.app_health_url, "health.app_health_url", source, ("http", "https"))
    _check_url(
        settings.alerting.external_url,
        "alerting.external_url (SIDECAR_EXTERNAL_URL)",
        source,
        ("http", "https"),
    )
    for index, box in enumerate(settings.mailboxes):
        if box.poll_interval <= 0:
            raise ConfigError(
                f"{source}: mailboxes[{index}].poll_interval: expected a positive duration"
            )
        if not box.username:
            raise ConfigError(f"{source}: mailboxes[{index}].username (IMAP_USERNAME): required")
        if box.port and not 0 < box.port < 65536:
            raise ConfigError(f"{source}: mailboxes[{index}].port: expected 1-65535")
    for entry in settings.links.allowed_hosts:
        if not re.fullmatch(r"(https?://)?[A-Za-z0-9.\-\[\]:]+(:\d+)?", entry):
            raise ConfigError(
                f"{source}: links.allowed_hosts (LINK_ALLOWED_HOSTS): {entry!r} is not "
                "host[:port] or scheme://host:port"
            )
    positive = {
        "imap.batch_size": settings.imap.batch_size,
        "imap.batch_bytes": settings.imap.batch_bytes,
        "parse.max_bytes_in_flight": settings.parse.max_bytes_in_flight,
        "imap.concurrency": settings.imap.concurrency,
        "imap.max_attempts": settings.imap.max_attempts,
        "webhook.max_attempts": settings.webhook.max_attempts,
        "r2.max_attempts": settings.r2.max_attempts,
        "r2.concurrency": settings.r2.concurrency,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{source}: {key}: expected at least 1, got {value}")
    if settings.telemetry.export_interval <= 0:
        raise ConfigError(f"{source}: telemetry.export_interval: expected a positive duration")


def effective_config(settings: Settings) -> dict[str, Any]:
    """The configuration as a plain mapping, every secret masked."""
    result: dict[str, Any] = {}
    for name in _SECTION_TYPES:
        result[name] = _masked(getattr(settings, name))
    result["mailboxes"] = [_masked(box) for box in settings.mailboxes]
    result["alerts"] = settings.alerts
    return result


def _masked(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.metadata.get("secret") and value:
            value = MASK
        elif isinstance(value, str) and "://" in value:
            value = re.sub(r"(://)[^/@\s]*@", r"\1***@", value)
        out[f.name] = float(value) if isinstance(value, Duration) else value
    return out
