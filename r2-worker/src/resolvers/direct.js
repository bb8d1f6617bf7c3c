// Links that already are the file: an origin allowed by R2_ALLOWED_HOSTS, or any provider the
// Worker has no resolver for. The landing-page guard still applies to what they answer.

import { shareFile } from "./api.js";

export const direct = {
  id: "generic",
  name: "source",
  async resolve(link, job) {
    return [shareFile({ url: link.href, name: job.filename })];
  },
};
