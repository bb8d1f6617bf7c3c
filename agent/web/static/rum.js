// The page's own performance, queued and sent in small batches to POST /api/rum (seconds).

const MAX_SECONDS = 300;
const MAX_QUEUE = 200;
// API timings wait for a fuller batch; page-load timings go with the next refresh.
const BATCH_SIZE = 25;
const BATCH_AGE_MS = 30000;

function valid(seconds) {
  return Number.isFinite(seconds) && seconds >= 0 && seconds <= MAX_SECONDS;
}

export class Rum {
  constructor({ maxBatch = 100 } = {}) {
    this.page = [];
    this.api = [];
    this.maxBatch = maxBatch;
    this.sending = false;
    this.lastFlush = performance.now();
  }

  addPage(metric, seconds) {
    if (valid(seconds)) this.page.push({ metric, seconds });
  }

  addApi(route, seconds) {
    // Old timings are dropped first when the sidecar cannot take them for a while.
    if (!valid(seconds)) return;
    this.api.push({ route, seconds });
    if (this.api.length > MAX_QUEUE) this.api.splice(0, this.api.length - MAX_QUEUE);
  }

  get pending() {
    return this.page.length + this.api.length;
  }

  // Paint timings arrive through an observer; navigation timing once the load event is over.
  observe() {
    const seen = new Set();
    const paint = (entry) => {
      if (seen.has(entry.name)) return;
      seen.add(entry.name);
      this.addPage(entry.name, entry.startTime / 1000);
    };
    if (typeof PerformanceObserver !== "undefined" &&
        (PerformanceObserver.supportedEntryTypes || []).includes("paint")) {
      new PerformanceObserver((list) => list.getEntries().forEach(paint))
        .observe({ type: "paint", buffered: true });
    }
    const navigation = () => {
      const [entry] = performance.getEntriesByType("navigation");
      if (!entry) return;
      this.addPage("navigation", entry.loadEventEnd / 1000);
      this.addPage("dom-content-loaded", entry.domContentLoadedEventEnd / 1000);
    };
    if (document.readyState === "complete") setTimeout(navigation, 0);
    else window.addEventListener("load", () => setTimeout(navigation, 0), { once: true });
  }

  get due() {
    return this.page.length > 0 || this.api.length >= BATCH_SIZE ||
      (this.api.length > 0 && performance.now() - this.lastFlush >= BATCH_AGE_MS);
  }

  // Sends a batch when one is due (called after a refresh, so it never wakes a sleeping page);
  // `force` sends whatever is queued, as when the page goes away.
  async flush(api, { keepalive = false, force = false } = {}) {
    if (this.sending || this.pending === 0 || !(force || this.due)) return;
    this.lastFlush = performance.now();
    const page = this.page.splice(0, this.maxBatch);
    const api_ = this.api.splice(0, Math.max(0, this.maxBatch - page.length));
    this.sending = true;
    try {
      await api.post("/api/rum", { page, api: api_ }, { keepalive });
    } catch {
      // Page timings matter most; they get another chance with the next refresh.
      this.page.unshift(...page);
    } finally {
      this.sending = false;
    }
  }
}
