// The dashboard's only way to the sidecar: bearer token handling, timing of every call.

const TOKEN_KEY = "signal-sidecar.api-token";

export class AuthRequired extends Error {}
export class Unreachable extends Error {}
export class ApiError extends Error {
  // detail: the sidecar's own explanation (its JSON `error`), for people.
  constructor(status, message, detail = "") {
    super(message);
    this.status = status;
    this.detail = detail;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// A `#token=...` link is read once, then dropped from the address bar and the history entry.
export function takeTokenFromFragment() {
  if (!location.hash.startsWith("#")) return;
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has("token")) return;
  const token = params.get("token") || "";
  params.delete("token");
  const rest = params.toString();
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  if (token) setToken(token);
}

export class Api {
  // onTiming(route, seconds) receives the duration of every completed call.
  constructor(onTiming = () => {}) {
    this.onTiming = onTiming;
  }

  async get(route, params = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== "" && value !== undefined && value !== null) query.set(key, String(value));
    }
    const suffix = query.toString() ? `?${query}` : "";
    return this.request(route, `${route.replace(/^\//, "")}${suffix}`, { method: "GET" });
  }

  async post(route, body, { keepalive = false } = {}) {
    return this.request(route, route.replace(/^\//, ""), {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" },
      keepalive,
    }, false);
  }

  async request(route, url, init, timed = true) {
    const headers = new Headers(init.headers || {});
    headers.set("Accept", "application/json");
    const token = getToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const started = performance.now();
    let response;
    try {
      response = await fetch(url, { ...init, headers, cache: "no-store", credentials: "omit" });
    } catch (error) {
      throw new Unreachable(`sidecar unreachable: ${error.message}`);
    }
    if (response.status === 401) {
      throw new AuthRequired("the API wants a token");
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (timed) this.onTiming(route, (performance.now() - started) / 1000);
    if (!response.ok) {
      const detail = data && data.error ? data.error : response.statusText;
      // A proxy in front of a stopped sidecar answers 502/503/504 without our JSON.
      if (data === null && response.status >= 502 && response.status <= 504) {
        throw new Unreachable(`sidecar unreachable: HTTP ${response.status}`);
      }
      throw new ApiError(response.status, `${route}: HTTP ${response.status} ${detail}`, detail);
    }
    return data;
  }
}
