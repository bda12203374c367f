#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ (value codec, `set` argument, connection strings) one after
# the other, nice'd, for SECONDS each (default 60), or for RUNS executions each when the
# environment variable FUZZ_RUNS is set (then SECONDS is only an upper bound).
#
#   scripts/fuzz.sh 300                 # five minutes per target
#   FUZZ_RUNS=10000000 scripts/fuzz.sh  # ten million executions per target
#   FUZZ_TARGETS="codec" scripts/fuzz.sh 60
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds the corpora
# from the Baileys fixtures first (fuzz/seed-corpus.js). Builds with overflow checks and debug
# assertions and without AddressSanitizer: the code under test is safe Rust (no `unsafe`
# outside the C ABI), where ASan finds nothing that a panic would not, and it halves the
# executions per second. Crashes land in fuzz/artifacts/<target>/; the summary lines at the
# end give the executions per target.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-60}
RUNS=${FUZZ_RUNS:-}
TARGETS=${FUZZ_TARGETS:-codec set_args conn_string}
if [ -n "$RUNS" ] && [ -z "${1:-}" ]; then
    SECS=86400
fi

cd "$ROOT/fuzz"
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
node seed-corpus.js
FLAGS=(--sanitizer none --debug-assertions)
nice -n 10 cargo +nightly fuzz build "${FLAGS[@]}"

mkdir -p logs
summary=()
status=0
for t in $TARGETS; do
    args=(-max_total_time="$SECS" -print_final_stats=1)
    if [ -n "$RUNS" ]; then
        args+=(-runs="$RUNS")
    fi
    echo "== fuzz $t: ${args[*]}"
    if nice -n 10 cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" -- "${args[@]}" \
        >"logs/$t.log" 2>&1; then
        result=ok
    else
        result="FAILED (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
        status=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "logs/$t.log" | tail -1)
    summary+=("$t: ${execs:-?} executions in ${secs:-?} s: $result")
    tail -n 3 "logs/$t.log"
done
printf '%s\n' "${summary[@]}"
exit $status
