// The dashboard: reads config once, then refreshes every panel on the poller's schedule.

import { Api, AuthRequired, Unreachable, clearToken, getToken, setToken, takeTokenFromFragment } from "./api.js";
import { RedriveDialog, renderDeadLetters } from "./deadletters.js";
import { DeliveriesView } from "./deliveries.js";
import { Rum } from "./rum.js";
import { Poller } from "./schedule.js";
import { RECENT_QUERY, renderRecentTransfers, renderTransferCounts } from "./transfers.js";
import {
  renderAlerts, renderChecks, renderConnection, renderLogs, renderMetrics, renderOverall,
  renderCertificates, renderPollers, setupLoggerOptions,
} from "./views.js";

const rum = new Rum();
const api = new Api((route, seconds) => rum.addApi(route, seconds));
let config = null;
let lastStatus = null;
let lastMetrics = null;
let deadLetters = new Map();

function logFilters() {
  return {
    level: document.getElementById("log-level").value,
    logger: document.getElementById("log-logger").value,
    q: document.getElementById("log-search").value.trim(),
    limit: 200,
  };
}

// Settled results: one failing panel does not blank the others; auth and reachability win.
function firstFatal(results) {
  const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  const auth = errors.find((e) => e instanceof AuthRequired);
  if (auth) return auth;
  if (errors.length === results.length && errors.some((e) => e instanceof Unreachable)) {
    return errors.find((e) => e instanceof Unreachable);
  }
  return null;
}

async function loadConfig() {
  if (config) return;
  config = await api.get("/api/config");
  const jaeger = String(config.jaeger_ui_url || "");
  config.jaeger_ui_url = /^https?:\/\//i.test(jaeger) ? jaeger.replace(/\/+$/, "") : "";
  poller.setInterval(config.poll_interval);
}

async function refresh() {
  await loadConfig();
  const results = await Promise.allSettled([
    api.get("/api/status"),
    api.get("/api/metrics"),
    api.get("/api/alerts"),
    api.get("/api/logs", logFilters()),
    api.get("/api/logs", RECENT_QUERY),
    api.get("/api/dead-letters", { limit: 50 }),
    deliveries.request(),
  ]);
  const fatal = firstFatal(results);
  if (fatal) throw fatal;
  const [status, metrics, alerts, logs, transfers, letters, found] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
  if (status) {
    lastStatus = status;
    renderOverall(status);
    renderChecks(status);
    renderPollers(status);
    renderCertificates(status);
    deliveries.setMailboxes(status.pollers.map((p) => p.mailbox));
  }
  if (metrics) {
    lastMetrics = metrics;
    renderMetrics(metrics, lastStatus);
    renderTransferCounts(metrics);
  }
  if (alerts) renderAlerts(alerts);
  if (logs) renderLogs(logs, config.jaeger_ui_url);
  if (transfers) renderRecentTransfers(transfers, config.jaeger_ui_url);
  if (letters) {
    deadLetters = new Map(letters.dead_letters.map((letter) => [letter.email_id, letter]));
    renderDeadLetters(letters);
    redrive.settle(deadLetters);
  }
  if (found) deliveries.refreshed(found);
  await rum.flush(api);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
}

async function refreshLogs() {
  try {
    renderLogs(await api.get("/api/logs", logFilters()), config ? config.jaeger_ui_url : "");
  } catch (error) {
    if (error instanceof AuthRequired) askForToken("The token was refused. Enter it again.");
  }
}

function askForToken(message) {
  clearToken();
  poller.halt();
  const section = document.getElementById("auth");
  section.hidden = false;
  if (message) document.getElementById("auth-message").textContent = message;
  document.getElementById("content").hidden = true;
  document.getElementById("token-input").focus();
}

function setupAuthForm() {
  document.getElementById("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    const token = input.value.trim();
    input.value = "";
    if (!token) return;
    setToken(token);
    document.getElementById("auth").hidden = true;
    document.getElementById("content").hidden = false;
    poller.resume();
  });
}

function setupLogFilters() {
  let debounce = null;
  const form = document.getElementById("log-filters");
  form.addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("log-level").addEventListener("change", refreshLogs);
  document.getElementById("log-logger").addEventListener("change", refreshLogs);
  document.getElementById("log-search").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(refreshLogs, 250);
  });
}

const poller = new Poller(refresh, {
  intervalSeconds: 30,
  onState(state) {
    if (state.state === "auth") {
      askForToken(getToken() ? "The token was refused. Enter it again." : "");
      renderConnection(state);
      return;
    }
    renderConnection(state);
    if (state.state === "error") console.warn(state.error);
  },
});

const redrive = new RedriveDialog(api, {
  onDone: () => poller.run(),
  onAuth: () => askForToken("The token was refused. Enter it again."),
});
redrive.attach(document.getElementById("dead-letters"), () => deadLetters);
const deliveries = new DeliveriesView(api, redrive, {
  lettersById: () => deadLetters,
  onAuth: () => askForToken("The token was refused. Enter it again."),
});

takeTokenFromFragment();
setupLoggerOptions();
setupAuthForm();
setupLogFilters();
rum.observe();
window.addEventListener("pagehide", () => rum.flush(api, { keepalive: true, force: true }));
// Charts are redrawn from what is already here: a resize never calls the sidecar.
window.addEventListener("resize", () => {
  if (lastMetrics) renderMetrics(lastMetrics, lastStatus);
});
poller.start();
