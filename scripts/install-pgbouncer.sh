#!/usr/bin/env bash
# Installs pgbouncer (the Debian package) when it is missing: tests/pgbouncer.rs and
# scripts/test-via-pgbouncer.sh run the store behind it. Needs root (or sudo) for apt-get.
set -euo pipefail
if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then
  exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or old on a fresh machine.
"${sudo[@]}" apt-get install -y --no-install-recommends pgbouncer ||
  { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends pgbouncer; }
# The package's own service (port 6432) is not used: the tests start their own.
if command -v service >/dev/null 2>&1; then
  "${sudo[@]}" service pgbouncer stop >/dev/null 2>&1 || true
fi
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]
