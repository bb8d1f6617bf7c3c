// Polling that sleeps while nobody looks: paused when the page is hidden or the window blurred,
// one refresh at once when it is seen again, exponential backoff while the sidecar is away.

import { AuthRequired, Unreachable } from "./api.js";

export class Poller {
  // task() refreshes the page; it throws Unreachable or AuthRequired for the states handled here.
  constructor(task, { intervalSeconds, onState = () => {} }) {
    this.task = task;
    this.onState = onState;
    this.focused = true;
    this.halted = false;
    this.failures = 0;
    this.timer = null;
    this.running = false;
    this.again = false;
    this.setInterval(intervalSeconds);
  }

  setInterval(seconds) {
    const value = Number(seconds);
    this.intervalMs = Number.isFinite(value) && value > 0 ? value * 1000 : 30000;
    this.maxBackoffMs = Math.max(60000, this.intervalMs * 5);
  }

  get active() {
    return !document.hidden && this.focused && !this.halted;
  }

  start() {
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) this.pause();
      else this.wake();
    });
    window.addEventListener("blur", () => {
      this.focused = false;
      this.pause();
    });
    window.addEventListener("focus", () => {
      this.focused = true;
      this.wake();
    });
    // The first view loads once even without focus; visibility alone decides that.
    if (!document.hidden && !this.halted) this.run();
  }

  pause() {
    clearTimeout(this.timer);
    this.timer = null;
    this.onState({ state: this.failures ? "disconnected" : "paused" });
  }

  wake() {
    if (this.active) this.run();
  }

  // Stops until resume(): used while the page waits for a token.
  halt() {
    this.halted = true;
    clearTimeout(this.timer);
    this.timer = null;
  }

  resume() {
    this.halted = false;
    this.failures = 0;
    if (!document.hidden) this.run();
  }

  schedule(delayMs) {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.active) return;
    this.timer = setTimeout(() => this.run(), delayMs);
  }

  async run() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    let delay = null;
    try {
      await this.task();
      this.failures = 0;
      // A refresh that was in flight when the page went out of view must not claim "live".
      this.onState({ state: this.active ? "connected" : "paused" });
    } catch (error) {
      if (error instanceof AuthRequired) {
        this.halt();
        this.onState({ state: "auth" });
      } else if (error instanceof Unreachable) {
        this.failures += 1;
        delay = Math.min(this.intervalMs * 2 ** this.failures, this.maxBackoffMs);
        delay = Math.round(delay * (0.9 + Math.random() * 0.2));
        this.onState({ state: "disconnected", retryMs: delay, error });
      } else {
        this.onState({ state: "error", error });
      }
    } finally {
      this.running = false;
    }
    if (this.again) {
      this.again = false;
      if (this.active) {
        this.run();
        return;
      }
    }
    // The task may have changed the interval (the first refresh reads it from /api/config).
    this.schedule(delay ?? this.intervalMs);
  }
}
