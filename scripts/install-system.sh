#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo run for real (only what is missing).
set -euo pipefail

PACKAGES=(redis-server dovecot-imapd prometheus-alertmanager prometheus chromium wrk)
BINARIES=(redis-server dovecot prometheus-alertmanager prometheus chromium wrk)
# The container engine for `make image` and tests/deploy: podman with runc (crun refuses hybrid
# cgroups), netavark and aardvark-dns for compose networks with service names, slirp4netns for a
# container that reaches services on the host's loopback, catatonit for the pause container of
# `podman kube play` pods, and mmdebstrap for a base image made from Debian's packages where no
# image registry answers.
PACKAGES+=(runc podman netavark aardvark-dns iptables slirp4netns catatonit mmdebstrap)
BINARIES+=(runc podman /usr/lib/podman/netavark /usr/lib/podman/aardvark-dns iptables slirp4netns
           catatonit mmdebstrap)
PODMAN_CONF=/etc/containers/containers.conf.d/50-signal-sidecar.conf
PODMAN_SETTINGS='# Written by signal-sidecar scripts/install-system.sh.
[containers]
# No ulimits of its own: raising nofile/nproc above what podman itself has is refused where the
# engine runs without CAP_SYS_RESOURCE; containers inherit podman'"'"'s limits instead.
default_ulimits = []

[engine]
# crun does not support hybrid (v1 + v2) cgroup hierarchies; runc does.
runtime = "runc"

[network]
network_backend = "netavark"
'

missing=()
for i in "${!PACKAGES[@]}"; do
  if ! command -v "${BINARIES[$i]}" >/dev/null 2>&1; then
    missing+=("${PACKAGES[$i]}")
  fi
done

podman_configured() {
  [ -f "$PODMAN_CONF" ] && [ "$(cat "$PODMAN_CONF")" = "${PODMAN_SETTINGS%$'\n'}" ]
}

if [ "${#missing[@]}" -eq 0 ] && podman_configured; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system: missing ${missing[*]:-} ${PODMAN_CONF}; run as root or install them" \
       "with apt-get" >&2
  exit 1
fi

if ! podman_configured; then
  mkdir -p "$(dirname "$PODMAN_CONF")"
  printf '%s' "$PODMAN_SETTINGS" > "$PODMAN_CONF"
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

echo "install-system: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Package scripts try to start the services; policy-rc.d keeps them stopped (tests start their own).
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
