"""Settings from one TOML file plus the environment, validated so every error names its key."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_type_hints

# Names imported `as` themselves are re-exported: they are part of agent.config's interface.
from agent.config_fields import MASK as MASK
from agent.config_fields import (
    SECRET_FORMS,
    field_value,
    format_duration,
    ip_or_host_name,
    is_secret,
    raw_value,
    redis_url,
    setting,
    url_check,
)
from agent.config_fields import ConfigError as ConfigError
from agent.config_fields import Duration as Duration
from agent.config_fields import Override as Override
from agent.config_fields import parse_duration as parse_duration
from agent.pipeline.folder_name import folder_name_problem

_KIB = 1024
_MIB = 1024 * _KIB
_GIB = 1024 * _MIB

TlsMode = Literal["ssl", "starttls", "none"]
AuthMode = Literal["password", "xoauth2", "oauthbearer"]
OtlpProtocol = Literal["http/protobuf", "grpc"]
LogLevel = Literal["debug", "info", "warning", "warn", "error", "critical"]
_HTTP = url_check("http", "https")


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP listener and where local state lives."""

    host: str = setting(
        "0.0.0.0",
        "SIDECAR_HOST",
        doc="Address the HTTP server binds (an IP address or a host name).",
        check=ip_or_host_name,
    )
    port: int = setting(
        8080,
        "SIDECAR_PORT",
        doc="Port of /health, /livez, /readyz, /api and /; 0: any free port, logged at start.",
        minimum=0,
        maximum=65535,
    )
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
        Duration(3.0),
        doc="How long in-flight work may finish after SIGTERM.",
        minimum="0s",
        maximum="1m",
    )
    header_timeout: Duration = setting(
        Duration(10.0),
        doc="Time a client has to send a complete request head, from connecting or from its "
        "previous response; longer, and the connection is closed (idle keep-alive too).",
        minimum="1s",
        maximum="10m",
    )
    body_timeout: Duration = setting(
        Duration(15.0),
        doc="Time a client has to send a request body; longer gets 408 and a closed connection.",
        minimum="1s",
        maximum="10m",
    )
    max_connections: int = setting(
        256,
        doc="Open HTTP connections at most; at the cap a new one displaces the oldest "
        "connection that is not in the middle of a request.",
        minimum=8,
        maximum=65535,
    )


@dataclass(frozen=True)
class StoreSettings:
    """The state store: Redis when replicas coordinate, SQLite otherwise."""

    redis_url: str = setting(
        "",
        "REDIS_URL",
        secret=True,
        doc="redis://... to share state; empty: embedded SQLite.",
        check=redis_url,
    )
    timeout: Duration = setting(
        Duration(2.0), doc="Timeout of one store operation.", minimum="100ms", maximum="5m"
    )
    delivery_log_retention: Duration = setting(
        Duration(7 * 86400.0),
        doc="How long delivery log records (what became of each mail) are kept.",
        minimum="1m",
        maximum="366d",
    )
    delivery_log_max_records: int = setting(
        100_000,
        doc="Delivery log records kept at most; the oldest are dropped first.",
        minimum=100,
        maximum=10_000_000,
    )
    processed_ttl: Duration = setting(
        Duration(14 * 86400.0),
        doc="How long processed message ids are remembered for dedupe.",
        minimum="1m",
        maximum="366d",
    )


@dataclass(frozen=True)
class MailboxSettings:
    """One IMAP mailbox to watch (from IMAP_* variables, or one [[mailboxes]] table)."""

    name: str = setting("default", doc="Name used in metrics, leases and the webhook's mailbox.")
    host: str = setting("", "IMAP_HOST", doc="IMAP server host; empty: no mailbox is polled.")
    port: int = setting(
        0,
        "IMAP_PORT",
        doc="IMAP port; 0: 993 for ssl, 143 otherwise.",
        minimum=0,
        maximum=65535,
    )
    username: str = setting("", "IMAP_USERNAME", doc="IMAP login name.")
    password: str = setting("", "IMAP_PASSWORD", secret=True, doc="IMAP password.")
    auth: AuthMode = setting(
        "password",
        "IMAP_AUTH",
        doc="password (LOGIN), or OAuth 2.0 by SASL xoauth2 or oauthbearer (RFC 7628).",
    )
    access_token: str = setting(
        "",
        "IMAP_ACCESS_TOKEN",
        secret=True,
        doc="OAuth access token managed outside the sidecar (used as given, never refreshed).",
    )
    oauth_token_url: str = setting(
        "",
        "IMAP_OAUTH_TOKEN_URL",
        doc="Token endpoint of the refresh-token grant.",
        check=_HTTP,
    )
    oauth_client_id: str = setting("", "IMAP_OAUTH_CLIENT_ID", doc="OAuth client id.")
    oauth_client_secret: str = setting(
        "", "IMAP_OAUTH_CLIENT_SECRET", secret=True, doc="OAuth client secret."
    )
    oauth_refresh_token: str = setting(
        "",
        "IMAP_OAUTH_REFRESH_TOKEN",
        secret=True,
        doc="Refresh token; when set, access tokens come from the refresh-token grant.",
    )
    oauth_scope: str = setting(
        "", "IMAP_OAUTH_SCOPE", doc="Scope asked for with each refresh; empty: the grant's own."
    )
    folder: str = setting(
        "INBOX", "IMAP_FOLDER", doc="Folder to watch, named as a mail client shows it."
    )
    tls: TlsMode = setting("ssl", "IMAP_TLS", doc="ssl, starttls or none.")
    poll_interval: Duration = setting(
        Duration(30.0),
        "IMAP_POLL_INTERVAL",
        doc="Seconds between poll cycles (a catch-up sweep while IDLE works); the leader "
        "renews its lease while it rests, every third of imap.lease_ttl.",
        minimum="100ms",
        maximum="1d",
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
        Duration(30.0),
        "IMAP_TIMEOUT",
        doc="Timeout of connect and of every IMAP command.",
        minimum="1s",
        maximum="10m",
    )
    lease_ttl: Duration = setting(
        Duration(60.0),
        doc="Lease time of a mailbox; the leader renews it every cycle.",
        minimum="1s",
        maximum="1d",
    )
    batch_size: int = setting(
        50, doc="Messages fetched per FETCH command.", minimum=1, maximum=10_000
    )
    batch_bytes: int = setting(
        8 * _MIB,
        doc="Raw bytes fetched per batch (and held until it is processed); a larger message "
        "is fetched alone.",
        minimum=1,
        maximum=_GIB,
    )
    concurrency: int = setting(
        8, doc="Messages processed at once per mailbox.", minimum=1, maximum=256
    )
    max_attempts: int = setting(
        5, doc="Attempts before a message is dead-lettered.", minimum=1, maximum=100
    )
    reconnect_max_backoff: Duration = setting(
        Duration(60.0),
        doc="Upper bound of the reconnect backoff.",
        minimum="100ms",
        maximum="1h",
    )
    oauth_refresh_before: Duration = setting(
        Duration(300.0),
        doc="An OAuth access token is refreshed when it has less than this left.",
        minimum="1s",
        maximum="1h",
    )
    oauth_timeout: Duration = setting(
        Duration(10.0),
        doc="Timeout of one request to the OAuth token endpoint.",
        minimum="100ms",
        maximum="2m",
    )
    oauth_max_attempts: int = setting(
        3,
        doc="Requests per token refresh before it fails (with backoff between them).",
        minimum=1,
        maximum=10,
    )
    stall_after: Duration = setting(
        Duration(300.0),
        doc="A leader with no successful cycle for this long (or three poll intervals, if "
        "longer) is stalled: /livez fails and /health says so.",
        minimum="1s",
        maximum="1d",
    )
    uidvalidity_policy: Literal["skip_existing", "reprocess"] = setting(
        "skip_existing",
        doc="On a UIDVALIDITY change: skip mail already present, or process the folder again.",
    )
    idle: bool = setting(
        True,
        doc="true: the leader waits in IMAP IDLE (RFC 2177) between polls when the server "
        "offers it, so new mail is fetched as the server announces it.",
    )
    idle_renew: Duration = setting(
        Duration(25 * 60.0),
        doc="IDLE is ended and issued again after this long, before servers' 30-minute limit.",
        minimum="1s",
        maximum="29m",
    )
    idle_keepalive: Duration = setting(
        Duration(60.0),
        doc="An IDLE connection silent this long is checked with DONE + NOOP; one that does not "
        "answer within imap.timeout is dead: reconnect with backoff and a full catch-up poll.",
        minimum="1s",
        maximum="29m",
    )
    idle_max_failures: int = setting(
        3,
        doc="Consecutive failed IDLE periods after which the mailbox falls back to polling "
        "(IDLE is tried again 15 minutes later).",
        minimum=1,
        maximum=100,
    )


@dataclass(frozen=True)
class ParseSettings:
    """Bounds on hostile mail."""

    max_message_bytes: int = setting(
        25 * _MIB,
        "MAX_MESSAGE_BYTES",
        doc="Larger messages are fetched partially.",
        minimum=_KIB,
        maximum=_GIB,
    )
    max_html_bytes: int = setting(
        _MIB,
        "MAX_HTML_BYTES",
        doc="HTML beyond this is truncated before conversion.",
        minimum=_KIB,
        maximum=256 * _MIB,
    )
    max_bytes_in_flight: int = setting(
        2 * _MIB,
        doc="Bytes of mail parsed at once, each message counted up to max_html_bytes; an HTML "
        "tree takes about 18 times its document, so this bounds parse memory.",
        minimum=1,
        maximum=4 * _GIB,
    )
    max_mime_parts: int = setting(
        200, doc="MIME parts walked per message.", minimum=1, maximum=100_000
    )
    max_header_bytes: int = setting(
        64 * _KIB, doc="Header block size kept per message.", minimum=_KIB, maximum=16 * _MIB
    )
    max_depth: int = setting(20, doc="MIME nesting depth walked.", minimum=1, maximum=100)
    max_links: int = setting(50, doc="Delivery links kept per message.", minimum=1, maximum=10_000)
    max_url_length: int = setting(
        2048, doc="Longer URLs are ignored.", minimum=64, maximum=64 * _KIB
    )
    excerpt_chars: int = setting(
        500,
        doc="Characters of text in the webhook's text_excerpt.",
        minimum=0,
        maximum=100_000,
    )


@dataclass(frozen=True)
class LinkSettings:
    """Which links count as delivery links, and how long each provider may take."""

    allowed_hosts: list[str] = setting(
        [],
        "LINK_ALLOWED_HOSTS",
        doc="Extra origins: host[:port] (HTTPS) or scheme://host:port (exactly that origin).",
    )
    timeout_dropbox_folder: Duration = setting(
        Duration(120.0), doc="Dropbox /scl/fo/ folders.", minimum="1s", maximum="6h"
    )
    timeout_fromsmash: Duration = setting(
        Duration(30.0), doc="FromSmash transfers.", minimum="1s", maximum="6h"
    )
    timeout_swisstransfer: Duration = setting(
        Duration(30.0), doc="SwissTransfer transfers.", minimum="1s", maximum="6h"
    )
    timeout_default: Duration = setting(
        Duration(15.0), doc="Every other provider.", minimum="1s", maximum="6h"
    )


@dataclass(frozen=True)
class WebhookSettings:
    """Delivery of one webhook per message to the app."""

    url: str = setting(
        "", "WEBHOOK_URL", secret=False, doc="The app's webhook endpoint.", check=_HTTP
    )
    secret: str = setting(
        "", "WEBHOOK_SECRET", secret=True, doc="HMAC-SHA256 key of X-Signature-256."
    )
    timeout: Duration = setting(
        Duration(10.0),
        "WEBHOOK_TIMEOUT",
        doc="Timeout of one attempt.",
        minimum="100ms",
        maximum="10m",
    )
    max_attempts: int = setting(
        5, doc="Attempts per message before it is dead-lettered.", minimum=1, maximum=100
    )
    retry_budget: Duration = setting(
        Duration(60.0),
        doc="Total time retries of one message may take.",
        minimum="0s",
        maximum="1d",
    )
    backoff_initial: Duration = setting(
        Duration(0.5), doc="First retry delay.", minimum="10ms", maximum="1h"
    )
    backoff_max: Duration = setting(
        Duration(30.0),
        doc="Largest retry delay (at least backoff_initial).",
        minimum="10ms",
        maximum="1h",
    )
    only_with_links: bool = setting(
        False, "WEBHOOK_ONLY_WITH_LINKS", doc="true: skip the webhook for mail without links."
    )


@dataclass(frozen=True)
class R2Settings:
    """The R2 fetch Worker that copies files into the bucket."""

    fetch_endpoint: str = setting(
        "",
        "R2_FETCH_ENDPOINT",
        doc="The Worker's URL; empty: links are delivered as skipped.",
        check=_HTTP,
    )
    fetch_token: str = setting("", "R2_FETCH_TOKEN", secret=True, doc="Sent as X-R2-FETCH-TOKEN.")
    max_attempts: int = setting(
        3, doc="Attempts per link for retryable failures.", minimum=1, maximum=100
    )
    retry_budget: Duration = setting(
        Duration(300.0),
        doc="Total time one link may take: every attempt and every file of a share "
        "(each file also has its provider's timeout).",
        minimum="0s",
        maximum="1d",
    )
    concurrency: int = setting(
        4, doc="Transfers at once across all mailboxes.", minimum=1, maximum=256
    )


@dataclass(frozen=True)
class HealthSettings:
    """The background checks behind /health, /livez and /readyz."""

    interval: Duration = setting(
        Duration(10.0), doc="How often each check runs.", minimum="100ms", maximum="1h"
    )
    timeout: Duration = setting(
        Duration(5.0), doc="Timeout of one check.", minimum="100ms", maximum="5m"
    )
    failures_before_error: int = setting(
        2, doc="Consecutive failures before a check is error.", minimum=1, maximum=100
    )
    successes_before_ok: int = setting(
        1, doc="Consecutive successes before it recovers.", minimum=1, maximum=100
    )
    history: int = setting(20, doc="Recent results kept per check.", minimum=1, maximum=10_000)
    app_health_url: str = setting(
        "",
        "APP_HEALTH_URL",
        doc="Optional health URL of the app, checked by the http probe.",
        check=_HTTP,
    )
    required: list[str] = setting(
        ["redis", "imap"], doc="Checks that must be up for /readyz (not_configured counts as up)."
    )
    loop_lag_threshold: Duration = setting(
        Duration(5.0),
        doc="/livez fails when the event loop lags more than this.",
        minimum="100ms",
        maximum="5m",
    )
    trace_probes: bool = setting(False, doc="true: each probe run is a span.")


@dataclass(frozen=True)
class TelemetrySettings:
    """Export to the OpenTelemetry collector (standard OTEL_* variables are read by the SDK)."""

    export_interval: Duration = setting(
        Duration(15.0),
        doc="Metric export interval (OTEL_METRIC_EXPORT_INTERVAL, in ms, wins).",
        minimum="1s",
        maximum="1h",
    )
    shutdown_timeout: Duration = setting(
        Duration(3.0),
        doc="Upper bound of flushing telemetry at shutdown.",
        minimum="100ms",
        maximum="1m",
    )
    sampler_interval: Duration = setting(
        Duration(5.0), doc="psutil sampling interval.", minimum="100ms", maximum="1h"
    )
    log_level: LogLevel = setting(
        "info", "SIDECAR_LOG_LEVEL", doc="Lowest level logged: debug, info, warning, error."
    )


@dataclass(frozen=True)
class DashboardSettings:
    """The browser dashboard and its APIs."""

    poll_interval: Duration = setting(
        Duration(30.0),
        "SIDECAR_DASHBOARD_POLL_INTERVAL",
        doc="Seconds between page refreshes.",
        minimum="1s",
        maximum="1h",
    )
    jaeger_ui_url: str = setting(
        "",
        "JAEGER_UI_URL",
        doc="Jaeger UI base (trace ids in logs link to <base>/trace/<id>), or a URL "
        "template containing {trace_id}.",
    )
    log_buffer_events: int = setting(
        2000, doc="Log events kept for /api/logs.", minimum=1, maximum=1_000_000
    )
    log_buffer_bytes: int = setting(
        2 * _MIB, doc="Bytes of log events kept for /api/logs.", minimum=_KIB, maximum=_GIB
    )


@dataclass(frozen=True)
class AlertingSettings:
    """Where alert notifications go; the rules live in [alerts] (validated by agent.alerts)."""

    webhook_url: str = setting(
        "",
        "ALERT_WEBHOOK_URL",
        doc="Receives the Alertmanager webhook payload (version 4).",
        check=_HTTP,
    )
    alertmanager_url: str = setting(
        "",
        "ALERTMANAGER_URL",
        doc="An Alertmanager; alerts are pushed to /api/v2/alerts.",
        check=_HTTP,
    )
    external_url: str = setting(
        "",
        "SIDECAR_EXTERNAL_URL",
        doc="How operators reach this sidecar (externalURL and generatorURL in alerts); "
        "empty: http://<hostname>:<port>, with the port actually bound.",
        check=_HTTP,
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
_MAILBOX_ENV_KEYS = (
    "host", "port", "username", "password", "folder", "tls", "poll_interval", "auth",
    "access_token", "oauth_token_url", "oauth_client_id", "oauth_client_secret",
    "oauth_refresh_token", "oauth_scope",
)  # fmt: skip


def _sections(settings: Settings) -> list[Any]:
    return [getattr(settings, name) for name in _SECTION_TYPES] + list(settings.mailboxes)


def section_types() -> dict[str, type[Any]]:
    """The named sections of the file, for documentation."""
    return dict(_SECTION_TYPES) | {"mailboxes": MailboxSettings}


def _build_section(
    cls: type[Any],
    table: Mapping[str, Any],
    *,
    prefix: str,
    source: str,
    env: Mapping[str, str],
    use_env: bool,
    overrides: Mapping[str, Override] | None = None,
    base: Path | None = None,
) -> Any:
    hints = get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    names |= {f.name + suffix for f in fields if is_secret(f) for suffix in SECRET_FORMS}
    for key in table:
        if key not in names:
            allowed = ", ".join(sorted(names))
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (expected one of: {allowed})")
    values: dict[str, Any] = {}
    for f in fields:
        raw = raw_value(
            f,
            table,
            prefix=prefix,
            source=source,
            env=env,
            use_env=use_env,
            override=(overrides or {}).get(f"{prefix}{f.name}"),
            base=base,
        )
        if raw is not None:
            values[f.name] = field_value(
                f, raw.value, hints[f.name], key=raw.key, source=raw.source, from_env=raw.from_env
            )
    return cls(**values)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Override] | None = None,
) -> Settings:
    """Reads the TOML file (if any) and the environment, validates, and returns the settings.

    `overrides` are command-line values by dotted key ("server.port"); they win over both.
    """
    env = os.environ if env is None else env
    if path is None and env.get("SIDECAR_CONFIG"):
        path = env["SIDECAR_CONFIG"]
    data: dict[str, Any] = {}
    source = "<defaults>"
    base: Path | None = None
    if path is not None:
        source = str(path)
        base = Path(path).parent
        try:
            with Path(path).open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{source}: file not found") from exc
        except OSError as exc:
            raise ConfigError(f"{source}: cannot be read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return settings_from_mapping(data, env=env, source=source, overrides=overrides, base=base)


def settings_from_mapping(
    data: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<mapping>",
    overrides: Mapping[str, Override] | None = None,
    base: Path | None = None,
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
            cls,
            table,
            prefix=f"{name}.",
            source=source,
            env=env,
            use_env=True,
            overrides=overrides,
            base=base,
        )
    mailboxes = _load_mailboxes(data.get("mailboxes"), source=source, env=env, base=base)
    alerts = data.get("alerts", {})
    if not isinstance(alerts, dict):
        raise ConfigError(f"{source}: alerts: expected a table, got {alerts!r}")
    settings = Settings(**sections, mailboxes=mailboxes, alerts=alerts, source=source)
    _check(settings)
    return settings


def _load_mailboxes(
    raw: object, *, source: str, env: Mapping[str, str], base: Path | None
) -> list[MailboxSettings]:
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
                base=base,
            )
            if "name" not in table:
                box = dataclasses.replace(box, name=f"{box.username or 'mailbox'}@{box.host}")
            mailboxes.append(box)
    from_env_keys = [k for k in _MAILBOX_ENV_KEYS if _set_in_environment(k, env)]
    if from_env_keys:
        from_env = _build_section(
            MailboxSettings, {}, prefix="", source=source, env=env, use_env=True
        )
        if mailboxes:
            # The environment overrides the first mailbox, as it overrides any other key.
            changes = {k: getattr(from_env, k) for k in from_env_keys}
            mailboxes[0] = dataclasses.replace(mailboxes[0], **changes)
        elif from_env.host:
            mailboxes.append(from_env)
    seen: set[str] = set()
    for index, box in enumerate(mailboxes):
        if box.name in seen:
            raise ConfigError(f"{source}: mailboxes[{index}].name: duplicate name {box.name!r}")
        seen.add(box.name)
    return [box for box in mailboxes if box.host]


def _set_in_environment(name: str, env: Mapping[str, str]) -> bool:
    """Whether a non-empty IMAP_* variable (or the _FILE twin of a secret) sets this key."""
    for f in dataclasses.fields(MailboxSettings):
        if f.name == name and f.metadata.get("env"):
            variable = str(f.metadata["env"])
            return bool(env.get(variable) or (is_secret(f) and env.get(f"{variable}_FILE")))
    return False


def _check(settings: Settings) -> None:
    """What no single setting can check: how settings relate to each other."""
    source = settings.source
    # No rule ties poll_interval to imap.lease_ttl: the leader renews its lease while it rests
    # (idling or not), every third of the TTL, so any interval keeps the lease.
    if settings.imap.idle_keepalive >= settings.imap.idle_renew:
        raise ConfigError(
            f"{source}: imap.idle_keepalive: expected less than imap.idle_renew "
            f"({format_duration(settings.imap.idle_renew)}), "
            f"got {format_duration(settings.imap.idle_keepalive)}"
        )
    for index, box in enumerate(settings.mailboxes):
        if not box.username:
            raise ConfigError(f"{source}: mailboxes[{index}].username (IMAP_USERNAME): required")
        problem = _oauth_problem(box)
        if problem:
            raise ConfigError(f"{source}: mailboxes[{index}].{problem}")
        problem = folder_name_problem(box.folder)
        if problem:
            raise ConfigError(f"{source}: mailboxes[{index}].folder (IMAP_FOLDER): {problem}")
    for entry in settings.links.allowed_hosts:
        if not re.fullmatch(r"(https?://)?[A-Za-z0-9.\-\[\]:]+(:\d+)?", entry):
            raise ConfigError(
                f"{source}: links.allowed_hosts (LINK_ALLOWED_HOSTS): {entry!r} is not "
                "host[:port] or scheme://host:port"
            )
    webhook = settings.webhook
    if webhook.backoff_initial > webhook.backoff_max:
        raise ConfigError(
            f"{source}: webhook.backoff_max: expected at least webhook.backoff_initial "
            f"({format_duration(webhook.backoff_initial)}), "
            f"got {format_duration(webhook.backoff_max)}"
        )


def _oauth_problem(box: MailboxSettings) -> str:
    """What an OAuth mailbox lacks: a static token, or all of the refresh grant's parts."""
    if box.auth == "password":
        return ""
    if box.oauth_refresh_token:
        for key, env in (
            ("oauth_token_url", "IMAP_OAUTH_TOKEN_URL"),
            ("oauth_client_id", "IMAP_OAUTH_CLIENT_ID"),
        ):
            if not getattr(box, key):
                return f"{key} ({env}): required by the refresh-token grant"
        return ""
    if not box.access_token:
        return (
            f"auth (IMAP_AUTH): {box.auth} needs access_token (IMAP_ACCESS_TOKEN) or the "
            "refresh-token grant (oauth_refresh_token, oauth_token_url, oauth_client_id)"
        )
    return ""


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
        if is_secret(f) and value:
            value = MASK
        elif isinstance(value, str) and "://" in value:
            value = re.sub(r"(://)[^/@\s]*@", r"\1***@", value)
        out[f.name] = float(value) if isinstance(value, Duration) else value
    return out
