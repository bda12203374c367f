#!/usr/bin/env bash
# The normal store tests (tests/store.rs), the lease tests (tests/lease.rs: two and three real
# processes, SIGKILL/SIGSTOP takeovers, fencing; node/test/lease.test.js and
# takeover-baileys.test.js: the same with Node processes and real Baileys traffic) and the journal
# durability tests (tests/journal_mode.rs: SIGKILLs under traffic, the lease refused to another
# host) once more, through pgbouncer in transaction
# pooling mode in front of a throwaway cluster: statements, timeouts, the lease rows and CREATE
# DATABASE (each test creates its own database on DATABASE_URL's server) all go through the
# pooler, which hands each transaction to any server connection (so nothing may rely on session
# state: the store sends unnamed statements only, and the lease is a row, not an advisory lock). The
# pgbouncer settings are tests/common/pgbouncer.ini, shared with tests/pgbouncer.rs.
# Installs pgbouncer when it is missing. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/install-pgbouncer.sh
pgbouncer_bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
cargo build --locked --bin authstate
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
case $target_dir in /*) ;; *) target_dir=$ROOT/$target_dir ;; esac

dir=$(mktemp -d /tmp/authstate-pgbouncer-XXXXXX)
run_as=()
if [ "$(id -u)" = 0 ]; then
  run_as=(runuser -u postgres --)
  chown postgres: "$dir"
fi

cleanup() {
  if [ -f "$dir/pgbouncer.pid" ]; then
    kill -TERM "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
    sleep 0.5
  fi
  # Closing the cluster's stdin stops and removes it.
  if [ -n "${TEMPDB_PID:-}" ]; then
    exec {TEMPDB[1]}>&- 2>/dev/null || true
    wait "$TEMPDB_PID" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

# A throwaway cluster: `authstate tempdb` prints one JSON line and runs until stdin closes.
coproc TEMPDB { "$target_dir/debug/authstate" tempdb; }
read -r -t 120 info <&"${TEMPDB[0]}"
pg_port=$(printf '%s' "$info" | sed -n 's/.*"port":\([0-9]*\).*/\1/p')
[ -n "$pg_port" ] || { echo "authstate tempdb printed no port: $info" >&2; exit 1; }

# Start pgbouncer on a free port; a start that does not listen (a port taken meanwhile) is
# retried on another port, and a pgbouncer that never listens fails with its log.
start_pgbouncer() {
  port=
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
  done
  [ -n "$port" ] || { echo "no free port for pgbouncer" >&2; exit 1; }
  rm -f "$dir/pgbouncer.pid"
  sed -e "s|@PG_PORT@|$pg_port|" -e "s|@LISTEN_PORT@|$port|" -e "s|@DIR@|$dir|" \
    tests/common/pgbouncer.ini > "$dir/pgbouncer.ini"
  printf '"postgres" ""\n' > "$dir/userlist.txt"
  [ ${#run_as[@]} -eq 0 ] || chown postgres: "$dir/pgbouncer.ini" "$dir/userlist.txt"
  "${run_as[@]}" "$pgbouncer_bin" -d "$dir/pgbouncer.ini" || return 1
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
started=
for attempt in 1 2 3; do
  if start_pgbouncer; then started=1; break; fi
  echo "pgbouncer did not listen on $port (attempt $attempt); its log:" >&2
  tail -5 "$dir/pgbouncer.log" >&2 2>/dev/null || true
  [ -f "$dir/pgbouncer.pid" ] && kill -TERM "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
done
[ -n "$started" ] || { echo "pgbouncer never listened" >&2; exit 1; }
echo "pgbouncer $("$pgbouncer_bin" --version | head -1) on 127.0.0.1:$port (transaction pooling) -> PostgreSQL on port $pg_port"

# The store goes through pgbouncer; the tests' own checks read PostgreSQL directly.
DATABASE_URL="host=127.0.0.1 port=$port user=postgres dbname=postgres" \
AUTHSTATE_TEST_DIRECT=$port:$pg_port \
  cargo test -p authstate --locked --test store --test lease --test journal_mode

# The Node lease tests too (a second Node process refused and fenced; three processes running
# real Baileys traffic, one SIGKILLed and taken over): the addon is built as scripts/test-node.sh
# builds it (a no-op when that ran first).
(
  cd node
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
  fi
  npm run build:debug
  DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres" \
  AUTHSTATE_BIN="$target_dir/debug/authstate" \
    node --test --test-concurrency=1 test/lease.test.js test/takeover-baileys.test.js
)
