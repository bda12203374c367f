#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, the Rust core against a real PostgreSQL,
# the C ABI (header/README drift, unit tests, cdylib + staticlib, valgrind, ASan), the store and
# lease tests through pgbouncer in transaction mode, and the Node addon with the real Baileys. This is the README's test command and what .ci/run calls.
#
# Database: DATABASE_URL when set; otherwise each suite starts its own throwaway PostgreSQL from
# the machine's binaries (as the postgres user when run as root) and removes it afterwards.
# Everything the suites need (npm packages, the pinned cbindgen, valgrind, the ASan runtime,
# pgbouncer) is installed by the suites' own scripts.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

passed=0
failed=0
failures=()

step() {
    local name=$1
    shift
    printf '\n======== %s: %s\n' "$name" "$*"
    local start=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        printf '======== %s: ok (%ss)\n' "$name" $((SECONDS - start))
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf '======== %s: FAILED (%ss)\n' "$name" $((SECONDS - start))
    fi
}

# The fuzz targets (fuzz/, its own workspace) must keep compiling against the core's API. A
# full `cargo +nightly fuzz build` (release, instrumented, every dependency) took 3 to 6.5
# minutes on this shared 2-core machine, so CI only type-checks them (a cold check took 1m47s
# with a fuzzer busy on the other core); scripts/fuzz.sh builds and runs them. Nightly is what
# cargo-fuzz uses; without it the stable toolchain checks the same code. Not --locked:
# fuzz/Cargo.lock is its own, and a dependency the core gains must not fail CI.
fuzz_build() {
    local toolchain=()
    if cargo +nightly --version >/dev/null 2>&1; then
        toolchain=(+nightly)
    else
        echo "no nightly toolchain: checking the fuzz targets with the default one"
    fi
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz-check" \
        cargo "${toolchain[@]}" check --manifest-path fuzz/Cargo.toml --bins
}

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
# tests/pgbouncer.rs (in rust-tests) needs the Debian pgbouncer: installed when missing.
step pgbouncer-install bash scripts/install-pgbouncer.sh
step rust-tests cargo test -p authstate --locked
step fuzz-build fuzz_build
step via-pgbouncer bash scripts/test-via-pgbouncer.sh
step c-abi bash scripts/test-c.sh
step node bash scripts/test-node.sh

echo
if [ "$failed" -gt 0 ]; then
    echo "failed suites: ${failures[*]}"
fi
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
