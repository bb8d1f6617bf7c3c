// Which source URLs the Worker may fetch: every URL a resolver produces, and every redirect,
// passes checkSource before it is fetched. The host rule itself is hosts.js, shared in spirit and
// in test cases with the sidecar's link check.

import { badRequest, refuse } from "./errors.js";
import { hostRefusal } from "./hosts.js";

export function sourcePolicy(env) {
  const origins = new Set();
  for (const raw of String(env.R2_ALLOWED_HOSTS || "").split(",")) {
    const entry = raw.trim();
    if (!entry) continue;
    try {
      const parsed = new URL(entry.includes("://") ? entry : `https://${entry}`);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") origins.add(parsed.origin);
    } catch {
      // An unparsable entry allows nothing; the rest of the list still applies.
    }
  }
  return { origins };
}

export function checkSource(raw, policy, what = "source_url") {
  let url;
  try {
    url = new URL(raw);
  } catch {
    throw badRequest(`${what} is not a valid URL`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw refuse(`${what} scheme ${url.protocol} is not allowed`);
  }
  if (url.username || url.password) throw refuse(`${what} must not contain credentials`);
  const listed = policy.origins.has(url.origin);
  if (listed) return url;
  if (url.protocol !== "https:") throw refuse(`${what} must use https (origin not in R2_ALLOWED_HOSTS)`);
  const refusal = hostRefusal(url.hostname);
  if (refusal !== null) throw refuse(`${what} host ${url.hostname} is not public: ${refusal}`);
  return url;
}
