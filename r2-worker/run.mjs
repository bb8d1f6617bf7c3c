// Runs the R2 fetch Worker locally under Miniflare (Cloudflare's workerd) with a bucket persisted
// to a directory, for tests, the demo and `make r2-worker`.
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const here = dirname(fileURLToPath(import.meta.url));
const env = process.env;

function compatibilityDate() {
  const toml = readFileSync(join(here, "wrangler.toml"), "utf8");
  const match = /^compatibility_date\s*=\s*"([^"]+)"/m.exec(toml);
  if (!match) throw new Error("wrangler.toml has no compatibility_date");
  return match[1];
}

function portFrom(name, fallback) {
  const raw = env[name] ?? String(fallback);
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`${name} must be a TCP port, got ${JSON.stringify(raw)}`);
  }
  return port;
}

const port = portFrom("R2_WORKER_PORT", 8787);
const host = env.R2_WORKER_HOST || "127.0.0.1";
const dataDir = resolve(env.R2_WORKER_DATA || join(here, ".data"));
if (!env.R2_FETCH_TOKEN) {
  console.error("R2_FETCH_TOKEN is not set: every transfer would be refused");
  process.exit(2);
}

const bindings = { R2_FETCH_TOKEN: env.R2_FETCH_TOKEN };
for (const name of ["MAX_BYTES", "R2_ALLOWED_HOSTS", "UPSTREAM_TIMEOUT_MS", "R2_PUBLIC_URL"]) {
  if (env[name] !== undefined) bindings[name] = env[name];
}

const mf = new Miniflare({
  modules: true,
  // R2_WORKER_SCRIPT lets the benchmark run its baseline Worker under the same runner.
  scriptPath: resolve(env.R2_WORKER_SCRIPT || join(here, "src", "index.js")),
  modulesRoot: dirname(resolve(env.R2_WORKER_SCRIPT || join(here, "src", "index.js"))),
  compatibilityDate: compatibilityDate(),
  // The Worker's own modules are ES modules (Miniflare reads a plain .js import as CommonJS).
  modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
  r2Buckets: ["BUCKET"],
  r2Persist: dataDir,
  bindings,
  host,
  port,
  // The Worker's console.log lines go to this process's stdout, one JSON line per request.
  handleRuntimeStdio(stdout, stderr) {
    stdout.pipe(process.stdout);
    stderr.pipe(process.stderr);
  },
});

const url = await mf.ready;

// Test-only view of the bucket's keys, outside the Worker so the deployed code has no such route.
let admin = null;
const adminPort = env.R2_WORKER_ADMIN_PORT;
if (adminPort) {
  const bucket = await mf.getR2Bucket("BUCKET");
  admin = createServer(async (req, res) => {
    if (req.method !== "GET" || req.url !== "/objects") {
      res.writeHead(404).end();
      return;
    }
    const keys = [];
    let cursor;
    do {
      const page = await bucket.list({ cursor });
      keys.push(...page.objects.map((o) => o.key));
      cursor = page.truncated ? page.cursor : undefined;
    } while (cursor);
    res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify({ keys }));
  });
  await new Promise((ok) => admin.listen(portFrom("R2_WORKER_ADMIN_PORT", 0), "127.0.0.1", ok));
}

console.log(JSON.stringify({ event: "ready", url: url.origin, data: dataDir, pid: process.pid }));

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.log(JSON.stringify({ event: "stopping", signal }));
  admin?.close();
  await mf.dispose();
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
