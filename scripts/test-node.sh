#!/usr/bin/env bash
# Node addon tests: installs the npm dependencies (registry only), builds the addon with
# @napi-rs/cli (`napi build --platform`: node/authstate.<platform>.node plus the generated loader
# native.js and types native.d.ts, which must match what is committed) and the `authstate` binary
# (for `authstate tempdb`), then runs node:test, including test/package.test.js, which packs the
# npm packages and installs them like a user (no cargo on PATH) next to Baileys from the registry.
# Exits non-zero on any failure.
#   scripts/test-node.sh             debug build (default; AUTHSTATE_NODE_PROFILE=release for release)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

profile=${AUTHSTATE_NODE_PROFILE:-debug}

cd "$ROOT/node"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

if [ "$profile" = release ]; then
  npm run build
  cargo build --release --bin authstate --manifest-path "$ROOT/Cargo.toml"
  export AUTHSTATE_BIN=${AUTHSTATE_BIN:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')/release/authstate}
else
  npm run build:debug
  cargo build --bin authstate --manifest-path "$ROOT/Cargo.toml"
fi

# The generated loader and types are committed (so the package's API can be reviewed); a build
# that changes them means they were not regenerated after a change to node/src/lib.rs.
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 &&
   ! git -C "$ROOT" diff --exit-code -- node/native.js node/native.d.ts; then
  echo "node/native.js or node/native.d.ts changed when rebuilt: commit the regenerated files" >&2
  exit 1
fi

node --test --test-concurrency=1 test/*.test.js
