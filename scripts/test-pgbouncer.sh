#!/usr/bin/env bash
# The lease tests (tests/lease.rs) through pgbouncer in transaction mode: two and three real
# processes, SIGKILL/SIGSTOP takeovers and fencing, all with every statement going through a
# pooler that hands each transaction to any server connection (so nothing may rely on session
# state: the lease is a row with a heartbeat, not an advisory lock).
#
# pgbouncer is installed with apt-get when missing (as root). The store uses prepared
# statements, which pgbouncer supports in transaction mode from 1.21 on (max_prepared_statements);
# with an older pgbouncer (Debian 12 ships 1.18) every statement of the store fails there
# ("prepared statement s0 does not exist / already exists"), so the script says SKIPPED and exits
# 0 unless PGBOUNCER_FORCE=1. The outage test of tests/lease.rs runs its own cluster directly.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '[pgbouncer] %s\n' "$*"; }

PGB=$(command -v pgbouncer || true)
[ -z "$PGB" ] && [ -x /usr/sbin/pgbouncer ] && PGB=/usr/sbin/pgbouncer
if [ -z "$PGB" ]; then
    [ "$(id -u)" = 0 ] || { say "pgbouncer is not installed (and this is not root)"; exit 1; }
    say "installing pgbouncer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null
    PGB=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
fi
VERSION=$("$PGB" --version | awk 'NR == 1 { print $2 }')
PREPARED="max_prepared_statements = 200"
if ! printf '1.21.0\n%s\n' "$VERSION" | sort -V -C; then
    if [ "${PGBOUNCER_FORCE:-0}" != 1 ]; then
        say "SKIPPED: pgbouncer $VERSION has no prepared statements in transaction mode (needs 1.21+)"
        exit 0
    fi
    PREPARED="; max_prepared_statements: not known to pgbouncer $VERSION"
fi

WORK=$(mktemp -d)
cleanup() {
    [ -f "$WORK/pgbouncer.pid" ] && kill "$(cat "$WORK/pgbouncer.pid")" 2>/dev/null || true
    [ -n "${TEMPDB_PID:-}" ] && kill "$TEMPDB_PID" 2>/dev/null && wait "$TEMPDB_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# A throwaway PostgreSQL (`authstate tempdb` prints its address, and stops when stdin closes).
cargo build -q -p authstate --bin authstate
mkfifo "$WORK/tempdb.in"
target/debug/authstate tempdb --db authstate <"$WORK/tempdb.in" >"$WORK/tempdb.json" &
TEMPDB_PID=$!
exec 3>"$WORK/tempdb.in"
for _ in $(seq 1 300); do [ -s "$WORK/tempdb.json" ] && break; sleep 0.2; done
PGPORT=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$WORK/tempdb.json")
[ -n "$PGPORT" ] || { say "the throwaway PostgreSQL did not start"; exit 1; }

PORT=$((20000 + RANDOM % 20000))
while ss -ltn | grep -q ":$PORT "; do PORT=$((PORT + 1)); done
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PGPORT
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/users.txt
pool_mode = transaction
$PREPARED
default_pool_size = 20
max_client_conn = 1000
; the store sends statement_timeout as a startup option, which pgbouncer cannot forward
ignore_startup_parameters = options,extra_float_digits
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
EOF
echo '"postgres" ""' >"$WORK/users.txt"
if [ "$(id -u)" = 0 ]; then
    chown -R postgres "$WORK"
    runuser -u postgres -- "$PGB" -d "$WORK/pgbouncer.ini"
else
    "$PGB" -d "$WORK/pgbouncer.ini"
fi
for _ in $(seq 1 50); do [ -f "$WORK/pgbouncer.pid" ] && break; sleep 0.1; done

say "pgbouncer $VERSION (transaction mode) on 127.0.0.1:$PORT -> PostgreSQL on $PGPORT"
DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/authstate?sslmode=disable" \
    cargo test -p authstate --test lease
