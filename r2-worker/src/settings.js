// The Worker's settings, read once per request from its environment (wrangler.toml [vars]).

import { sourcePolicy } from "./source-policy.js";

export const DEFAULT_MAX_BYTES = 5 * 1024 * 1024 * 1024;
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_FILES = 100;

export function readSettings(env) {
  return {
    policy: sourcePolicy(env),
    maxBytes: positiveInt(env.MAX_BYTES, DEFAULT_MAX_BYTES),
    idleTimeoutMs: positiveInt(env.UPSTREAM_TIMEOUT_MS, DEFAULT_UPSTREAM_TIMEOUT_MS),
    maxFiles: positiveInt(env.MAX_FILES, DEFAULT_MAX_FILES),
    // Origins whose HTML answers are stored as files: an app that really wants the page.
    htmlOrigins: parseOrigins(env.R2_HTML_ALLOWED_ORIGINS),
    // Test-only: provider origin -> stand-in origin. Never set in a deployment (wrangler.toml
    // leaves it out); every rewritten URL still passes the source policy.
    testOrigins: parseOriginMap(env.TEST_ONLY_PROVIDER_ORIGINS),
  };
}

// `host[:port]` (HTTPS) or `scheme://host:port`, comma-separated; unparsable entries allow nothing.
export function parseOrigins(text) {
  const origins = new Set();
  for (const raw of String(text || "").split(",")) {
    const origin = originOf(raw.trim());
    if (origin) origins.add(origin);
  }
  return origins;
}

// `https://provider.example=http://127.0.0.1:8001,...`
function parseOriginMap(text) {
  const map = new Map();
  for (const raw of String(text || "").split(",")) {
    const [from, to] = raw.split("=").map((s) => s.trim());
    const source = originOf(from || "");
    const target = originOf(to || "");
    if (source && target) map.set(source, target);
  }
  return map;
}

function originOf(entry) {
  if (!entry) return null;
  try {
    const parsed = new URL(entry.includes("://") ? entry : `https://${entry}`);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.origin : null;
  } catch {
    return null;
  }
}

export function positiveInt(raw, fallback) {
  const value = Number(raw);
  return Number.isFinite(value) && value > 0 ? Math.floor(value) : fallback;
}
