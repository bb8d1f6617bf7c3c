// Dropbox shared links. `dl=1` makes www.dropbox.com serve the file itself instead of its preview
// page, and for a folder (/scl/fo/, legacy /sh/) a zip of the folder made on the fly; links on
// dl.dropboxusercontent.com already are the file. Dropbox documents the parameter in its help
// centre ("Force a file or folder to download", help.dropbox.com/share/force-download, read
// 2026-12-04).

import { unresolved } from "../errors.js";
import { shareFile } from "./api.js";

const SHARE_HOSTS = new Set(["www.dropbox.com", "dropbox.com"]);
const FOLDER_PREFIXES = ["/scl/fo/", "/sh/"];

export const dropbox = {
  id: "dropbox",
  name: "Dropbox",
  async resolve(link, job) {
    if (link.hostname === "dl.dropboxusercontent.com") return [shareFile({ url: link.href, name: job.filename })];
    if (!SHARE_HOSTS.has(link.hostname)) throw unresolved(`${link.hostname} is not a Dropbox share host`);
    const direct = new URL(link.href);
    direct.searchParams.set("dl", "1");
    const folder = FOLDER_PREFIXES.some((prefix) => link.pathname.startsWith(prefix));
    // The zip's name comes from Dropbox's Content-Disposition; a file keeps the sender's name.
    return [shareFile({ url: direct.href, name: folder ? null : job.filename, contentType: folder ? "application/zip" : null })];
  },
};
