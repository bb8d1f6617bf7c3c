#!/usr/bin/env bash
# Installs the R2 Worker's pinned npm packages (Miniflare, workerd) only when the lock file changed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
worker="$root/r2-worker"
workerd="$worker/node_modules/@cloudflare/workerd-linux-64/bin/workerd"

command -v node >/dev/null || { echo "node is not installed (Node 20 or later is needed)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }

if [[ ! -d "$worker/node_modules" || "$worker/package-lock.json" -nt "$worker/node_modules" ]]; then
  echo "installing r2-worker npm packages (npm ci)"
  (cd "$worker" && npm ci --no-audit --no-fund)
  # npm ci leaves the directory's mtime alone when little changed; mark the install as current.
  touch "$worker/node_modules"
fi

# npm may skip workerd's postinstall script; the platform package ships the binary itself.
if [[ ! -x "$workerd" ]]; then
  echo "workerd binary missing at $workerd (unsupported platform, or a broken install:" \
    "rm -rf r2-worker/node_modules and run again)" >&2
  exit 1
fi
echo "r2-worker dependencies ready: miniflare $(node -p "require('$worker/node_modules/miniflare/package.json').version"), $("$workerd" --version)"
