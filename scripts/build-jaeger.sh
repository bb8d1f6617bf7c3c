#!/usr/bin/env bash
# Builds the pinned Jaeger v2 binary (an OpenTelemetry Collector distribution) once per machine.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(grep -E '^JAEGER_VERSION' "$ROOT/tools/versions.env" | cut -d= -f2)"
CACHE_DIR="${SIDECAR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/signal-sidecar}"
CACHED="$CACHE_DIR/jaeger-$VERSION"
TARGET="$ROOT/tools/bin/jaeger"

if [ ! -x "$CACHED" ]; then
  command -v go >/dev/null 2>&1 || { echo "build-jaeger: Go is required to build Jaeger" >&2; exit 1; }
  echo "build-jaeger: building github.com/jaegertracing/jaeger/cmd/jaeger@$VERSION (once per machine)" >&2
  mkdir -p "$CACHE_DIR"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  cp "$ROOT/tools/go.mod" "$work/go.mod"
  [ -f "$ROOT/tools/go.sum" ] && cp "$ROOT/tools/go.sum" "$work/go.sum"
  (
    cd "$work"
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$VERSION"
    CGO_ENABLED=0 go build -trimpath -o "$work/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
  )
  mv "$work/jaeger" "$CACHED.tmp" && mv "$CACHED.tmp" "$CACHED"
fi

mkdir -p "$ROOT/tools/bin"
if [ ! -x "$TARGET" ] || ! cmp -s "$CACHED" "$TARGET"; then
  cp "$CACHED" "$TARGET"
fi
