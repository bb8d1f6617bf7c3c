#!/usr/bin/env bash
# Runs the R2 fetch Worker locally under Miniflare (`make r2-worker`); settings come from the environment.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

export R2_WORKER_PORT="${R2_WORKER_PORT:-8787}"
export R2_WORKER_DATA="${R2_WORKER_DATA:-$root/r2-worker/.data}"
if [[ -z "${R2_FETCH_TOKEN:-}" ]]; then
  echo "R2_FETCH_TOKEN must be set (the sidecar sends the same value)" >&2
  exit 2
fi
mkdir -p "$R2_WORKER_DATA"
exec node "$root/r2-worker/run.mjs"
