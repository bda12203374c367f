#!/usr/bin/env bash
# A long PostgreSQL outage under realistic load (issue 9, part 4); not part of CI.
# 50 accounts of WhatsApp-like traffic (sessions ~2.5 KB, sender keys, creds updates, first
# contacts, one login burst of 812 pre-keys) through one store with a journal, against a
# throwaway cluster that is stopped (pg_ctl stop -m immediate) for the outage and started again.
# Prints detection time, pending calls and bytes at the peak, journal size, recovery time, the
# refusals (only BACKLOG is allowed) and the acknowledged writes missing from PostgreSQL
# (must be 0); exits non-zero on any loss or any refusal other than BACKLOG.
#
#   scripts/outage-5min.sh            5-minute outage (~6-7 minutes in all)
#   scripts/outage-5min.sh 30         30-second outage, to try it first
#   OUTAGE_ACCOUNTS=10 OUTAGE_MAX_PENDING_BYTES=1000000 scripts/outage-5min.sh 60
#                                     fewer accounts / a small pending bound (BACKLOG refusals)
# Set OUTAGE_PROFILE=release for a release build (debug by default: the warm test build).
set -euo pipefail
cd "$(dirname "$0")/.."

outage_secs=${1:-300}
args=(--outage-secs "$outage_secs" --accounts "${OUTAGE_ACCOUNTS:-50}"
      --warmup-secs "${OUTAGE_WARMUP_SECS:-20}" --after-secs "${OUTAGE_AFTER_SECS:-10}")
if [ -n "${OUTAGE_MAX_PENDING_BYTES:-}" ]; then
  args+=(--max-pending-bytes "$OUTAGE_MAX_PENDING_BYTES")
fi
profile=()
if [ "${OUTAGE_PROFILE:-debug}" = release ]; then
  profile=(--release)
fi
exec nice -n 10 cargo run --quiet "${profile[@]}" --example outage_load -- "${args[@]}"
