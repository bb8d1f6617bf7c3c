// Which hosts a fetch may go to: one rule for every URL the Worker fetches (a source, a redirect
// target, a URL a provider resolver produced). Held in tests to the sidecar's rule, whose
// reference is Python's ipaddress (tests/cases/reserved_hosts.json drives both sides).

// Names that never lead to a public file server: each, and every name under it, is refused.
// At most two labels each (the check looks at a host's last one and last two).
const RESERVED_NAMES = new Set([
  "localhost", // RFC 6761
  "test", // RFC 6761
  "invalid", // RFC 6761
  "example", // RFC 6761 (example.com and friends are ordinary names)
  "local", // RFC 6762, multicast DNS
  "onion", // RFC 7686
  "home.arpa", // RFC 8375
  "alt", // RFC 9476
  "internal", // reserved by ICANN for private use (2024); metadata.google.internal
  "intranet", // RFC 6762 appendix G: used privately, never to be delegated
  "private",
  "corp",
  "home",
  "lan",
]);

// Every range Python's ipaddress (3.11) calls private, reserved, loopback, link-local, multicast,
// unspecified, site-local or not global, plus those its table may lack: IETF protocol
// assignments, documentation 3fff::/20 (RFC 9637), SRv6 SIDs 5f00::/16 (RFC 9602), and every
// IPv6 form that embeds an IPv4 address, refused whole whatever it embeds (compatible, mapped,
// translated, NAT64, Teredo, 6to4): no file server is reachable only through one.
const NOT_PUBLIC_V4 = [
  "0.0.0.0/8", // this network; 0.0.0.0 unspecified
  "10.0.0.0/8", // private
  "100.64.0.0/10", // shared address space (CGNAT)
  "127.0.0.0/8", // loopback
  "169.254.0.0/16", // link-local, cloud metadata
  "172.16.0.0/12", // private
  "192.0.0.0/24", // IETF protocol assignments
  "192.0.2.0/24", // documentation (TEST-NET-1)
  "192.168.0.0/16", // private
  "198.18.0.0/15", // benchmarking
  "198.51.100.0/24", // documentation (TEST-NET-2)
  "203.0.113.0/24", // documentation (TEST-NET-3)
  "224.0.0.0/4", // multicast
  "240.0.0.0/4", // reserved, and the limited broadcast 255.255.255.255
].map(v4Network);

const NOT_PUBLIC_V6 = [
  "::/8", // reserved by the IETF: ::, ::1, compatible, mapped, translated, NAT64 64:ff9b::/96
  "100::/8", // reserved; 100::/64 discard-only
  "200::/7",
  "400::/6",
  "800::/5",
  "1000::/4",
  "2001::/23", // IETF protocol assignments, Teredo 2001::/32
  "2001:db8::/32", // documentation
  "2002::/16", // 6to4
  "3fff::/20", // documentation (RFC 9637)
  "4000::/3",
  "6000::/3",
  "8000::/3",
  "a000::/3",
  "c000::/3",
  "e000::/4",
  "f000::/5",
  "f800::/6",
  "fc00::/7", // unique local
  "fe00::/9",
  "fe80::/10", // link-local
  "fec0::/10", // site-local (deprecated)
  "ff00::/8", // multicast
].map(v6Network);

// The host as the URL parser reads it (percent-escapes and IDNA decoded, lower case, IPv4 in any
// numeric form as a dotted quad, IPv6 compressed and bracketed), without its trailing dot; null
// when it is not a host at all.
export function normalizeHost(hostname) {
  if (typeof hostname !== "string" || hostname === "" || /[\s/\\@?#]/.test(hostname)) return null;
  const bracketed = hostname.startsWith("[") && hostname.endsWith("]");
  if (hostname.includes(":") && !bracketed) return null;
  let host;
  try {
    host = new URL(`http://${hostname}/`).hostname;
  } catch {
    return null;
  }
  if (host.endsWith(".")) host = host.slice(0, -1);
  if (host === "" || host.startsWith(".") || host.endsWith(".") || host.includes("..")) return null;
  return host;
}

// Why no fetch may go to this host (a reserved name, a non-public address), or null when it may.
export function hostRefusal(hostname) {
  const host = normalizeHost(hostname);
  if (host === null) return "not a valid host name";
  if (host.startsWith("[")) {
    const v6 = parseIPv6(host.slice(1, -1));
    if (v6 === null) return "not a valid IP address";
    return NOT_PUBLIC_V6.some((net) => inNetwork(v6, net)) ? "not a public address" : null;
  }
  const v4 = parseIPv4(host);
  if (v4 !== null) {
    return NOT_PUBLIC_V4.some((net) => inNetwork(v4, net)) ? "not a public address" : null;
  }
  const labels = host.split(".");
  for (const suffix of [labels.slice(-1).join("."), labels.slice(-2).join(".")]) {
    if (RESERVED_NAMES.has(suffix)) return `a reserved name (.${suffix})`;
  }
  if (labels.length === 1) return "a single-label name";
  return null;
}

function parseIPv4(host) {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (!m) return null;
  const octets = m.slice(1).map(Number);
  if (!octets.every((o) => o <= 255)) return null;
  return { bits: 32, value: octets.reduce((acc, o) => (acc << 8n) | BigInt(o), 0n) };
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
  if (groups.length !== 8 || !groups.every((g) => Number.isInteger(g))) return null;
  return { bits: 128, value: groups.reduce((acc, g) => (acc << 16n) | BigInt(g), 0n) };
}

function v4Network(cidr) {
  const [address, prefix] = cidr.split("/");
  return network(parseIPv4(address), Number(prefix));
}

function v6Network(cidr) {
  const [address, prefix] = cidr.split("/");
  return network(parseIPv6(address), Number(prefix));
}

function network(address, prefix) {
  const shift = BigInt(address.bits - prefix);
  return { bits: address.bits, shift, base: address.value >> shift };
}

function inNetwork(address, net) {
  return address.bits === net.bits && address.value >> net.shift === net.base;
}
