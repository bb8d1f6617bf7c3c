// The Worker's one error type, and the JSON every failure answers with (DESIGN.md §7).

export class TransferError extends Error {
  constructor(status, message, retryable, outcome) {
    super(message);
    this.status = status;
    this.retryable = retryable;
    this.outcome = outcome;
  }
}

export const refuse = (message) => new TransferError(403, message, false, "refused");
export const badRequest = (message) => new TransferError(400, message, false, "bad_request");
// The link does not lead to its files (a landing page, a share the Worker cannot read): final.
export const unresolved = (message) => new TransferError(422, message, false, "unresolved");
// The provider says the files are gone or locked (expired, deleted, password): final.
export const unavailable = (message) => new TransferError(410, message, false, "unavailable");
export const tooLarge = (message) => new TransferError(413, message, false, "too_large");

export function upstreamStatus(what, status) {
  const retryable = status >= 500 || status === 408 || status === 429;
  return new TransferError(502, `${what} answered HTTP ${status}`, retryable, "upstream_status");
}

export function failureResponse(failure) {
  return Response.json(
    { success: false, outcome: failure.outcome, error: failure.message, retryable: failure.retryable },
    { status: failure.status },
  );
}

export function errorText(err) {
  const text = err && err.message ? err.message : String(err);
  return text.slice(0, 200);
}
