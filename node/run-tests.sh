#!/usr/bin/env bash
# The Node half of the test command: installs Node.js if the machine lacks it, the npm
# packages exactly as node/package-lock.json pins them (npm ci, whenever node_modules is
# missing or older than the lock file), builds the package (types generated from proto/,
# then tsc), builds the daemon and the Rust examples the interop tests run, and runs the
# tests with node's test runner against the real daemon.
# `--build-only` stops after the package is built (the Python interop tests use it).
# Extra arguments go to `node --test`. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
# The fleet failover test runs a real redis-server.
if ! command -v redis-server >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
fi
node scripts/build.mjs
if [ "${1:-}" = "--build-only" ]; then
    exit 0
fi

TARGET=${CARGO_TARGET_DIR:-$(cd .. && pwd)/target}
if [ -z "${CACHEBACKD_BIN:-}" ] || [ -z "${CACHEBACK_RUST_EXAMPLES:-}" ]; then
    (cd .. && cargo build -p cachebackd --bin cachebackd -p cacheback --example user_tweets --example read_tweets)
fi
export CACHEBACKD_BIN=${CACHEBACKD_BIN:-$TARGET/debug/cachebackd}
export CACHEBACK_RUST_EXAMPLES=${CACHEBACK_RUST_EXAMPLES:-$TARGET/debug/examples}
exec node --test --test-concurrency=2 "$@" dist/test/
