// Which source URLs the Worker may fetch (moved unchanged from index.js; every URL a resolver
// produces passes checkSource before it is fetched).

import { badRequest, refuse } from "./errors.js";

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
  const host = url.hostname.toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost") || host.endsWith(".local") || host.endsWith(".internal")) {
    throw refuse(`${what} host ${host} is not public`);
  }
  const v4 = parseIPv4(host);
  if (v4 !== null && !isPublicIPv4(v4)) throw refuse(`${what} address ${host} is not public`);
  if (host.startsWith("[")) {
    const v6 = parseIPv6(host.slice(1, -1));
    if (v6 === null || !isPublicIPv6(v6)) throw refuse(`${what} address ${host} is not public`);
  }
  return url;
}

// The URL parser already normalised decimal, octal and hex IPv4 forms to dotted quads.
function parseIPv4(host) {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (!m) return null;
  const octets = m.slice(1).map(Number);
  return octets.every((o) => o <= 255) ? octets : null;
}

function isPublicIPv4([a, b, c]) {
  if (a === 0 || a === 10 || a === 127) return false; // unspecified/this network, private, loopback
  if (a === 100 && b >= 64 && b <= 127) return false; // CGNAT 100.64/10
  if (a === 169 && b === 254) return false; // link-local, cloud metadata
  if (a === 172 && b >= 16 && b <= 31) return false; // private
  if (a === 192 && b === 168) return false; // private
  if (a === 192 && b === 0 && c === 0) return false; // IETF protocol assignments
  if (a === 198 && (b === 18 || b === 19)) return false; // benchmarking
  if (a >= 224) return false; // multicast, reserved, broadcast
  return true;
}

// The URL parser serialises IPv6 hosts in canonical hex form (no embedded dotted quad).
function parseIPv6(text) {
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const parse = (s) => (s ? s.split(":").map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? parseInt(g, 16) : NaN)) : []);
  const left = parse(halves[0]);
  const right = halves.length === 2 ? parse(halves[1]) : [];
  const fill = halves.length === 2 ? 8 - left.length - right.length : 0;
  if (fill < 0) return null;
  const groups = [...left, ...new Array(fill).fill(0), ...right];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g)) ? groups : null;
}

function isPublicIPv6(g) {
  if (g.every((x) => x === 0)) return false; // ::
  if (g.slice(0, 7).every((x) => x === 0) && g[7] === 1) return false; // ::1
  const embedded = [g[6] >> 8, g[6] & 0xff, g[7] >> 8, g[7] & 0xff];
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return isPublicIPv4(embedded); // ::ffff:a.b.c.d
  if (g.slice(0, 6).every((x) => x === 0)) return false; // deprecated IPv4-compatible
  if (g[0] === 0x64 && g[1] === 0xff9b) return isPublicIPv4(embedded); // NAT64
  if ((g[0] & 0xffc0) === 0xfe80) return false; // link-local fe80::/10
  if ((g[0] & 0xfe00) === 0xfc00) return false; // unique-local fc00::/7
  if ((g[0] & 0xff00) === 0xff00) return false; // multicast
  if (g[0] === 0x2001 && g[1] === 0x0db8) return false; // documentation
  return true;
}
