#!/bin/sh
# The official redis image builds redis-server with protected mode off (its network is the
# compose network, not the internet); Debian's has it on, which refuses other containers.
set -e
if [ "$1" = "redis-server" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
