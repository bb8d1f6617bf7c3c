// What the Worker's log line may carry: URLs without credentials or query values.

export function maskUrl(raw) {
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

export function maskPath(pathname) {
  return pathname.length > 300 ? `${pathname.slice(0, 300)}...` : pathname;
}
