// Reading stored objects back (GET /object/<key>) and the URL each object is announced under.

import { badRequest } from "./errors.js";

export async function readObject(env, url, log) {
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

export function objectUrl(env, selfUrl, key) {
  const encoded = key.split("/").map(encodeURIComponent).join("/");
  const base = (env.R2_PUBLIC_URL || "").replace(/\/+$/, "");
  return base ? `${base}/${encoded}` : `${selfUrl.origin}/object/${encoded}`;
}
