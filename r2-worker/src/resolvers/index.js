// Provider resolvers, one module each, one shape:
//
//   { id, name, async resolve(link: URL, job, api: ProviderApi, limits: {maxFiles})
//       -> shareFile[] }
//
// A resolver turns a share link into the files it stands for (names, and sizes where the
// provider says them), or throws `unavailable` (the provider says the files are gone or locked)
// or `unresolved` (the link does not lead to files the Worker can read). Every URL it produces,
// and every API URL it calls, passes the source policy before it is fetched.

import { direct } from "./direct.js";
import { dropbox } from "./dropbox.js";
import { fromsmash } from "./fromsmash.js";
import { swisstransfer } from "./swisstransfer.js";
import { wetransfer } from "./wetransfer.js";

const RESOLVERS = new Map([dropbox, fromsmash, swisstransfer, wetransfer].map((r) => [r.id, r]));

// The sidecar names the provider; anything else (`generic` included) is fetched as it is.
export function resolverFor(provider) {
  return RESOLVERS.get(provider) || direct;
}
