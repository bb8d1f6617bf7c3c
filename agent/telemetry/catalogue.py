"""Every metric instrument the sidecar exports, defined once with its unit and description."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation

from agent.telemetry.certificates import CertificateExpiry

# Seconds-based histograms: buckets from 5 ms to 10 min, enough for IMAP, webhooks and transfers.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)  # fmt: skip
# Bytes-based histograms: 1 KiB to 2 GiB.
SIZE_BUCKETS = (1024.0, 16384.0, 131072.0, 1048576.0, 5242880.0, 26214400.0, 104857600.0,
                524288000.0, 2147483648.0)  # fmt: skip
_BUCKETS = {"s": DURATION_BUCKETS, "By": SIZE_BUCKETS}
# Delivery lag: a push delivery takes about a second, a poll up to its interval (INTERNALDATE
# has whole seconds, so finer buckets would only show its rounding).
LAG_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
               600.0, 1800.0, 3600.0)  # fmt: skip

GaugeSource = Callable[[], Iterable[Observation]]


@dataclass(frozen=True)
class InstrumentSpec:
    """Name, kind, unit and description of one instrument; the telemetry reference reads these."""

    name: str
    kind: str
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    # Histogram bucket boundaries, when the unit's default ones do not fit.
    buckets: tuple[float, ...] | None = None


CATALOGUE: tuple[InstrumentSpec, ...] = (
    InstrumentSpec(
        "imap.client.operation.duration",
        "histogram",
        "s",
        "Duration of one IMAP command.",
        ("imap.command", "outcome", "error.type"),
    ),
    InstrumentSpec(
        "imap.poll.duration",
        "histogram",
        "s",
        "Duration of one poll cycle.",
        ("imap.mailbox", "outcome"),
    ),
    InstrumentSpec(
        "imap.messages",
        "counter",
        "{message}",
        "Messages handled, by outcome; a dead-lettered one also by why (error.type).",
        ("imap.mailbox", "outcome", "error.type"),
    ),
    InstrumentSpec(
        "imap.message.size",
        "histogram",
        "By",
        "RFC822.SIZE of fetched messages.",
        ("imap.mailbox",),
    ),
    InstrumentSpec(
        "imap.mailbox.backlog",
        "gauge",
        "{message}",
        "Messages above the UID watermark.",
        ("imap.mailbox",),
    ),
    InstrumentSpec(
        "imap.login.failing",
        "gauge",
        "1",
        "1 while the mailbox's latest login failed on authentication: credentials or token "
        "refused, or no access token could be had; 0 once a login succeeds.",
        ("imap.mailbox", "imap.auth"),
    ),
    InstrumentSpec(
        "imap.oauth.refreshes",
        "counter",
        "{refresh}",
        "OAuth access-token refreshes (refresh-token grant), by outcome.",
        ("imap.mailbox", "outcome"),
    ),
    InstrumentSpec(
        "imap.oauth.token.lifetime",
        "gauge",
        "s",
        "Seconds until the mailbox's OAuth access token in hand expires.",
        ("imap.mailbox",),
    ),
    InstrumentSpec(
        "tls.certificate.expiry",
        "gauge",
        "s",
        "Seconds until the notAfter of the certificate an endpoint presented at its latest "
        "connection (negative once expired).",
        ("server.address", "server.port", "tls.endpoint"),
    ),
    InstrumentSpec(
        "email.html.truncations",
        "counter",
        "{message}",
        "HTML parts cut at the size cap before conversion.",
    ),
    InstrumentSpec("email.parse.duration", "histogram", "s", "MIME parse and HTML-to-text time."),
    InstrumentSpec(
        "r2.transfer.duration",
        "histogram",
        "s",
        "Duration of one R2 transfer.",
        ("r2.provider", "outcome"),
    ),
    InstrumentSpec(
        "r2.transfer.size",
        "histogram",
        "By",
        "Bytes stored by one R2 transfer (every file of a share together).",
        ("r2.provider",),
    ),
    InstrumentSpec(
        "r2.transfers",
        "counter",
        "{transfer}",
        "R2 transfers of delivery links, by outcome: unresolved when the link leads to no "
        "files (a landing page), unavailable when the provider says they are gone or locked.",
        ("r2.provider", "outcome"),
    ),
    InstrumentSpec(
        "webhook.delivery.duration",
        "histogram",
        "s",
        "Duration of one webhook delivery (all attempts).",
        ("outcome",),
    ),
    InstrumentSpec(
        "webhook.deliveries",
        "counter",
        "{delivery}",
        "Webhook deliveries, by final outcome.",
        ("outcome",),
    ),
    InstrumentSpec(
        "webhook.error_ratio", "gauge", "1", "Failed over all webhook deliveries in the last 24 h."
    ),
    InstrumentSpec(
        "webhook.window.deliveries",
        "gauge",
        "{delivery}",
        "Webhook deliveries in the last 24 h.",
        ("outcome",),
    ),
    InstrumentSpec(
        "webhook.last_delivery.time", "gauge", "s", "Unix time of the newest webhook delivery."
    ),
    InstrumentSpec(
        "imap.mailbox.mode",
        "gauge",
        "1",
        "1 for the way the leader watches the mailbox now (imap.mode idle or poll), 0 for the "
        "other.",
        ("imap.mailbox", "imap.mode"),
    ),
    InstrumentSpec(
        "email.delivery.lag",
        "histogram",
        "s",
        "From the mail's INTERNALDATE on the IMAP server to the app's 2xx for its webhook.",
        ("imap.mailbox",),
        LAG_BUCKETS,
    ),
    InstrumentSpec(
        "poller.leader",
        "gauge",
        "1",
        "1 while this replica holds the mailbox's lease.",
        ("imap.mailbox",),
    ),
    InstrumentSpec(
        "poller.last_success.time",
        "gauge",
        "s",
        "Unix time of the mailbox's last successful cycle.",
        ("imap.mailbox",),
    ),
    InstrumentSpec("probe.up", "gauge", "1", "1 when the health check passes.", ("probe",)),
    InstrumentSpec(
        "probe.duration", "gauge", "s", "Duration of the last health check.", ("probe",)
    ),
    InstrumentSpec("system.cpu.utilization", "gauge", "1", "Host CPU busy ratio."),
    InstrumentSpec("system.memory.utilization", "gauge", "1", "Host memory used ratio."),
    InstrumentSpec(
        "system.filesystem.utilization",
        "gauge",
        "1",
        "Used ratio of the data directory's filesystem.",
        ("system.filesystem.mountpoint",),
    ),
    InstrumentSpec(
        "system.network.io", "counter", "By", "Host network bytes.", ("network.io.direction",)
    ),
    InstrumentSpec("system.process.count", "gauge", "{process}", "Processes on the host."),
    InstrumentSpec("process.memory.usage", "gauge", "By", "Resident set size of the sidecar."),
    InstrumentSpec(
        "process.memory.utilization",
        "gauge",
        "1",
        "RSS over the cgroup memory limit (or host memory without one).",
    ),
    InstrumentSpec(
        "process.cpu.utilization", "gauge", "1", "CPU time of the sidecar over wall time and cores."
    ),
    InstrumentSpec(
        "alerts.active",
        "gauge",
        "{alert}",
        "Alert instances by state, as Prometheus' ALERTS.",
        ("alertname", "alertstate"),
    ),
    InstrumentSpec(
        "alert.notifications",
        "counter",
        "{notification}",
        "Alert notifications sent, by outcome.",
        ("notifier", "outcome"),
    ),
    InstrumentSpec(
        "telemetry.export.failures", "counter", "{export}", "Failed OTLP exports.", ("signal",)
    ),
    InstrumentSpec(
        "http.server.request.duration",
        "histogram",
        "s",
        "Duration of HTTP requests served.",
        ("http.request.method", "http.route", "http.response.status_code"),
    ),
    InstrumentSpec(
        "browser.page.load.duration",
        "histogram",
        "s",
        "Dashboard page load time reported by the browser.",
        ("browser.metric",),
    ),
    InstrumentSpec(
        "browser.api.request.duration",
        "histogram",
        "s",
        "Dashboard API call durations reported by the browser.",
        ("http.route",),
    ),
)

SPECS = {spec.name: spec for spec in CATALOGUE}


class Instruments:
    """The created instruments; observable gauges read values that sources publish here.

    Callbacks return cached values only, so several metric readers never split a reading.
    """

    def __init__(self, meter: Meter, *, certificates: CertificateExpiry | None = None) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, list[GaugeSource]] = {}
        self._meter = meter
        self.imap_operation_duration = self._histogram("imap.client.operation.duration")
        self.imap_poll_duration = self._histogram("imap.poll.duration")
        self.imap_messages = self._counter("imap.messages")
        self.imap_message_size = self._histogram("imap.message.size")
        self.oauth_refreshes = self._counter("imap.oauth.refreshes")
        self.html_truncations = self._counter("email.html.truncations")
        self.parse_duration = self._histogram("email.parse.duration")
        self.r2_transfer_duration = self._histogram("r2.transfer.duration")
        self.r2_transfer_size = self._histogram("r2.transfer.size")
        self.r2_transfers = self._counter("r2.transfers")
        self.webhook_delivery_duration = self._histogram("webhook.delivery.duration")
        self.webhook_deliveries = self._counter("webhook.deliveries")
        self.delivery_lag = self._histogram("email.delivery.lag")
        self.alert_notifications = self._counter("alert.notifications")
        self.export_failures = self._counter("telemetry.export.failures")
        self.http_server_duration = self._histogram("http.server.request.duration")
        self.browser_page_load = self._histogram("browser.page.load.duration")
        self.browser_api_duration = self._histogram("browser.api.request.duration")
        # Peer certificates seen on the sidecar's own connections, for tls.certificate.expiry.
        self.certificates = certificates or CertificateExpiry()
        self._sources["tls.certificate.expiry"] = [self.certificates.observe]
        for spec in CATALOGUE:
            if spec.kind == "gauge":
                meter.create_observable_gauge(callbacks=[self._callback(spec.name)], **_kw(spec))
        network = SPECS["system.network.io"]
        meter.create_observable_counter(callbacks=[self._callback(network.name)], **_kw(network))

    def _histogram(self, name: str) -> Histogram:
        spec = SPECS[name]
        buckets = spec.buckets or _BUCKETS[spec.unit]
        return self._meter.create_histogram(
            explicit_bucket_boundaries_advisory=buckets, **_kw(spec)
        )

    def _counter(self, name: str) -> Counter:
        return self._meter.create_counter(**_kw(SPECS[name]))

    def publish(self, name: str, source: GaugeSource) -> None:
        """Adds a source of cached observations for an observable instrument of the catalogue."""
        if name not in SPECS:
            raise KeyError(f"{name} is not in the metric catalogue")
        with self._lock:
            self._sources.setdefault(name, []).append(source)

    def unpublish(self, name: str, source: GaugeSource) -> None:
        """Removes a source added with publish."""
        with self._lock:
            sources = self._sources.get(name, [])
            if source in sources:
                sources.remove(source)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                sources = list(self._sources.get(name, []))
            observations: list[Observation] = []
            for source in sources:
                observations.extend(source())
            return observations

        return observe


def _kw(spec: InstrumentSpec) -> dict[str, str]:
    return {"name": spec.name, "unit": spec.unit, "description": spec.description}
