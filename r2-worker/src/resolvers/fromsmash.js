// FromSmash: a share link `fromsmash.com/<id>` is resolved through the JSON APIs fromsmash.com's
// web app calls, as JDownloader does:
//
// - JDownloader (github.com/mirror/jdownloader, the GitHub mirror of JDownloader's repository,
//   src/jd/plugins/decrypter/FromsmashComFolder.java, read 2026-12-04): an anonymous token from
//   `POST https://iam.eu-central-1.fromsmash.co/account {}` (`account.token.token`), the
//   transfer's region from `GET https://link.fromsmash.co/target/fromsmash.com%2F<id>?version=10-2019`
//   (`target.target`, `target.url`), the transfer from `GET https://<region>/transfer/<id>/preview
//   ?version=07-2020` (404 not found, 403 password, `transfer.status` "Uploaded" when ready),
//   and its files nine at a time from `GET .../files/preview?version=07-2020&limit=9&start=<next>`
//   (`files[]` with `id`, `name`, `size`, `download`; `next`). Requests carry Origin and Referer
//   `https://fromsmash.com` and ask for JSON (without that the API answers XML).

import { TransferError, tooLarge, unavailable, unresolved } from "../errors.js";
import { shareFile } from "./api.js";

const IAM = "https://iam.eu-central-1.fromsmash.co/account";
const LINKS = "https://link.fromsmash.co/target/fromsmash.com%2F";
const PAGE = 9;
const HEADERS = {
  Origin: "https://fromsmash.com",
  Referer: "https://fromsmash.com",
  Accept: "application/json, text/plain, */*",
};

export const fromsmash = {
  id: "fromsmash",
  name: "FromSmash",
  async resolve(link, _job, api, limits) {
    if (link.hostname !== "fromsmash.com" && !link.hostname.endsWith(".fromsmash.com")) {
      throw unresolved(`FromSmash: ${link.hostname} is not a FromSmash host`);
    }
    const match = /^\/([\w.~-]{1,128})\/?$/.exec(link.pathname);
    if (!match) throw unresolved("FromSmash: the link is not fromsmash.com/<id>");
    const token = await anonymousToken(api);
    const headers = { ...HEADERS, Authorization: `Bearer ${token}` };
    const target = await api.call(`${LINKS}${encodeURIComponent(match[1])}?version=10-2019`, { headers });
    if (target.status === 404) throw unavailable("FromSmash: transfer not found (expired or deleted)");
    const found = target.data && target.data.target;
    if (target.status < 200 || target.status >= 300 || !found || typeof found.url !== "string") {
      throw api.unexpected(target.status, "link target");
    }
    const id = typeof found.target === "string" && found.target ? found.target : match[1];
    let region;
    try {
      region = `https://${new URL(found.url).host}`;
    } catch {
      throw api.unexpected(target.status, "region URL");
    }
    const base = `${region}/transfer/${encodeURIComponent(id)}`;
    await checkTransfer(await api.call(`${base}/preview?version=07-2020`, { headers }), api);
    return listFiles(api, base, headers, limits.maxFiles);
  },
};

async function anonymousToken(api) {
  const answer = await api.call(IAM, { method: "POST", json: {}, headers: HEADERS });
  const token = answer.data && answer.data.account && answer.data.account.token && answer.data.account.token.token;
  if (answer.status < 200 || answer.status >= 300 || typeof token !== "string" || !token) {
    throw api.unexpected(answer.status, "token answer");
  }
  return token;
}

async function checkTransfer({ status, data }, api) {
  if (status === 404) throw unavailable("FromSmash: transfer not found (expired or deleted)");
  if (status === 403) throw unavailable("FromSmash: the transfer is password-protected");
  const transfer = data && data.transfer;
  if (status < 200 || status >= 300 || !transfer || typeof transfer !== "object") throw api.unexpected(status);
  const state = String(transfer.status || "");
  if (state.toLowerCase() === "uploading") {
    throw new TransferError(503, "FromSmash: the transfer is still uploading", true, "upstream_status");
  }
  if (state !== "Uploaded") throw unavailable(`FromSmash: the transfer is ${state.slice(0, 40) || "not ready"}`);
}

async function listFiles(api, base, headers, maxFiles) {
  const files = [];
  let next = null;
  for (;;) {
    const query = new URLSearchParams({ version: "07-2020", limit: String(PAGE) });
    if (next) query.set("start", next);
    const answer = await api.call(`${base}/files/preview?${query}`, { headers });
    const listed = answer.data && answer.data.files;
    if (answer.status < 200 || answer.status >= 300 || !Array.isArray(listed)) {
      throw api.unexpected(answer.status, "file list");
    }
    for (const file of listed) {
      if (!file || typeof file.download !== "string") throw api.unexpected(answer.status, "file entry");
      files.push(shareFile({ url: file.download, name: file.name, size: file.size }));
    }
    if (files.length > maxFiles) throw tooLarge(`FromSmash: the transfer lists more than ${maxFiles} files`);
    next = typeof answer.data.next === "string" && answer.data.next ? answer.data.next : null;
    if (!next || listed.length < PAGE) return files;
  }
}
