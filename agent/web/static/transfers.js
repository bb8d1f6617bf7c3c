// The transfer view: what became of delivery links, counted by provider and outcome since the
// sidecar started, and the latest transfers with their reason (from the r2_transfer log).

import { clock, el, traceCell } from "./views.js";

// The columns of #transfer-counts, in order after the provider.
const OUTCOMES = ["success", "unresolved", "unavailable", "failure", "timeout", "rejected", "unauthorized"];
// unresolved and unavailable are the link's own fate, not a fault of the pipeline.
const TONE = { success: "ok", unresolved: "degraded", unavailable: "degraded" };

export const RECENT_QUERY = { logger: "r2_transfer", q: "r2.transfer", limit: 20 };

export function renderTransferCounts(snapshot) {
  const metric = (snapshot.metrics || {})["r2.transfers"];
  const counts = new Map();
  for (const point of metric ? metric.points : []) {
    const attributes = point.attributes || {};
    const provider = String(attributes["r2.provider"] || "unknown");
    const row = counts.get(provider) || {};
    row[attributes.outcome] = (row[attributes.outcome] || 0) + (point.value || 0);
    counts.set(provider, row);
  }
  const rows = [...counts.keys()].sort().map((provider) => el("tr", { attrs: { "data-provider": provider } }, [
    el("td", { text: provider }),
    ...OUTCOMES.map((outcome) => el("td", {
      text: counts.get(provider)[outcome] || 0,
      attrs: { "data-outcome": outcome },
    })),
  ]));
  document.querySelector("#transfer-counts tbody").replaceChildren(...rows);
}

export function bytes(value) {
  if (typeof value !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let size = value;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit++;
  }
  return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
}

export function renderRecentTransfers(data, jaegerUrl) {
  const events = (data.events || []).filter((event) => event.event === "r2.transfer");
  const rows = events.map((event) => el("tr", {
    attrs: { "data-outcome": event.outcome || "", "data-provider": event.provider || "" },
  }, [
    el("td", { className: "nowrap", text: clock(event.timestamp), title: event.timestamp || "" }),
    el("td", { text: event.provider }),
    el("td", {}, [el("span", {
      className: "badge",
      text: event.outcome,
      attrs: { "data-status": TONE[event.outcome] || "error" },
    })]),
    el("td", { text: event.files ?? "–" }),
    el("td", { className: "nowrap", text: bytes(event.size) }),
    el("td", { className: "fields", text: event.url || "" }),
    el("td", { className: "fields", text: event.error || "" }),
    traceCell(event.trace_id, jaegerUrl),
  ]));
  document.querySelector("#transfers tbody").replaceChildren(...rows);
  document.getElementById("transfers-empty").hidden = rows.length > 0;
}
