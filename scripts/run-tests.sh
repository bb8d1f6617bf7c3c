#!/usr/bin/env bash
# Runs the whole suite; pytest's "no tests collected" (exit 5) is a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
.venv/bin/python -m playwright --version >/dev/null 2>&1 || true
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$code"
