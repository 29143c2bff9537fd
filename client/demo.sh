#!/usr/bin/env bash
# Starts a throwaway cachebackd on a Unix socket, runs one of the seed's examples against
# it, then stops the daemon. Usage: client/demo.sh [decorated|no_fetch_on_miss|user_tweets]
set -euo pipefail
example="${1:-user_tweets}"
cd "$(dirname "$0")/.."
cargo build -q -p cachebackd --bin cachebackd -p cacheback --example "$example"
target="${CARGO_TARGET_DIR:-target}/debug"

dir="$(mktemp -d)"
socket="$dir/cachebackd.sock"
"$target/cachebackd" --listen "unix:$socket" --data-dir "$dir/data" 2>"$dir/cachebackd.log" &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$dir"' EXIT

for _ in $(seq 100); do
    [ -S "$socket" ] && break
    sleep 0.1
done
CACHEBACKD_URL="unix:$socket" "$target/examples/$example"
