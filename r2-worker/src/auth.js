// The shared-token check on every route but /health.

import { TransferError } from "./errors.js";

const encoder = new TextEncoder();
let macKeyPromise;

function macKey() {
  // A per-isolate random key: both sides are hashed with it, so the comparison runs on two
  // equal-length digests and says nothing about the token's length or prefix.
  macKeyPromise ||= crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return macKeyPromise;
}

export async function authorise(request, env) {
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
