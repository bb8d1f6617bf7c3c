// What resolvers share: calling a provider's JSON API as its web app does (bounded answers, the
// watchdog of the current step), the one file shape, and how unexpected answers are reported.

import { TransferError, unresolved, upstreamStatus } from "../errors.js";
import { cancelBody, fetchUpstream } from "../upstream.js";

const MAX_API_BYTES = 1024 * 1024;
const decoder = new TextDecoder();

// One file of a share. `url` is known up front, or null when `locate` must ask the provider
// right before the download (short-lived signed links).
export function shareFile({ url = null, locate = null, name = null, size = null, contentType = null }) {
  return {
    url,
    locate: locate || (async () => url),
    name: typeof name === "string" ? name : null,
    size: Number.isSafeInteger(size) && size >= 0 ? size : null,
    contentType: typeof contentType === "string" && contentType ? contentType : null,
  };
}

export class ProviderApi {
  constructor(provider, settings, watchdog) {
    this.provider = provider;
    this.settings = settings;
    this.watchdog = watchdog;
  }

  // The answer's status, JSON body (null when it is not JSON) and raw text, redirects not followed.
  async call(url, { method = "GET", json, headers = {} } = {}) {
    const sent = { Accept: "application/json", ...headers };
    if (json !== undefined) sent["Content-Type"] = "application/json";
    const { response } = await fetchUpstream(url, this.settings, this.watchdog, {
      method,
      headers: sent,
      body: json === undefined ? undefined : JSON.stringify(json),
      what: `${this.provider} API URL`,
      label: `${this.provider} API`,
    });
    const text = await this.readText(response);
    let data = null;
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
    return { status: response.status, data: data && typeof data === "object" ? data : null, text };
  }

  // Where a short link points: the Location of its redirect, without following it.
  async redirect(url) {
    const { response } = await fetchUpstream(url, this.settings, this.watchdog, {
      what: `${this.provider} short link`,
      label: `${this.provider} short link`,
    });
    await cancelBody(response);
    const location = response.headers.get("Location");
    return { status: response.status, location: location ? new URL(location, url) : null };
  }

  async readText(response) {
    if (response.body === null) return "";
    const reader = response.body.getReader();
    const chunks = [];
    let total = 0;
    for (;;) {
      let result;
      try {
        result = await reader.read();
      } catch (err) {
        if (this.watchdog.fired) throw this.watchdog.error();
        throw new TransferError(502, `${this.provider} API answer broke off`, true, "upstream_error");
      }
      if (result.done) break;
      total += result.value.byteLength;
      if (total > MAX_API_BYTES) {
        await reader.cancel().catch(() => {});
        throw unresolved(`${this.provider} API answered more than ${MAX_API_BYTES} bytes`);
      }
      this.watchdog.kick();
      chunks.push(result.value);
    }
    const all = new Uint8Array(total);
    let offset = 0;
    for (const chunk of chunks) {
      all.set(chunk, offset);
      offset += chunk.byteLength;
    }
    return decoder.decode(all);
  }

  // An answer the resolver has no rule for: the provider's trouble (retry) or a changed API.
  unexpected(status, what = "answer") {
    if (status >= 500 || status === 408 || status === 429) return upstreamStatus(`${this.provider} API`, status);
    return unresolved(`${this.provider} API gave an unexpected ${what} (HTTP ${status}); its web app's API may have changed`);
  }
}
