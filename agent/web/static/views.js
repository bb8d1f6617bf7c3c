// Renders API answers into the page with DOM calls only: no data ever becomes markup.

import { drawChart, meanPerInterval, perMinute, plain, quantile } from "./charts.js";

export const KNOWN_LOGGERS = ["alerts", "app", "health", "http", "imap", "performance",
  "r2_transfer", "store", "telemetry", "webhook"];

export function el(tag, { text, className, title, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  if (title) node.title = title;
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function ago(value) {
  const date = toDate(value);
  if (!date) return "never";
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  if (seconds < 2) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

export function clock(value) {
  const date = toDate(value);
  return date ? date.toLocaleTimeString([], { hour12: false }) : "";
}

export function badge(status) {
  return el("span", { text: status, className: "badge", attrs: { "data-status": status } });
}

export function renderOverall(status) {
  const node = document.getElementById("overall");
  node.textContent = status.status;
  node.dataset.status = status.status;
  document.getElementById("version").textContent = `v${status.version}`;
  document.getElementById("updated").textContent = `updated ${clock(status.time)}`;
}

export function renderChecks(status) {
  const container = document.getElementById("checks");
  const cards = Object.entries(status.checks).map(([name, check]) => {
    const history = el("div", { className: "history", attrs: { "aria-label": `${name} recent runs` } },
      check.history.map((run) => el("span", {
        className: "run",
        attrs: { "data-status": run.status },
        title: `${clock(run.at)} ${run.status}${run.latency_ms !== null ? ` ${run.latency_ms} ms` : ""}${run.detail ? ` — ${run.detail}` : ""}`,
      })));
    const latency = check.latency_ms !== null ? `${check.latency_ms} ms` : "";
    return el("article", { className: "check", attrs: { "data-check": name } }, [
      el("header", {}, [el("strong", { text: name }), badge(check.status),
        check.required ? el("small", { text: "required" }) : ""]),
      el("p", { className: "detail", text: check.error || check.detail || "" }),
      el("p", { className: "muted", text: `checked ${ago(check.last_check)}${latency ? ` · ${latency}` : ""}` }),
      history,
    ]);
  });
  container.replaceChildren(...cards);
}

export function renderPollers(status) {
  const body = document.querySelector("#pollers tbody");
  const empty = document.getElementById("pollers-empty");
  const rows = status.pollers.map((p) => el("tr", { attrs: { "data-mailbox": p.mailbox } }, [
    el("td", { text: p.mailbox }),
    el("td", {}, [badge(p.status), p.error ? el("small", { className: "detail", text: ` ${p.error}` }) : ""]),
    el("td", { text: p.leader ? "yes" : "no" }),
    el("td", { text: ago(p.last_success), title: toDate(p.last_success)?.toISOString() || "" }),
    el("td", { text: p.watermark ?? "–" }),
    el("td", { text: p.backlog ?? "–" }),
    el("td", { text: p.mode ?? "–", title: p.mode_reason || "" }),
  ]));
  body.replaceChildren(...rows);
  empty.hidden = rows.length > 0;
  if (!rows.length) {
    const tasks = status.background_tasks || {};
    empty.textContent = `No mailbox poller (${tasks.status || "not configured"}).`;
  }
}

// Days left of each endpoint's certificate; the badge says warning or critical as the
// CertificateExpiresSoon rules do (under 14 and 3 days).
export function renderCertificates(status) {
  const body = document.querySelector("#certificates tbody");
  const rows = (status.certificates || []).map((c) => el("tr", { attrs: { "data-endpoint": c.endpoint } }, [
    el("td", { text: c.endpoint }),
    el("td", { text: c.server }),
    el("td", {}, [el("span", { className: "days", text: c.days_left.toFixed(1) }), " ", badge(c.status)]),
    el("td", { text: c.not_after }),
  ]));
  body.replaceChildren(...rows);
  document.getElementById("certificates-empty").hidden = rows.length > 0;
}

function latestValue(metric) {
  if (!metric) return null;
  return metric.points.reduce((sum, p) => sum + (p.value ?? p.sum ?? 0), 0);
}

const percent = (v) => `${(v * 100).toFixed(1)} %`;
const seconds = (v) => (v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`);

export function renderMetrics(snapshot, status) {
  const history = snapshot.history || {};
  const metrics = snapshot.metrics || {};
  const charts = [
    ["mails", perMinute(history["imap.messages"] || []), { format: (v) => v.toFixed(1) },
      (pts) => (pts.length ? `${pts[pts.length - 1][1].toFixed(1)}/min` : "–")],
    ["errors", plain(history["webhook.error_ratio"] || []), { format: percent, max: undefined },
      () => { const v = latestValue(metrics["webhook.error_ratio"]); return v === null ? "–" : percent(v); }],
    ["r2", meanPerInterval(history["r2.transfer.duration"] || []), { format: seconds },
      (pts) => (pts.length ? seconds(pts[pts.length - 1][1]) : "–")],
    ["lag", meanPerInterval(history["email.delivery.lag"] || []), { format: seconds },
      () => lagPercentiles(metrics["email.delivery.lag"])],
    ["memory", plain(history["process.memory.utilization"] || []), { format: percent, max: 1, limit: 1 },
      (pts) => {
        const memory = status && status.memory;
        if (!memory || memory.rss_mb === undefined || memory.rss_mb === null) return "–";
        const limit = memory.limit_mb ? ` / ${Math.round(memory.limit_mb)} MB` : "";
        const share = pts.length ? ` · ${percent(pts[pts.length - 1][1])}` : "";
        return `${Math.round(memory.rss_mb)} MB${limit}${share}`;
      }],
  ];
  for (const [name, points, options, label] of charts) {
    drawChart(document.getElementById(`chart-${name}`), points, options);
    document.getElementById(`value-${name}`).textContent = label(points);
  }
}

// Delivery lag percentiles since start, from the histogram's buckets.
function lagPercentiles(metric) {
  if (!metric) return "–";
  const parts = [["p50", 0.5], ["p90", 0.9], ["p99", 0.99]]
    .map(([name, q]) => [name, quantile(metric.points, q)])
    .filter(([, v]) => v !== null)
    .map(([name, v]) => `${name} ${seconds(v)}`);
  return parts.length ? parts.join(" · ") : "–";
}

export function renderAlerts(data) {
  const body = document.querySelector("#alerts tbody");
  const rows = (data.alerts || []).map((a) => el("tr", { attrs: { "data-state": a.state } }, [
    el("td", { text: a.alertname }),
    el("td", {}, [badge(a.state)]),
    el("td", { text: typeof a.value === "number" ? Number(a.value.toPrecision(4)) : a.value ?? "" }),
    el("td", { text: ago(a.since) }),
    el("td", { text: (a.annotations && (a.annotations.summary || a.annotations.description)) || "" }),
  ]));
  body.replaceChildren(...rows);
  const elsewhere = data.evaluator === "prometheus";
  document.getElementById("alerts-empty").hidden = rows.length > 0 || elsewhere;
  renderEvaluator(data);
}

// Where the rules are evaluated: with Prometheus alone, this sidecar has no alerts to show.
function renderEvaluator(data) {
  const note = document.getElementById("alerts-evaluator");
  const url = /^https?:\/\//i.test(String(data.evaluator_url || "")) ? data.evaluator_url : "";
  const where = url ? [" at ", el("a", { text: url, attrs: { href: url, rel: "noopener noreferrer" } })] : [];
  if (data.evaluator === "prometheus") {
    note.replaceChildren("Alert rules are evaluated by Prometheus", ...where,
      ", not by this sidecar: see the alerts there.");
  } else if (data.evaluator === "both") {
    note.replaceChildren("Alert rules are evaluated here and by Prometheus", ...where, ".");
  }
  note.hidden = data.evaluator !== "prometheus" && data.evaluator !== "both";
  note.dataset.evaluator = data.evaluator || "sidecar";
}

const SHOWN = new Set(["timestamp", "level", "logger", "event", "trace_id", "span_id", "seq"]);

export function traceCell(traceId, jaegerUrl) {
  if (!traceId) return el("td");
  const short = traceId.slice(0, 8);
  if (!jaegerUrl || !/^[0-9a-f]{32}$/i.test(traceId)) {
    return el("td", {}, [el("code", { text: short, title: traceId })]);
  }
  // JAEGER_UI_URL is a base (".../trace/<id>" is appended) or a template with {trace_id}.
  const href = jaegerUrl.includes("{trace_id}")
    ? jaegerUrl.replaceAll("{trace_id}", traceId)
    : `${jaegerUrl.replace(/\/+$/, "")}/trace/${traceId}`;
  const link = el("a", { text: short, title: traceId, attrs: {
    href, target: "_blank", rel: "noopener noreferrer" } });
  link.className = "trace";
  return el("td", {}, [link]);
}

function fields(event) {
  return Object.entries(event)
    .filter(([key]) => !SHOWN.has(key))
    .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`)
    .join(" ");
}

export function renderLogs(data, jaegerUrl) {
  const body = document.querySelector("#logs tbody");
  const rows = (data.events || []).map((event) => el("tr", {
    className: "log",
    attrs: { "data-level": event.level || "", "data-logger": event.logger || "",
      "data-timestamp": event.timestamp || "" },
  }, [
    el("td", { className: "nowrap", text: clock(event.timestamp), title: event.timestamp || "" }),
    el("td", {}, [el("span", { className: "level", text: event.level, attrs: { "data-level": event.level || "" } })]),
    el("td", { text: event.logger }),
    el("td", { className: "event", text: event.event }),
    el("td", { className: "fields", text: fields(event) }),
    traceCell(event.trace_id, jaegerUrl),
  ]));
  body.replaceChildren(...rows);
  document.getElementById("logs-empty").hidden = rows.length > 0;
  const select = document.getElementById("log-logger");
  const known = new Set([...select.options].map((o) => o.value));
  for (const event of data.events || []) {
    if (event.logger && !known.has(event.logger)) {
      known.add(event.logger);
      select.append(el("option", { text: event.logger, attrs: { value: event.logger } }));
    }
  }
}

export function setupLoggerOptions() {
  const select = document.getElementById("log-logger");
  for (const name of KNOWN_LOGGERS) select.append(el("option", { text: name, attrs: { value: name } }));
}

export function renderConnection({ state, retryMs, error }) {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  document.body.classList.toggle("disconnected", state === "disconnected");
  const text = {
    connected: "live",
    paused: "paused (not in view)",
    auth: "token needed",
    error: `error: ${error ? error.message : ""}`,
    disconnected: `disconnected${retryMs ? ` · retrying in ${Math.round(retryMs / 1000)} s` : ""}`,
  }[state] || state;
  node.textContent = text;
}
