// Deliveries: every mail found in the delivery log, searchable, each opening to its links, files,
// reasons and trace; a dead-lettered one can be re-driven from there.

import { ApiError, AuthRequired } from "./api.js";
import { bytes } from "./transfers.js";
import { ago, badge, el } from "./views.js";

const PAGE = 50;
const MAX_PAGE = 500;
const OUTCOME_TEXT = { dead_lettered: "dead-lettered" };

function lagText(seconds) {
  if (typeof seconds !== "number") return "–";
  const abs = Math.abs(seconds);
  if (abs < 120) return `${Math.round(seconds)} s`;
  if (abs < 7200) return `${Math.round(seconds / 60)} min`;
  if (abs < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function outcomeBadge(outcome) {
  const node = badge(outcome);
  node.textContent = OUTCOME_TEXT[outcome] || outcome;
  return node;
}

// "2 transferred · 1 failed", or "no links".
export function linksSummary(links) {
  if (!links.length) return "no links";
  const counts = new Map();
  for (const link of links) counts.set(link.status, (counts.get(link.status) || 0) + 1);
  return [...counts].map(([status, n]) => `${n} ${status}`).join(" · ");
}

function fact(list, term, value) {
  if (value === null || value === undefined || value === "") return;
  list.append(el("dt", { text: term }), el("dd", {}, [value instanceof Node ? value : String(value)]));
}

function linkItem(link) {
  const files = link.files.map((file) => el("li", {}, [
    el("code", { text: file.r2_key }),
    ` ${bytes(file.size)}`,
  ]));
  return el("li", { attrs: { "data-status": link.status, "data-provider": link.provider } }, [
    el("strong", { text: link.provider }), " ", badge(link.status),
    link.size !== null ? ` ${bytes(link.size)}` : "",
    el("div", {}, [el("code", { text: link.url })]),
    link.r2_key ? el("div", {}, ["R2 key ", el("code", { text: link.r2_key })]) : "",
    link.error ? el("div", { className: "error", text: link.error }) : "",
    files.length ? el("ul", { className: "files" }, files) : "",
  ]);
}

export class DeliveriesView {
  // lettersById() is the dead-letter panel's latest list; onAuth() asks for the token again.
  constructor(api, redrive, { lettersById = () => new Map(), onAuth = () => {} } = {}) {
    this.api = api;
    this.redrive = redrive;
    this.lettersById = lettersById;
    this.onAuth = onAuth;
    this.entries = [];
    this.cursor = null;
    this.current = null;
    this.shown = null; // what #deliveries-message says: null, "error" or "redrive"
    this.generation = 0;
    this.table = document.getElementById("deliveries");
    this.dialog = document.getElementById("delivery-dialog");
    this.more = document.getElementById("deliveries-more");
    this.redriveButton = document.getElementById("delivery-redrive");
    this.setup();
  }

  setup() {
    const form = document.getElementById("delivery-filters");
    form.addEventListener("submit", (event) => event.preventDefault());
    let debounce = null;
    document.getElementById("delivery-search").addEventListener("input", () => {
      clearTimeout(debounce);
      debounce = setTimeout(() => this.search(), 300);
    });
    for (const id of ["delivery-outcome", "delivery-status", "delivery-mailbox", "delivery-since", "delivery-until"]) {
      document.getElementById(id).addEventListener("change", () => this.search());
    }
    this.more.addEventListener("click", () => this.loadMore());
    this.table.addEventListener("click", (event) => {
      const row = event.target.closest("tbody tr");
      if (row) this.open(Number(row.dataset.index));
    });
    this.table.addEventListener("keydown", (event) => {
      const row = event.target.closest("tbody tr");
      if (row && (event.key === "Enter" || event.key === " ")) {
        event.preventDefault();
        this.open(Number(row.dataset.index));
      }
    });
    document.getElementById("delivery-close").addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => {
      this.current = null;
    });
    this.redriveButton.addEventListener("click", () => this.askRedrive());
  }

  filters() {
    const value = (id) => document.getElementById(id).value.trim();
    const since = value("delivery-since");
    const until = value("delivery-until");
    return {
      q: value("delivery-search"),
      outcome: value("delivery-outcome"),
      status: value("delivery-status"),
      mailbox: value("delivery-mailbox"),
      // Whole days in UTC, as the API reads ISO dates.
      since: since ? `${since}T00:00:00Z` : "",
      until: until ? `${until}T23:59:59.999Z` : "",
    };
  }

  // The poller's refresh: the same filters, as many rows as are shown (so paging survives it).
  // Its answer is dropped by refreshed() when a search started meanwhile.
  async request() {
    const generation = this.generation;
    const limit = Math.min(MAX_PAGE, Math.max(PAGE, this.entries.length));
    const data = await this.api.get("/api/deliveries", { ...this.filters(), limit });
    return { data, generation };
  }

  refreshed({ data, generation }) {
    if (generation === this.generation) this.render(data);
  }

  setMailboxes(names) {
    const select = document.getElementById("delivery-mailbox");
    const have = new Set([...select.options].map((option) => option.value));
    for (const name of names) {
      if (!have.has(name)) select.append(el("option", { text: name, attrs: { value: name } }));
    }
  }

  render(data) {
    this.entries = data.deliveries || [];
    this.cursor = data.next_cursor || null;
    this.draw();
    if (this.shown === "error") {
      this.message("");
      this.shown = null;
    }
  }

  draw() {
    const rows = this.entries.map((entry, index) => el("tr", {
      attrs: { "data-index": String(index), "data-email-id": entry.email_id, "data-outcome": entry.outcome, tabindex: "0" },
    }, [
      el("td", {}, [outcomeBadge(entry.outcome)]),
      el("td", { className: "sender", text: entry.sender || "–" }),
      el("td", { className: "subject", text: entry.subject || "(no subject)", title: entry.message_id || "" }),
      el("td", { className: "col-links", text: linksSummary(entry.links) }),
      el("td", { className: "col-lag nowrap", text: lagText(entry.lag_seconds) }),
      el("td", { className: "col-time nowrap", text: ago(entry.recorded_at), title: entry.recorded_at }),
    ]));
    this.table.querySelector("tbody").replaceChildren(...rows);
    document.getElementById("deliveries-empty").hidden = rows.length > 0;
    this.more.hidden = !this.cursor;
  }

  message(text, failed = true) {
    const node = document.getElementById("deliveries-message");
    node.textContent = text;
    node.dataset.failed = failed ? "true" : "false";
    node.hidden = !text;
  }

  async fetch(params) {
    try {
      return await this.api.get("/api/deliveries", params);
    } catch (error) {
      if (error instanceof AuthRequired) this.onAuth();
      else {
        this.message(error instanceof ApiError && error.detail ? error.detail : error.message);
        this.shown = "error";
      }
      return null;
    }
  }

  async search() {
    const generation = ++this.generation;
    const data = await this.fetch({ ...this.filters(), limit: PAGE });
    // A newer search started while this one was in flight: its answer wins.
    if (data && generation === this.generation) this.render(data);
  }

  async loadMore() {
    if (!this.cursor) return;
    const generation = this.generation;
    this.more.disabled = true;
    const data = await this.fetch({ ...this.filters(), limit: PAGE, cursor: this.cursor });
    this.more.disabled = false;
    if (!data || generation !== this.generation) return;
    this.entries = this.entries.concat(data.deliveries || []);
    this.cursor = data.next_cursor || null;
    this.draw();
  }

  open(index) {
    const entry = this.entries[index];
    if (!entry) return;
    this.current = entry;
    document.getElementById("delivery-title").textContent = entry.subject || "(no subject)";
    const facts = document.getElementById("delivery-facts");
    facts.replaceChildren();
    fact(facts, "Outcome", outcomeBadge(entry.outcome));
    fact(facts, "Reason", entry.reason);
    fact(facts, "From", entry.sender);
    fact(facts, "Message-ID", entry.message_id);
    fact(facts, "Mailbox", entry.mailbox);
    fact(facts, "Email id", el("code", { text: entry.email_id, title: "the webhook's Idempotency-Key" }));
    fact(facts, "Received", entry.received_at);
    fact(facts, entry.delivered_at ? "Delivered" : "Recorded", entry.delivered_at || entry.recorded_at);
    fact(facts, "Lag", entry.lag_seconds === null ? null : lagText(entry.lag_seconds));
    const webhook = entry.status_code !== null ? `HTTP ${entry.status_code}` : "no answer";
    if (entry.attempts) fact(facts, "Webhook", `${webhook}, ${entry.attempts} attempt${entry.attempts === 1 ? "" : "s"}`);
    const links = entry.links.map(linkItem);
    document.getElementById("delivery-links").replaceChildren(...links);
    document.getElementById("delivery-no-links").hidden = links.length > 0;
    const trace = document.getElementById("delivery-trace");
    trace.hidden = !entry.trace_url;
    if (entry.trace_url) {
      trace.href = entry.trace_url;
      trace.title = `trace ${entry.trace_id}`;
    } else {
      trace.removeAttribute("href");
    }
    this.redriveButton.hidden = true;
    if (!this.dialog.open) this.dialog.showModal();
    if (entry.outcome === "dead_lettered") this.offerRedrive(entry);
  }

  // The re-drive action shows only while the mail's dead letter waits for one.
  async offerRedrive(entry) {
    let letter = this.lettersById().get(entry.email_id);
    if (!letter) {
      const data = await this.fetchLetters(entry.mailbox);
      letter = data && data.dead_letters.find((candidate) => candidate.email_id === entry.email_id);
    }
    if (this.current !== entry || !letter) return;
    this.letter = letter;
    this.redriveButton.hidden = letter.status !== "dead_lettered";
  }

  async fetchLetters(mailbox) {
    try {
      return await this.api.get("/api/dead-letters", { mailbox, limit: MAX_PAGE });
    } catch (error) {
      if (error instanceof AuthRequired) this.onAuth();
      return null;
    }
  }

  askRedrive() {
    const letter = this.letter;
    if (!letter) return;
    this.dialog.close();
    this.redrive.open(letter, (text, failed = false) => {
      this.message(text, failed);
      this.shown = "redrive";
    });
  }
}
