// SwissTransfer: a share link `www.swisstransfer.com/d/<link UUID>` is resolved through the JSON
// API its apps call, as Infomaniak's own open-source client library does:
//
// - Infomaniak multiplatform-SwissTransfer (github.com/Infomaniak/multiplatform-SwissTransfer,
//   release 10.1.4 of 2026-08-20, read 2026-12-04):
//   STNetwork/.../network/utils/ApiRoutes.kt and SharedApiRoutes.kt for the routes
//   (`GET https://www.swisstransfer.com/api/links/<link UUID>`, files at
//   `https://<downloadHost>/api/download/<link UUID>/<file UUID>`),
//   network/models/transfer/TransferApi.kt, ContainerApi.kt and FileApi.kt for the answer
//   (`data.downloadHost`, `data.downloadCounterCredit`, `data.container.needPassword`,
//   `container.deletedDate`, `container.files[]` with `UUID`, `fileName`, `fileSizeInBytes`,
//   `mimeType`, `deletedDate`), and network/exceptions/FetchTransferException.kt for refusals
//   (404 with "expired", "wait_virus_check" or "virus has been detected"; any other 404 is not
//   found; 401 "need_password" or "wrong_password").
//
// A password-protected transfer needs the password the recipient was told elsewhere: the Worker
// has none, so such a transfer is unavailable with that reason.

import { TransferError, unavailable, unresolved } from "../errors.js";
import { shareFile } from "./api.js";

const API = "https://www.swisstransfer.com/api";
const HOSTS = new Set(["www.swisstransfer.com", "swisstransfer.com"]);

export const swisstransfer = {
  id: "swisstransfer",
  name: "SwissTransfer",
  async resolve(link, _job, api) {
    if (!HOSTS.has(link.hostname)) throw unresolved(`SwissTransfer: ${link.hostname} is not a SwissTransfer host`);
    const match = /^\/d\/([0-9A-Za-z-]{8,64})\/?$/.exec(link.pathname);
    if (!match) throw unresolved("SwissTransfer: the link is not /d/<link UUID>");
    const linkUUID = match[1];
    const answer = await api.call(`${API}/links/${linkUUID}`);
    throwIfRefused(answer);
    const data = answer.data && answer.data.data;
    if (answer.status < 200 || answer.status >= 300 || !data || typeof data !== "object") {
      throw api.unexpected(answer.status);
    }
    const container = data.container;
    if (!container || typeof container !== "object" || !Array.isArray(container.files)) {
      throw api.unexpected(answer.status, "transfer (no container.files)");
    }
    if (truthy(container.needPassword)) throw unavailable("SwissTransfer: the transfer is password-protected");
    if (container.deletedDate) throw unavailable("SwissTransfer: the transfer was deleted");
    if (data.downloadCounterCredit === 0) throw unavailable("SwissTransfer: the transfer's download limit is reached");
    const host = typeof data.downloadHost === "string" ? data.downloadHost : "";
    if (!/^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$/.test(host)) throw api.unexpected(answer.status, "download host");
    const files = container.files.filter((file) => file && typeof file === "object" && !file.deletedDate);
    return files.map((file) => {
      if (typeof file.UUID !== "string" || !/^[0-9A-Za-z-]{1,64}$/.test(file.UUID)) {
        throw api.unexpected(answer.status, "file list");
      }
      return shareFile({
        url: `https://${host}/api/download/${linkUUID}/${file.UUID}`,
        name: file.fileName,
        size: file.fileSizeInBytes,
        contentType: file.mimeType,
      });
    });
  },
};

function throwIfRefused({ status, text }) {
  const body = String(text || "").slice(0, 2000);
  if (status === 404) {
    if (body.includes("wait_virus_check")) {
      throw new TransferError(503, "SwissTransfer: the virus check of the transfer is still running", true, "upstream_status");
    }
    if (body.includes("virus has been detected")) throw unavailable("SwissTransfer: a virus was detected in the transfer");
    if (body.includes("expired")) throw unavailable("SwissTransfer: the transfer has expired");
    throw unavailable("SwissTransfer: transfer not found (deleted, or a wrong link)");
  }
  if (status === 401) {
    throw unavailable(`SwissTransfer: the transfer is password-protected${body.includes("wrong_password") ? " (wrong password)" : ""}`);
  }
}

function truthy(value) {
  return value === true || value === 1 || value === "1";
}
