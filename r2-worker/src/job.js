// Reads and validates the transfer job the sidecar POSTs (DESIGN.md §7).

import { badRequest } from "./errors.js";

const MAX_REQUEST_BYTES = 16 * 1024;
const MAX_MS = 86_400_000;

export async function readJob(request) {
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
  for (const field of ["deadline_ms", "file_timeout_ms"]) {
    const value = job[field];
    if (value !== undefined && value !== null && !(Number.isInteger(value) && value > 0 && value <= MAX_MS)) {
      throw badRequest(`${field} must be a whole number of milliseconds from 1 to ${MAX_MS}`);
    }
  }
  if (job.provider.length > 64) throw badRequest("provider is too long");
  if (job.email_id.length > 512) throw badRequest("email_id is too long");
  if (job.source_url.length > 8192) throw badRequest("source_url is too long");
  return {
    source_url: job.source_url.trim(),
    provider: job.provider.trim(),
    email_id: job.email_id.trim(),
    filename: job.filename || null,
    // The whole transfer (every file of a share) must end within deadline_ms ...
    deadline_ms: job.deadline_ms ?? null,
    // ... and each file within file_timeout_ms (the sidecar's per-provider timeout).
    file_timeout_ms: job.file_timeout_ms ?? null,
  };
}
