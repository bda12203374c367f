#!/usr/bin/env bash
# Node addon tests: installs the npm dependencies (registry only), builds the addon and the
# `authstate` binary (for `authstate tempdb`: the outage test always runs its own cluster), runs node:test.
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
  node scripts/build.js
  cargo build --release --bin authstate --manifest-path "$ROOT/Cargo.toml"
  export AUTHSTATE_BIN=${AUTHSTATE_BIN:-$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')/release/authstate}
else
  node scripts/build.js --debug
  cargo build --bin authstate --manifest-path "$ROOT/Cargo.toml"
fi

node --test --test-concurrency=1 test/*.test.js
