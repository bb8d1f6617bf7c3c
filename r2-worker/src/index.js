// R2 fetch Worker: resolves a delivery link to its files and copies each into the R2 bucket by
// streaming, so the sidecar never has to hold the bytes. Contract: DESIGN.md §7 and README.md.

import { authorise } from "./auth.js";
import { TransferError, failureResponse } from "./errors.js";
import { maskPath } from "./log.js";
import { readObject } from "./objects.js";
import { transfer } from "./transfer.js";

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
