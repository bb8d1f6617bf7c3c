// File names as senders meant them, and the object keys they are stored under:
// `yyyy/mm/dd/<email_id>/<provider>-<link hash>/<file name>`, one folder per link.

const MAX_NAME_LENGTH = 128;
export const FALLBACK_FILENAME = "file";
const encoder = new TextEncoder();

export function filenameFromDisposition(header) {
  if (!header) return null;
  const star = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(header);
  if (star) {
    try {
      return decodeURIComponent(star[2].trim().replace(/^"|"$/g, ""));
    } catch {
      // Fall through to the plain parameter.
    }
  }
  const quoted = /filename\s*=\s*"((?:[^"\\]|\\.)*)"/i.exec(header);
  if (quoted) return quoted[1].replace(/\\(.)/g, "$1");
  const bare = /filename\s*=\s*([^;\s]+)/i.exec(header);
  return bare ? bare[1] : null;
}

export function filenameFromPath(url) {
  const last = url.pathname.split("/").filter(Boolean).pop();
  if (!last) return null;
  try {
    return decodeURIComponent(last);
  } catch {
    return last;
  }
}

// The name as the sender meant it (kept in metadata and the answer), minus any directory part
// and control characters.
export function cleanOriginal(name) {
  if (typeof name !== "string") return null;
  const base = name.split(/[\\/]/).pop().replace(/[\u0000-\u001f\u007f]/g, "").trim();
  if (!base || base === "." || base === "..") return null;
  return base.slice(0, 255);
}

function safeSegment(value, fallback) {
  let s = String(value || "")
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .replace(/[^A-Za-z0-9._-]+/g, "_")
    .replace(/\.{2,}/g, ".")
    .replace(/^[._]+/, "")
    .replace(/_+$/, "");
  if (s.length > MAX_NAME_LENGTH) {
    const dot = s.lastIndexOf(".");
    const ext = dot > 0 && s.length - dot <= 16 ? s.slice(dot) : "";
    s = s.slice(0, MAX_NAME_LENGTH - ext.length) + ext;
  }
  return s || fallback;
}

// Keys of one link's files: the same link in the same mail always gets the same folder (a retry
// overwrites its own objects), and two files of one share never share a key.
export class LinkFolder {
  static async create(now, emailId, provider, sourceUrl) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(sourceUrl)));
    const hash = [...digest.slice(0, 5)].map((b) => b.toString(16).padStart(2, "0")).join("");
    const yyyy = String(now.getUTCFullYear());
    const mm = String(now.getUTCMonth() + 1).padStart(2, "0");
    const dd = String(now.getUTCDate()).padStart(2, "0");
    const folder = `${safeSegment(provider, "link")}-${hash}`;
    return new LinkFolder(`${yyyy}/${mm}/${dd}/${safeSegment(emailId, "email")}/${folder}/`);
  }
  constructor(prefix) {
    this.prefix = prefix;
    this.used = new Set();
  }
  key(filename) {
    const name = safeSegment(filename, FALLBACK_FILENAME);
    let candidate = name;
    for (let n = 2; this.used.has(candidate); n++) {
      const dot = name.lastIndexOf(".");
      candidate = dot > 0 ? `${name.slice(0, dot)}-${n}${name.slice(dot)}` : `${name}-${n}`;
    }
    this.used.add(candidate);
    return this.prefix + candidate;
  }
}
