// One transfer: resolve the link to its files, then stream each into R2 under the link's folder.
// A failure removes what this attempt stored, so a transfer lands whole or not at all.

import { TransferError, tooLarge, unavailable, unresolved } from "./errors.js";
import { landingPage, mediaType } from "./guard.js";
import { readJob } from "./job.js";
import { maskUrl } from "./log.js";
import { FALLBACK_FILENAME, LinkFolder, cleanOriginal, filenameFromDisposition, filenameFromPath } from "./names.js";
import { objectUrl } from "./objects.js";
import { ProviderApi } from "./resolvers/api.js";
import { resolverFor } from "./resolvers/index.js";
import { readSettings } from "./settings.js";
import { checkSource } from "./source-policy.js";
import { CappedSource, store } from "./store.js";
import { Watchdog, cancelBody, declaredLength, fetchFile } from "./upstream.js";

export async function transfer(request, env, selfUrl, log) {
  const started = Date.now();
  const job = await readJob(request);
  log.provider = job.provider;
  log.email_id = job.email_id;
  log.source = maskUrl(job.source_url);
  const settings = readSettings(env);
  if (settings.testOrigins.size > 0) log.test_only_provider_origins = true;
  const steps = new Steps(settings, job, started);
  const link = checkSource(job.source_url, settings.policy);
  const resolver = resolverFor(job.provider);
  const files = await steps.run("resolving the link", (watchdog) =>
    resolver.resolve(link, job, new ProviderApi(resolver.name, settings, watchdog), settings),
  );
  log.files = files.length;
  checkShare(resolver, files, settings);

  const folder = await LinkFolder.create(new Date(started), job.email_id, job.provider, job.source_url);
  const stored = [];
  try {
    for (const [index, file] of files.entries()) {
      const label = files.length > 1 ? `file ${index + 1} of ${files.length}` : "file";
      const what = resolver.id === "generic" ? "source" : `${resolver.name} ${label}`;
      const sofar = stored.reduce((sum, done) => sum + done.size, 0);
      const copied = await steps.run(label, (watchdog) =>
        copy({ env, settings, job, resolver, file, what, folder, sofar, watchdog, started }),
      );
      stored.push(copied);
    }
  } catch (err) {
    // Whole or nothing: the objects this attempt stored go with it.
    await Promise.all(stored.map((done) => env.BUCKET.delete(done.key).catch(() => {})));
    throw err;
  }

  const size = stored.reduce((sum, done) => sum + done.size, 0);
  const only = stored.length === 1 ? stored[0] : null;
  log.size = size;
  if (only) log.key = only.key;
  const listed = stored.map((done) => ({
    key: done.key,
    r2_url: objectUrl(env, selfUrl, done.key),
    size: done.size,
    filename: done.filename,
    content_type: done.content_type,
    started_ms: done.started_ms,
    duration_ms: done.duration_ms,
  }));
  return {
    success: true,
    outcome: "success",
    provider: job.provider,
    // One file: its own key and URL, as before shares; several: each under files[].
    key: only ? only.key : null,
    r2_url: only ? listed[0].r2_url : null,
    size,
    content_type: only ? only.content_type : null,
    original_filename: only ? only.filename : null,
    files: listed,
    duration_ms: Date.now() - started,
  };
}

// Each step (resolving, then each file) gets its own watchdog: silence for UPSTREAM_TIMEOUT_MS,
// the per-file timeout from its own start, and the transfer's deadline from the request's start.
class Steps {
  constructor(settings, job, started) {
    this.settings = settings;
    this.job = job;
    this.started = started;
  }
  async run(label, work) {
    const { deadline_ms: deadline, file_timeout_ms: fileTimeout } = this.job;
    const watchdog = new Watchdog(this.settings.idleTimeoutMs);
    if (deadline !== null) {
      watchdog.until(this.started + deadline, () =>
        new TransferError(504, `transfer did not finish within the client's deadline of ${deadline} ms`, true, "timeout"));
    }
    if (fileTimeout !== null) {
      watchdog.until(Date.now() + fileTimeout, () =>
        new TransferError(504, `${label} did not finish within ${fileTimeout} ms`, true, "timeout"));
    }
    try {
      return await work(watchdog);
    } catch (err) {
      if (watchdog.fired && !(err instanceof TransferError)) throw watchdog.error();
      throw err;
    } finally {
      watchdog.stop();
    }
  }
}

function checkShare(resolver, files, settings) {
  if (files.length === 0) throw unavailable(`${resolver.name}: the share lists no files`);
  if (files.length > settings.maxFiles) {
    throw tooLarge(`the share lists ${files.length} files, above the ${settings.maxFiles} file limit`);
  }
  const listed = files.reduce((sum, file) => sum + (file.size || 0), 0);
  if (listed > settings.maxBytes) {
    throw tooLarge(`the share lists ${listed} bytes, above the ${settings.maxBytes} byte limit`);
  }
  // Every URL known up front is checked before any byte moves; the rest as they are produced.
  for (const file of files) {
    if (file.url !== null) checkSource(file.url, settings.policy, `${resolver.name} file URL`);
  }
}

async function copy({ env, settings, job, resolver, file, what, folder, sofar, watchdog, started }) {
  const stepStarted = Date.now();
  const produced = await file.locate(new ProviderApi(resolver.name, settings, watchdog));
  const { response, finalUrl } = await fetchFile(produced, settings, watchdog, what);
  const remaining = settings.maxBytes - sofar;
  const declared = declaredLength(response);
  if (declared !== null && declared > remaining) {
    await cancelBody(response);
    const before = sofar > 0 ? ` after ${sofar} bytes of the share` : "";
    throw tooLarge(`${what} is ${declared} bytes${before}, above the ${settings.maxBytes} byte limit`);
  }
  const source = new CappedSource(response.body, { remaining, limit: settings.maxBytes, watchdog });
  const first = await source.peek();
  const contentType = response.headers.get("Content-Type") || "";
  const page = settings.htmlOrigins.has(finalUrl.origin) ? null : landingPage(contentType, first);
  if (page !== null) {
    source.cancel(new Error("landing page"));
    throw unresolved(`${what} answered with an HTML page (${page}), not a file: a landing page is never stored`);
  }
  if (file.size !== null && declared !== null && declared !== file.size) {
    source.cancel(new Error("size mismatch"));
    throw mismatch(what, file.size, declared);
  }
  const type = storedType(contentType, file.contentType);
  const filename =
    cleanOriginal(file.name) ||
    cleanOriginal(filenameFromDisposition(response.headers.get("Content-Disposition"))) ||
    cleanOriginal(filenameFromPath(finalUrl)) ||
    FALLBACK_FILENAME;
  const key = folder.key(filename);
  const options = {
    httpMetadata: { contentType: type },
    customMetadata: { original_filename: filename, source_provider: job.provider, email_id: job.email_id },
  };
  const size = await store(env.BUCKET, key, source, declared, options, stepStarted);
  if (file.size !== null && size !== file.size) {
    await env.BUCKET.delete(key).catch(() => {});
    throw mismatch(what, file.size, size);
  }
  return {
    key,
    size,
    filename,
    content_type: type,
    started_ms: stepStarted - started,
    duration_ms: Date.now() - stepStarted,
  };
}

// The provider's own type when the answer's says nothing.
function storedType(answered, listed) {
  const generic = mediaType(answered) === "" || mediaType(answered) === "application/octet-stream";
  if (generic && listed) return listed;
  return answered || "application/octet-stream";
}

function mismatch(what, listed, got) {
  return new TransferError(502, `${what}: the provider listed ${listed} bytes, the source sent ${got}`, true, "upstream_error");
}
