#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo run for real (only what is missing).
set -euo pipefail

PACKAGES=(redis-server dovecot-imapd prometheus-alertmanager prometheus chromium wrk)
BINARIES=(redis-server dovecot prometheus-alertmanager prometheus chromium wrk)

missing=()
for i in "${!PACKAGES[@]}"; do
  if ! command -v "${BINARIES[$i]}" >/dev/null 2>&1; then
    missing+=("${PACKAGES[$i]}")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system: missing ${missing[*]}; run as root or install them with apt-get" >&2
  exit 1
fi

echo "install-system: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Package scripts try to start the services; policy-rc.d keeps them stopped (tests start their own).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
