// WeTransfer: a share link (`wetransfer.com/downloads/<transfer>/<hash>`, with a recipient id
// between them when the transfer was mailed, or a `we.tl/<code>` short link that redirects there)
// is resolved through the JSON API of wetransfer.com's web app, as these downloaders do:
//
// - transferwee (github.com/iamleot/transferwee, transferwee.py, last changed 2024-08-29, read
//   2026-12-04): link forms, the we.tl redirect, `POST /api/v4/transfers/<id>/download` with
//   `{intent, security_hash, recipient_id?}` answering `{direct_link}`, and the
//   `X-Requested-With: XMLHttpRequest` header.
// - pyLoad (github.com/pyload/pyload, src/pyload/plugins/downloaders/WetransferCom.py, read
//   2026-12-04): `POST .../prepare-download` with `{security_hash, recipient_id?}` answering the
//   transfer (`state` "downloadable", `recommended_filename`, `size`) or `{message}`.
// - JDownloader (github.com/mirror/jdownloader, src/jd/plugins/decrypter/WeTransferComFolder.java
//   and hoster/WeTransferCom.java, read 2026-12-04): the transfer's `items`/`files` (`id`, `name`,
//   `size`), `password_protected`, `per_file_download_available`, and per-file download with
//   `file_ids: [<id>]`.
// - Cyberdrop-DL (github.com/jbsparrow/CyberDropDownloader, cyberdrop_dl/crawlers/wetransfer.py,
//   read 2026-12-04): the error messages "No download access to this Transfer" and
//   "Couldn't find Transfer".
//
// Each file is downloaded on its own (`intent: "single_file"`), its signed link asked for right
// before its download because those links are short-lived; a transfer without per-file download
// is one file, the whole transfer as WeTransfer serves it.

import { TransferError, unavailable, unresolved } from "../errors.js";
import { shareFile } from "./api.js";

const API = "https://wetransfer.com/api/v4/transfers";
const SHORT_HOSTS = new Set(["we.tl", "www.we.tl"]);
const HEADERS = { "X-Requested-With": "XMLHttpRequest" };
const GONE_STATES = new Set(["expired", "deleted", "invalid", "blocked"]);
const PENDING_STATES = new Set(["uploading", "processing"]);

export const wetransfer = {
  id: "wetransfer",
  name: "WeTransfer",
  async resolve(link, _job, api) {
    const share = parseShare(SHORT_HOSTS.has(link.hostname) ? await followShortLink(link, api) : link);
    const ids = { security_hash: share.hash, ...(share.recipient ? { recipient_id: share.recipient } : {}) };
    const answer = await api.call(`${API}/${share.transfer}/prepare-download`, {
      method: "POST",
      json: ids,
      headers: HEADERS,
    });
    const transfer = checkTransfer(answer, api);
    const items = (Array.isArray(transfer.items) ? transfer.items : transfer.files || []).filter(
      (item) => item && typeof item === "object" && item.content_identifier !== "folder",
    );
    if (transfer.per_file_download_available === false || items.length === 0) {
      // The size WeTransfer lists is its files' total, not the size of the archive it serves.
      return [shareFile({
        name: transfer.recommended_filename || null,
        locate: (step) => directLink(step, share.transfer, { intent: "entire_transfer", ...ids }),
      })];
    }
    return items.map((item) => {
      if (typeof item.id !== "string" || !item.id) throw api.unexpected(200, "file list");
      return shareFile({
        name: item.name,
        size: item.size,
        locate: (step) => directLink(step, share.transfer, { intent: "single_file", ...ids, file_ids: [item.id] }),
      });
    });
  },
};

async function followShortLink(link, api) {
  const { status, location } = await api.redirect(link.href);
  if (status === 404 || status === 410) throw unavailable(`WeTransfer: the short link ${link.pathname} does not exist`);
  if (location === null) throw api.unexpected(status, "short-link answer");
  return location;
}

function parseShare(url) {
  const host = url.hostname;
  if (host !== "wetransfer.com" && !host.endsWith(".wetransfer.com")) {
    throw unresolved(`WeTransfer: ${host} is not a WeTransfer host`);
  }
  const parts = url.pathname.split("/").filter(Boolean);
  const ok = parts[0] === "downloads" && (parts.length === 3 || parts.length === 4) && parts.every((p) => /^[\w-]{1,128}$/.test(p));
  if (!ok) throw unresolved("WeTransfer: the link is not /downloads/<transfer>/[<recipient>/]<hash>");
  return parts.length === 3
    ? { transfer: parts[1], recipient: null, hash: parts[2] }
    : { transfer: parts[1], recipient: parts[2], hash: parts[3] };
}

// WeTransfer's refusals: the transfer is gone, or locked to this caller.
function throwIfRefused({ status, data }) {
  const message = data && typeof data.message === "string" ? data.message.slice(0, 200) : "";
  if (status === 404 || status === 410 || /not found|couldn't find/i.test(message)) {
    throw unavailable(`WeTransfer: ${message || "transfer not found"} (expired or deleted)`);
  }
  if (status === 401 || status === 403 || /no download access/i.test(message)) {
    throw unavailable(`WeTransfer: ${message || "no download access"} (password-protected or restricted)`);
  }
}

function checkTransfer(answer, api) {
  throwIfRefused(answer);
  const { status, data } = answer;
  if (status < 200 || status >= 300 || data === null) throw api.unexpected(status);
  if (data.password_protected === true) throw unavailable("WeTransfer: the transfer is password-protected");
  const state = typeof data.state === "string" ? data.state : "";
  if (PENDING_STATES.has(state)) {
    throw new TransferError(503, `WeTransfer: the transfer is still ${state}`, true, "upstream_status");
  }
  if (GONE_STATES.has(state)) throw unavailable(`WeTransfer: the transfer is ${state}`);
  if (state !== "downloadable") throw api.unexpected(status, `transfer state "${state.slice(0, 40)}"`);
  return data;
}

async function directLink(api, transfer, body) {
  const answer = await api.call(`${API}/${transfer}/download`, { method: "POST", json: body, headers: HEADERS });
  const link = answer.data && answer.data.direct_link;
  if (answer.status >= 200 && answer.status < 300 && typeof link === "string" && link) return link;
  throwIfRefused(answer);
  throw api.unexpected(answer.status, "download answer (no direct_link)");
}
