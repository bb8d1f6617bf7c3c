// R2 fetch Worker: copies one delivery-link file into the R2 bucket by streaming it, so the
// sidecar never has to hold the bytes. Contract: DESIGN.md §7.

import { hostRefusal } from "./hosts.js";

const MAX_REDIRECTS = 5;
const DEFAULT_MAX_BYTES = 5 * 1024 * 1024 * 1024;
const DEFAULT_UPSTREAM_TIMEOUT_MS = 30_000;
// R2 multipart parts must all share one size (except the last) and be at least 5 MiB.
const PART_SIZE = 8 * 1024 * 1024;
// Body reads: wait for at least READ_MIN bytes, take at most READ_MAX, per JS round trip.
const READ_MIN = 256 * 1024;
const READ_MAX = 1024 * 1024;
const POOL_SIZE = 4;
const MAX_REQUEST_BYTES = 16 * 1024;
const MAX_NAME_LENGTH = 128;
const FALLBACK_FILENAME = "file";
const USER_AGENT = "signal-sidecar-r2-worker/0.1";

class TransferError extends Error {
  constructor(status, message, retryable, outcome) {
    super(message);
    this.status = status;
    this.retryable = retryable;
    this.outcome = outcome;
  }
}

const refuse = (message) => new TransferError(403, message, false, "refused");
const badRequest = (message) => new TransferError(400, message, false, "bad_request");

export default {
  async fetch(request, env, ctx) {
    const started = Date.now();
    const url = new URL(request.url);
    const log = {
      event: "request",
      method: request.method,
      path: maskPath(url.pathname),
      traceparent: request.headers.get("traceparent") || undefined,
    };
    let response;
    try {
      response = await route(request, env, url, log);
    } catch (err) {
      const failure =
        err instanceof TransferError
          ? err
          : new TransferError(500, "internal error", true, "internal_error");
      if (!(err instanceof TransferError)) log.exception = String(err && err.message ? err.message : err);
      log.error = failure.message;
      log.outcome = failure.outcome;
      response = failureResponse(failure);
    }
    log.status = response.status;
    log.outcome = log.outcome || (response.ok ? "success" : "error");
    log.duration_ms = Date.now() - started;
    console.log(JSON.stringify(log));
    return response;
  },
};

async function route(request, env, url, log) {
  if (url.pathname === "/health") {
    if (request.method !== "GET" && request.method !== "HEAD") throw methodNotAllowed();
    return Response.json({ status: "ok" });
  }
  if (url.pathname === "/") {
    if (request.method !== "POST") throw methodNotAllowed();
    await authorise(request, env);
    return Response.json(await transfer(request, env, url, log));
  }
  if (url.pathname.startsWith("/object/")) {
    if (request.method !== "GET") throw methodNotAllowed();
    await authorise(request, env);
    return readObject(env, url, log);
  }
  log.outcome = "not_found";
  return Response.json({ success: false, error: "not found", retryable: false }, { status: 404 });
}

function methodNotAllowed() {
  return new TransferError(405, "method not allowed", false, "bad_request");
}

function failureResponse(failure) {
  return Response.json(
    { success: false, error: failure.message, retryable: failure.retryable },
    { status: failure.status },
  );
}

// --- authentication -------------------------------------------------------------------------

const encoder = new TextEncoder();
let macKeyPromise;

function macKey() {
  // A per-isolate random key: both sides are hashed with it, so the comparison runs on two
  // equal-length digests and says nothing about the token's length or prefix.
  macKeyPromise ||= crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return macKeyPromise;
}

async function authorise(request, env) {
  const expected = env.R2_FETCH_TOKEN;
  if (!expected) {
    throw new TransferError(500, "R2_FETCH_TOKEN is not configured", false, "misconfigured");
  }
  const given = request.headers.get("X-R2-FETCH-TOKEN");
  if (!given || !(await tokensMatch(given, expected))) {
    throw new TransferError(401, "unauthorised", false, "unauthorised");
  }
}

async function tokensMatch(given, expected) {
  const key = await macKey();
  const [a, b] = await Promise.all([
    crypto.subtle.sign("HMAC", key, encoder.encode(given)),
    crypto.subtle.sign("HMAC", key, encoder.encode(expected)),
  ]);
  if (typeof crypto.subtle.timingSafeEqual === "function") {
    return crypto.subtle.timingSafeEqual(a, b);
  }
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i % y.length];
  return diff === 0;
}

// --- the transfer ---------------------------------------------------------------------------

async function transfer(request, env, selfUrl, log) {
  const started = Date.now();
  const job = await readJob(request);
  log.provider = job.provider;
  log.email_id = job.email_id;
  log.source = maskUrl(job.source_url);

  const policy = sourcePolicy(env);
  const maxBytes = positiveInt(env.MAX_BYTES, DEFAULT_MAX_BYTES);
  const timeoutMs = positiveInt(env.UPSTREAM_TIMEOUT_MS, DEFAULT_UPSTREAM_TIMEOUT_MS);
  const watchdog = new Watchdog(timeoutMs);
  // The client waits deadline_ms at most: past it nobody reads the answer, so stop copying
  // (an object landing after the client reported a failure would be stored twice on retry).
  if (job.deadline_ms !== null) watchdog.deadline(job.deadline_ms);
  try {
    const { response, finalUrl, redirects } = await fetchSource(job.source_url, policy, watchdog);
    log.redirects = redirects;
    const declared = declaredLength(response);
    if (declared !== null && declared > maxBytes) {
      await cancelBody(response);
      throw new TransferError(413, `source is ${declared} bytes, above the ${maxBytes} byte limit`, false, "too_large");
    }
    const contentType = response.headers.get("Content-Type") || "application/octet-stream";
    const originalFilename =
      cleanOriginal(job.filename) ||
      cleanOriginal(filenameFromDisposition(response.headers.get("Content-Disposition"))) ||
      cleanOriginal(filenameFromPath(finalUrl)) ||
      FALLBACK_FILENAME;
    const key = objectKey(new Date(), job.email_id, originalFilename);
    log.key = key;
    const options = {
      httpMetadata: { contentType },
      customMetadata: {
        original_filename: originalFilename,
        source_provider: job.provider,
        email_id: job.email_id,
      },
    };
    const size = await store(env.BUCKET, key, response, declared, maxBytes, watchdog, options, started);
    log.size = size;
    return {
      success: true,
      key,
      r2_url: objectUrl(env, selfUrl, key),
      size,
      content_type: contentType,
      original_filename: originalFilename,
      duration_ms: Date.now() - started,
    };
  } finally {
    watchdog.stop();
  }
}

async function readJob(request) {
  const declared = Number(request.headers.get("Content-Length") || "0");
  if (declared > MAX_REQUEST_BYTES) throw badRequest("request body too large");
  let job;
  try {
    const text = await request.text();
    if (text.length > MAX_REQUEST_BYTES) throw new Error("too large");
    job = JSON.parse(text);
  } catch {
    throw badRequest("body must be a JSON object");
  }
  if (!job || typeof job !== "object" || Array.isArray(job)) throw badRequest("body must be a JSON object");
  for (const field of ["source_url", "provider", "email_id"]) {
    if (typeof job[field] !== "string" || job[field].trim() === "") {
      throw badRequest(`${field} is required and must be a non-empty string`);
    }
  }
  if (job.filename !== undefined && job.filename !== null && typeof job.filename !== "string") {
    throw badRequest("filename must be a string");
  }
  if (
    job.deadline_ms !== undefined &&
    job.deadline_ms !== null &&
    !(Number.isInteger(job.deadline_ms) && job.deadline_ms > 0 && job.deadline_ms <= 86_400_000)
  ) {
    throw badRequest("deadline_ms must be a whole number of milliseconds from 1 to 86400000");
  }
  if (job.provider.length > 64) throw badRequest("provider is too long");
  if (job.email_id.length > 512) throw badRequest("email_id is too long");
  if (job.source_url.length > 8192) throw badRequest("source_url is too long");
  return {
    source_url: job.source_url.trim(),
    provider: job.provider.trim(),
    email_id: job.email_id.trim(),
    filename: job.filename || null,
    deadline_ms: job.deadline_ms ?? null,
  };
}

// Aborts the upstream fetch when no progress is seen for timeoutMs: the wait for headers and
// every gap between body chunks count, so a slow but moving 5 GB copy is never cut.
class Watchdog {
  constructor(timeoutMs) {
    this.timeoutMs = timeoutMs;
    this.controller = new AbortController();
    this.fired = false;
    this.deadlineMs = null;
    this.deadlineTimer = null;
    this.timer = null;
    this.kick();
  }
  deadline(ms) {
    this.deadlineMs = ms;
    this.deadlineTimer = setTimeout(() => {
      this.fired = "deadline";
      this.controller.abort(new Error("client deadline passed"));
    }, ms);
  }
  get signal() {
    return this.controller.signal;
  }
  kick() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.fired = true;
      this.controller.abort(new Error("upstream timed out"));
    }, this.timeoutMs);
  }
  stop() {
    if (this.timer !== null) clearTimeout(this.timer);
    if (this.deadlineTimer !== null) clearTimeout(this.deadlineTimer);
    this.timer = null;
    this.deadlineTimer = null;
  }
  error() {
    if (this.fired === "deadline") {
      return new TransferError(
        504,
        `transfer did not finish within the client's deadline of ${this.deadlineMs} ms`,
        true,
        "timeout",
      );
    }
    return new TransferError(504, `source did not answer within ${this.timeoutMs} ms`, true, "timeout");
  }
}

async function fetchSource(sourceUrl, policy, watchdog) {
  let current = checkSource(sourceUrl, policy);
  for (let hop = 0; ; hop++) {
    let response;
    try {
      response = await fetch(current.href, {
        method: "GET",
        redirect: "manual",
        signal: watchdog.signal,
        headers: { "User-Agent": USER_AGENT, Accept: "*/*" },
      });
    } catch (err) {
      if (watchdog.fired) throw watchdog.error();
      throw new TransferError(502, `source unreachable: ${errorText(err)}`, true, "upstream_error");
    }
    watchdog.kick();
    if (response.status >= 300 && response.status < 400 && response.headers.has("Location")) {
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
      current = checkSource(next.href, policy, "redirect target");
      continue;
    }
    if (!response.ok) {
      await cancelBody(response);
      const retryable = response.status >= 500 || response.status === 408 || response.status === 429;
      throw new TransferError(502, `source answered HTTP ${response.status}`, retryable, "upstream_status");
    }
    if (response.body === null) {
      throw new TransferError(502, "source answered without a body", false, "upstream_error");
    }
    return { response, finalUrl: current, redirects: hop };
  }
}

async function store(bucket, key, response, declared, maxBytes, watchdog, options, started) {
  const source = new CappedSource(response.body, maxBytes, watchdog);
  try {
    if (declared !== null) {
      await putKnownLength(bucket, key, source, declared, options);
    } else {
      await putUnknownLength(bucket, key, source, options);
    }
  } catch (err) {
    source.cancel(err);
    await removePartial(bucket, key, started);
    throw source.explain(err);
  }
  return source.bytes;
}

// A known length lets R2 take the stream in one put. FixedLengthStream carries that length to
// R2 and refuses a source that sends more or fewer bytes than it announced.
async function putKnownLength(bucket, key, source, declared, options) {
  const fixed = new FixedLengthStream(declared);
  const writer = fixed.writable.getWriter();
  const put = bucket.put(key, fixed.readable, options);
  put.catch(() => {}); // observed below; a pump failure must not leave it unhandled
  try {
    for (;;) {
      const chunk = await source.next();
      if (chunk === null) break;
      // Backpressure: the write settles once R2 has read the chunk, and only then is its buffer
      // handed back to the source for reuse.
      const written = writer.write(chunk);
      written.catch(() => {});
      source.recycle(chunk, written);
      await writer.ready;
    }
    await writer.close();
  } catch (err) {
    await writer.abort(err).catch(() => {});
    throw err;
  }
  await put;
}

// Unknown length (chunked source): at most one part is held in memory. A body that fits in one
// part becomes a single put; a longer one a multipart upload, aborted on any failure.
async function putUnknownLength(bucket, key, source, options) {
  let part = new Uint8Array(PART_SIZE);
  let filled = 0;
  let upload = null;
  const parts = [];
  try {
    for (;;) {
      const chunk = await source.next();
      if (chunk === null) break;
      let offset = 0;
      source.recycle(chunk, Promise.resolve());
      while (offset < chunk.byteLength) {
        const take = Math.min(PART_SIZE - filled, chunk.byteLength - offset);
        part.set(chunk.subarray(offset, offset + take), filled);
        filled += take;
        offset += take;
        if (filled === PART_SIZE) {
          upload ||= await bucket.createMultipartUpload(key, options);
          parts.push(await upload.uploadPart(parts.length + 1, part));
          part = new Uint8Array(PART_SIZE);
          filled = 0;
        }
      }
    }
    if (upload === null) {
      await bucket.put(key, part.subarray(0, filled), options);
      return;
    }
    if (filled > 0) parts.push(await upload.uploadPart(parts.length + 1, part.subarray(0, filled)));
    await upload.complete(parts);
  } catch (err) {
    if (upload !== null) await upload.abort().catch(() => {});
    throw err;
  }
}

// Reads the source body in large pieces, counting bytes against the cap and telling the
// watchdog about progress. A JS TransformStream would do the same at a third of the speed:
// fetch bodies arrive in ~4 KiB chunks, and readAtLeast (workerd's BYOB extension) batches them.
class CappedSource {
  constructor(body, maxBytes, watchdog) {
    this.maxBytes = maxBytes;
    this.watchdog = watchdog;
    this.bytes = 0;
    this.overflow = false;
    this.done = false;
    // A few buffers in rotation: a fresh 1 MiB array per read would leave V8 with garbage that
    // it collects lazily, so RSS would grow with the file size.
    this.pool = [];
    this.allocated = 0;
    try {
      this.reader = body.getReader({ mode: "byob" });
      this.byob = typeof this.reader.readAtLeast === "function";
    } catch {
      this.reader = body.getReader();
      this.byob = false;
    }
  }
  async next() {
    if (this.done) return null;
    const { done, value } = this.byob
      ? await this.reader.readAtLeast(READ_MIN, await this.buffer())
      : await this.reader.read();
    if (value && value.byteLength > 0) {
      this.bytes += value.byteLength;
      if (this.bytes > this.maxBytes) {
        this.overflow = true;
        throw new Error("size limit exceeded");
      }
      this.watchdog.kick();
      if (done) this.done = true;
      return value;
    }
    if (done) {
      this.done = true;
      return null;
    }
    return this.next();
  }
  async buffer() {
    if (this.allocated < POOL_SIZE || this.pool.length === 0) {
      this.allocated++;
      return new Uint8Array(READ_MAX);
    }
    const { view, released } = this.pool.shift();
    await released.catch(() => {});
    // A sink that took ownership leaves a detached (empty) buffer behind: allocate instead.
    return view.buffer.byteLength === READ_MAX ? new Uint8Array(view.buffer) : new Uint8Array(READ_MAX);
  }
  recycle(view, released) {
    this.pool.push({ view, released });
  }
  cancel(reason) {
    this.done = true;
    this.reader.cancel(reason).catch(() => {});
  }
  explain(err) {
    if (err instanceof TransferError) return err;
    if (this.overflow) {
      return new TransferError(413, `source sent more than the ${this.maxBytes} byte limit`, false, "too_large");
    }
    if (this.watchdog.fired) return this.watchdog.error();
    return new TransferError(502, `transfer failed: ${errorText(err)}`, true, "upstream_error");
  }
}

// R2 puts are atomic, so a failed put normally leaves nothing; this removes an object that did
// land in this attempt anyway (never an older object with the same key).
async function removePartial(bucket, key, started) {
  try {
    const head = await bucket.head(key);
    if (head && head.uploaded.getTime() >= started - 1000) await bucket.delete(key);
  } catch {
    // Best effort: the original failure is what the caller must see.
  }
}

async function cancelBody(response) {
  if (response.body) await response.body.cancel().catch(() => {});
}

function declaredLength(response) {
  const raw = response.headers.get("Content-Length");
  if (raw === null || !/^\d+$/.test(raw.trim())) return null;
  const value = Number(raw.trim());
  return Number.isSafeInteger(value) ? value : null;
}

async function readObject(env, url, log) {
  let key;
  try {
    key = decodeURIComponent(url.pathname.slice("/object/".length));
  } catch {
    throw badRequest("invalid object key");
  }
  log.key = key;
  const object = key ? await env.BUCKET.get(key) : null;
  if (object === null) {
    log.outcome = "not_found";
    return Response.json({ success: false, error: "no such object", retryable: false }, { status: 404 });
  }
  const headers = new Headers();
  object.writeHttpMetadata(headers);
  headers.set("ETag", object.httpEtag);
  headers.set("Content-Length", String(object.size));
  if (!headers.has("Content-Type")) headers.set("Content-Type", "application/octet-stream");
  const original = object.customMetadata && object.customMetadata.original_filename;
  if (original) headers.set("Content-Disposition", `attachment; filename*=UTF-8''${encodeURIComponent(original)}`);
  return new Response(object.body, { headers });
}

function objectUrl(env, selfUrl, key) {
  const encoded = key.split("/").map(encodeURIComponent).join("/");
  const base = (env.R2_PUBLIC_URL || "").replace(/\/+$/, "");
  return base ? `${base}/${encoded}` : `${selfUrl.origin}/object/${encoded}`;
}

// --- source URL policy ----------------------------------------------------------------------

function sourcePolicy(env) {
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

function checkSource(raw, policy, what = "source_url") {
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

// --- names and keys -------------------------------------------------------------------------

function filenameFromDisposition(header) {
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

function filenameFromPath(url) {
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
function cleanOriginal(name) {
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

function objectKey(now, emailId, filename) {
  const yyyy = String(now.getUTCFullYear());
  const mm = String(now.getUTCMonth() + 1).padStart(2, "0");
  const dd = String(now.getUTCDate()).padStart(2, "0");
  return `${yyyy}/${mm}/${dd}/${safeSegment(emailId, "email")}/${safeSegment(filename, FALLBACK_FILENAME)}`;
}

// --- logging helpers ------------------------------------------------------------------------

function maskUrl(raw) {
  try {
    const url = new URL(raw);
    url.username = "";
    url.password = "";
    const masked = [...url.searchParams.keys()].map((k) => `${encodeURIComponent(k)}=***`).join("&");
    return `${url.origin}${url.pathname}${masked ? `?${masked}` : ""}`;
  } catch {
    return "<invalid url>";
  }
}

function maskPath(pathname) {
  return pathname.length > 300 ? `${pathname.slice(0, 300)}...` : pathname;
}

function errorText(err) {
  const text = err && err.message ? err.message : String(err);
  return text.slice(0, 200);
}

function positiveInt(raw, fallback) {
  const value = Number(raw);
  return Number.isFinite(value) && value > 0 ? Math.floor(value) : fallback;
}
