// Every request the Worker makes: source policy on each URL and each redirect hop, the test-only
// origin rewrite, and a watchdog that aborts on silence or on a passed deadline.

import { TransferError, errorText, upstreamStatus } from "./errors.js";
import { checkSource } from "./source-policy.js";

const MAX_REDIRECTS = 5;
const USER_AGENT = "signal-sidecar-r2-worker/0.1";

// Aborts the request when no progress is seen for idleMs (the wait for headers and every gap
// between body chunks count, so a slow but moving 5 GB copy is never cut), or when one of its
// deadlines passes.
export class Watchdog {
  constructor(idleMs) {
    this.idleMs = idleMs;
    this.controller = new AbortController();
    this.fired = null;
    this.timers = [];
    this.idleTimer = null;
    this.kick();
  }
  // Fires at the absolute time `at` (ms since the epoch) with the error `explain()` makes.
  until(at, explain) {
    this.timers.push(setTimeout(() => this.fire(explain()), Math.max(0, at - Date.now())));
  }
  get signal() {
    return this.controller.signal;
  }
  fire(error) {
    if (this.fired) return;
    this.fired = error;
    this.controller.abort(error);
  }
  kick() {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () => this.fire(new TransferError(504, `source did not answer within ${this.idleMs} ms`, true, "timeout")),
      this.idleMs,
    );
  }
  stop() {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    for (const timer of this.timers) clearTimeout(timer);
    this.idleTimer = null;
    this.timers = [];
  }
  error() {
    return this.fired;
  }
}

// GET (or the given method) without following redirects unless asked; every URL fetched is the
// produced URL after the test-only rewrite, and both pass the source policy.
export async function fetchUpstream(raw, settings, watchdog, options = {}) {
  const what = options.what || "source_url";
  const label = options.label || "source";
  let current = checkSource(raw, settings.policy, what);
  for (let hop = 0; ; hop++) {
    const target = rewritten(current, settings, what);
    let response;
    try {
      response = await fetch(target.href, {
        method: options.method || "GET",
        redirect: "manual",
        signal: watchdog.signal,
        headers: { "User-Agent": USER_AGENT, Accept: "*/*", ...(options.headers || {}) },
        body: options.body,
      });
    } catch (err) {
      if (watchdog.fired) throw watchdog.error();
      throw new TransferError(502, `${label} unreachable: ${errorText(err)}`, true, "upstream_error");
    }
    watchdog.kick();
    const redirect = response.status >= 300 && response.status < 400 && response.headers.has("Location");
    if (!redirect || !options.followRedirects) return { response, finalUrl: current, redirects: hop };
    await cancelBody(response);
    if (hop >= MAX_REDIRECTS) {
      throw new TransferError(502, `more than ${MAX_REDIRECTS} redirects`, false, "too_many_redirects");
    }
    let next;
    try {
      next = new URL(response.headers.get("Location"), current);
    } catch {
      throw new TransferError(502, "redirect to an invalid URL", false, "upstream_error");
    }
    current = checkSource(next.href, settings.policy, "redirect target");
  }
}

// A file body: redirects followed, any status but 2xx an error, a body required.
export async function fetchFile(raw, settings, watchdog, label = "source") {
  const found = await fetchUpstream(raw, settings, watchdog, { followRedirects: true, label });
  const { response } = found;
  if (!response.ok) {
    await cancelBody(response);
    throw upstreamStatus(label, response.status);
  }
  if (response.body === null) {
    throw new TransferError(502, `${label} answered without a body`, false, "upstream_error");
  }
  return found;
}

function rewritten(url, settings, what) {
  const target = settings.testOrigins.get(url.origin);
  if (!target) return url;
  return checkSource(`${target}${url.pathname}${url.search}`, settings.policy, what);
}

export async function cancelBody(response) {
  if (response.body) await response.body.cancel().catch(() => {});
}

export function declaredLength(response) {
  const raw = response.headers.get("Content-Length");
  if (raw === null || !/^\d+$/.test(raw.trim())) return null;
  const value = Number(raw.trim());
  return Number.isSafeInteger(value) ? value : null;
}
