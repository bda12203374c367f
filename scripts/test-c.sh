#!/usr/bin/env bash
# Tests the C ABI (crate bindings/c/) against a real PostgreSQL. Exits non-zero on any failure.
#
#   scripts/test-c.sh                  header drift check, the crate's unit tests, README drift
#                                      check, build, README example + example + harness (cdylib
#                                      and staticlib), harness under valgrind, harness with ASan
#   scripts/test-c.sh --update-header  regenerate include/authstate.h and stop
#
# Database: DATABASE_URL when set (a fresh database is created in that cluster for each run,
# and dropped afterwards); otherwise `authstate tempdb` starts a throwaway cluster.
# Installs what a fresh CI machine lacks: the pinned cbindgen (cargo install), and valgrind,
# the ASan runtime and psql (apt-get) when missing.
set -euo pipefail

CBINDGEN_VERSION=0.29.4

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LIBDIR=$TARGET_DIR/debug
OUT=$TARGET_DIR/c-tests
mkdir -p "$OUT"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'test-c.sh: %s\n' "$*" >&2; exit 1; }

apt_install() {
    command -v apt-get >/dev/null || die "missing $*, and no apt-get to install it"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# ---- tools -------------------------------------------------------------------------------------
ensure_cbindgen() {
    if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
        say "installing cbindgen $CBINDGEN_VERSION"
        cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet
    fi
}

ensure_tools() {
    command -v gcc >/dev/null || apt_install gcc libc6-dev
    command -v valgrind >/dev/null || apt_install valgrind
    command -v psql >/dev/null || apt_install postgresql-client
    # gcc's AddressSanitizer runtime ships in libasanN; install it when a probe fails to link.
    printf 'int main(void){return 0;}\n' >"$OUT/asan-probe.c"
    if ! gcc -fsanitize=address "$OUT/asan-probe.c" -o "$OUT/asan-probe" 2>/dev/null; then
        local major
        major=$(gcc -dumpversion | cut -d. -f1)
        apt_install "libgcc-$major-dev" || true
        gcc -fsanitize=address "$OUT/asan-probe.c" -o "$OUT/asan-probe" ||
            die "gcc -fsanitize=address does not link (libasan missing)"
    fi
}

# ---- header ------------------------------------------------------------------------------------
# Single-file mode: cbindgen follows the crate's `mod` items from lib.rs and never needs cargo.
generate_header() {
    cbindgen --quiet --config bindings/c/cbindgen.toml --output "$1" bindings/c/src/lib.rs
}

ensure_cbindgen
if [ "${1:-}" = "--update-header" ]; then
    generate_header include/authstate.h
    echo "include/authstate.h regenerated"
    exit 0
fi

ensure_tools

say "header: include/authstate.h matches cbindgen $CBINDGEN_VERSION output"
generate_header "$OUT/authstate.h"
diff -u include/authstate.h "$OUT/authstate.h" ||
    die "include/authstate.h is stale: run scripts/test-c.sh --update-header and commit it"

# The crate's unit tests: the status mapping of every core error kind, and the checked-in
# header's enum against ErrorKind::ALL (AUTHSTATE_<code> for every kind), the panic boundary,
# last_error.
say "cargo test -p authstate-c"
cargo test -p authstate-c --quiet

# ---- README ------------------------------------------------------------------------------------
# The README's ```c block (the first one after "## C") is bindings/c/readme_example.c between
# its README markers, without the 4-space indent of main's body. Both sides must be non-empty,
# so a moved marker or heading fails instead of comparing nothing with nothing.
README_EXAMPLE=bindings/c/readme_example.c
README_OUTPUT='{"1":{"type":"Buffer","data":"AQID"}}' # what it prints; also stated in its comment
readme_c_block() { awk '/^## C$/ { c = 1 } c && /^```c$/ { f = 1; next } f && /^```$/ { exit } f' README.md; }
example_c_block() {
    sed -n '\#/\* README begin \*/#,\#/\* README end \*/#p' "$README_EXAMPLE" | sed '1d;$d' | sed 's/^    //'
}
say "README: the C block is $README_EXAMPLE"
readme_c_block >"$OUT/readme-block.c"
example_c_block >"$OUT/example-block.c"
[ -s "$OUT/readme-block.c" ] || die "README.md has no \`\`\`c block under '## C'"
[ -s "$OUT/example-block.c" ] || die "$README_EXAMPLE has no README begin/end markers"
diff -u "$OUT/readme-block.c" "$OUT/example-block.c" ||
    die "README.md's C example differs from $README_EXAMPLE: copy the marked part into README.md"
grep -qF "$README_OUTPUT" "$OUT/readme-block.c" ||
    die "the README's C example no longer states the output this script checks: $README_OUTPUT"

# ---- build -------------------------------------------------------------------------------------
say "cargo build (cdylib and staticlib of authstate-c, the core's CLI for tempdb)"
cargo build -p authstate-c -p authstate --lib --bin authstate

CFLAGS=(-std=c11 -g -O1 -Wall -Wextra -Werror -pedantic -Iinclude)
# What a Rust staticlib needs from the system on Linux (rustc --print native-static-libs).
STATIC_LIBS=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

build_c() { # name source
    local name=$1 src=$2
    gcc "${CFLAGS[@]}" "$src" -o "$OUT/$name-dyn" -L"$LIBDIR" -Wl,-rpath,"$LIBDIR" -lauthstate -pthread
    gcc "${CFLAGS[@]}" "$src" -o "$OUT/$name-static" "$LIBDIR/libauthstate.a" "${STATIC_LIBS[@]}" -pthread
}
say "gcc: example and harness, linked against the cdylib and the staticlib"
build_c readme-example "$README_EXAMPLE"
build_c example bindings/c/example.c
build_c harness bindings/c/test_harness.c
# ASan instruments the C side (the Rust library need not be); its allocator and leak checker
# see every malloc/free of the process, the library's included.
gcc "${CFLAGS[@]}" -fsanitize=address -fno-omit-frame-pointer bindings/c/test_harness.c \
    -o "$OUT/harness-asan" "$LIBDIR/libauthstate.a" "${STATIC_LIBS[@]}" -pthread
# The dynamic build must not need the static one's symbols and vice versa.
# grep without -q reads all of ldd's output: with pipefail, -q could fail the pipe on SIGPIPE.
if ldd "$OUT/harness-static" | grep libauthstate >/dev/null; then die "harness-static links the .so"; fi
ldd "$OUT/harness-dyn" | grep libauthstate.so >/dev/null || die "harness-dyn does not link the .so"

# ---- database ----------------------------------------------------------------------------------
CREATED_DBS=()
TEMPDB_PID=""
cleanup() {
    local rc=$?
    if [ -n "${BASE_URL:-}" ]; then
        for db in "${CREATED_DBS[@]}"; do
            psql -X -q -d "$BASE_URL" -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
        done
    fi
    if [ -n "$TEMPDB_PID" ]; then
        exec {TEMPDB_IN}>&- # closing its stdin stops the cluster and removes it
        wait "$TEMPDB_PID" 2>/dev/null || true
    fi
    exit $rc
}
trap cleanup EXIT

if [ -n "${DATABASE_URL:-}" ]; then
    BASE_URL=$DATABASE_URL
    say "database: DATABASE_URL"
else
    say "database: throwaway cluster from 'authstate tempdb'"
    mkfifo "$OUT/tempdb.in" 2>/dev/null || { rm -f "$OUT/tempdb.in"; mkfifo "$OUT/tempdb.in"; }
    "$LIBDIR/authstate" tempdb <"$OUT/tempdb.in" >"$OUT/tempdb.out" 2>"$OUT/tempdb.err" &
    TEMPDB_PID=$!
    exec {TEMPDB_IN}>"$OUT/tempdb.in" # keep its stdin open while we run
    rm -f "$OUT/tempdb.in"
    for _ in $(seq 1 600); do
        [ -s "$OUT/tempdb.out" ] && break
        kill -0 "$TEMPDB_PID" 2>/dev/null || { cat "$OUT/tempdb.err" >&2; die "tempdb exited"; }
        sleep 0.1
    done
    BASE_URL=$(sed -n 's/.*"url": *"\([^"]*\)".*/\1/p' "$OUT/tempdb.out" | head -n1)
    [ -n "$BASE_URL" ] || { cat "$OUT/tempdb.err" >&2; die "no url from tempdb"; }
fi

# The URL of database $2 on the server of URL $1 (postgres:// URL or key=value string).
url_with_db() {
    local url=$1 db=$2
    case "$url" in
    postgres://* | postgresql://*)
        local scheme=${url%%://*} rest=${url#*://} query=""
        if [[ $rest == *\?* ]]; then query="?${rest#*\?}"; rest=${rest%%\?*}; fi
        printf '%s://%s/%s%s' "$scheme" "${rest%%/*}" "$db" "$query" ;;
    *) printf '%s dbname=%s' "$url" "$db" ;;
    esac
}

fresh_db() { # prints the URL of a new empty database
    local db="authstate_c_$$_$1"
    psql -X -q -v ON_ERROR_STOP=1 -d "$BASE_URL" -c "CREATE DATABASE \"$db\"" >/dev/null
    CREATED_DBS+=("$db")
    url_with_db "$BASE_URL" "$db"
}

# ---- runs ---------------------------------------------------------------------------------------
# Every run happens even when an earlier one failed, so one CI log shows all of them.
FAILED=()
stage() { # name command...
    local name=$1
    shift
    say "$name"
    if ! "$@"; then
        FAILED+=("$name")
        printf 'test-c.sh: FAILED: %s\n' "$name" >&2
    fi
}

run_example() { "$OUT/example-$1" "$(fresh_db "example_$1")"; }
run_readme_example() { # the README's block, with the database from DATABASE_URL as it says
    local out
    out=$(DATABASE_URL=$(fresh_db "readme_$1") "$OUT/readme-example-$1") || return 1
    [ "$out" = "$README_OUTPUT" ] || {
        printf 'README example printed:\n%s\nwant:\n%s\n' "$out" "$README_OUTPUT" >&2
        return 1
    }
}
run_harness() { AUTHSTATE_TEST_URL=$(fresh_db "harness_$1") "$OUT/harness-$1"; }

# Distinct exit codes tell a failed check of the harness (1) from what the tools found.
VALGRIND_RC=99 ASAN_RC=98 LSAN_RC=23
explain_rc() { # tool rc
    case "$2" in
    0) ;;
    "$VALGRIND_RC") echo "test-c.sh: valgrind found memory errors or leaks (log above)" >&2 ;;
    "$ASAN_RC") echo "test-c.sh: AddressSanitizer found an invalid access" >&2 ;;
    "$LSAN_RC") echo "test-c.sh: LeakSanitizer found leaks" >&2 ;;
    *) echo "test-c.sh: the harness under $1 exited $2 (failed checks are listed above)" >&2 ;;
    esac
    return "$2"
}

run_valgrind() {
    local url rc=0
    url=$(fresh_db valgrind)
    # Few iterations: valgrind is ~50x slower. Suppressions: see bindings/c/valgrind.supp.
    AUTHSTATE_TEST_URL=$url AUTHSTATE_HARNESS_ITERS=6 \
        valgrind --leak-check=full --show-leak-kinds=definite,possible --num-callers=50 \
        --errors-for-leak-kinds=definite,possible --error-exitcode=$VALGRIND_RC \
        --suppressions=bindings/c/valgrind.supp --log-file="$OUT/valgrind.log" \
        "$OUT/harness-dyn" || rc=$?
    if [ "$rc" = "$VALGRIND_RC" ]; then cat "$OUT/valgrind.log" >&2; fi
    grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|suppressed:" \
        "$OUT/valgrind.log" || true
    explain_rc valgrind "$rc"
}

run_asan() {
    local rc=0
    AUTHSTATE_TEST_URL=$(fresh_db asan) \
        ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=$ASAN_RC \
        LSAN_OPTIONS=exitcode=$LSAN_RC "$OUT/harness-asan" || rc=$?
    explain_rc ASan "$rc"
}

for kind in dyn static; do stage "README example ($kind)" run_readme_example "$kind"; done
for kind in dyn static; do stage "example ($kind)" run_example "$kind"; done
for kind in dyn static; do stage "harness ($kind)" run_harness "$kind"; done
stage "harness under valgrind (cdylib)" run_valgrind
stage "harness built with AddressSanitizer (staticlib)" run_asan

if [ ${#FAILED[@]} -gt 0 ]; then
    printf '\ntest-c.sh: %d failed: %s\n' "${#FAILED[@]}" "${FAILED[*]}" >&2
    exit 1
fi
say "C ABI: all passed"
