// The landing-page guard: a link meant to be a file that answers with an HTML page (a provider's
// JavaScript app, a login page) is never stored as if it were the file.

const HTML_TYPES = new Set(["text/html", "application/xhtml+xml"]);
// Types that say nothing about the content, so the first bytes decide.
const GENERIC_TYPES = new Set([
  "",
  "application/octet-stream",
  "binary/octet-stream",
  "application/unknown",
  "application/force-download",
  "application/download",
  "application/x-download",
]);
// The HTML signatures of the WHATWG MIME Sniffing Standard (§7.1, "identifying a resource with
// an unknown MIME type"): case-insensitive, after leading whitespace, each followed by a space
// or '>'.
const TAGS = ["!doctype html", "html", "head", "script", "iframe", "h1", "div", "font", "table", "a",
  "style", "title", "b", "body", "br", "p", "!--"];
const SNIFF_BYTES = 512;

export function mediaType(contentType) {
  return String(contentType || "").split(";")[0].trim().toLowerCase();
}

// A short reason when the answer is a page rather than a file, else null.
export function landingPage(contentType, firstBytes) {
  const type = mediaType(contentType);
  if (HTML_TYPES.has(type)) return `Content-Type ${type}`;
  if (GENERIC_TYPES.has(type) && looksLikeHtml(firstBytes)) {
    return `HTML content under ${type ? `Content-Type ${type}` : "no Content-Type"}`;
  }
  return null;
}

export function looksLikeHtml(bytes) {
  if (!bytes || bytes.byteLength === 0) return false;
  const head = bytes.subarray(0, SNIFF_BYTES);
  let text = "";
  for (const byte of head) text += String.fromCharCode(byte);
  text = text.replace(/^\ufeff|^\xef\xbb\xbf/, "").replace(/^[\t\n\f\r ]+/, "").toLowerCase();
  return TAGS.some((tag) => {
    if (!text.startsWith(`<${tag}`)) return false;
    const after = text.charAt(tag.length + 1);
    return after === " " || after === ">";
  });
}
