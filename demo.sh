#!/usr/bin/env bash
# Runs cachebackd with a demo: builds the daemon and the seed's UserTweets example, starts
# the daemon on 127.0.0.1:7070 (data in ./cachebackd-data), runs the example against it so
# you see MISS -> FRESH -> STALE -> refreshed, then keeps the daemon serving until Ctrl-C.
#
#   ./demo.sh                 the above
#   ./demo.sh --once          stop the daemon after the example
#   ./demo.sh decorated       another example: decorated | no_fetch_on_miss | user_tweets
set -euo pipefail
cd "$(dirname "$0")"
once=false
example=user_tweets
for arg in "$@"; do
    case "$arg" in
        --once) once=true ;;
        decorated|no_fetch_on_miss|user_tweets) example="$arg" ;;
        *) echo "usage: $0 [--once] [decorated|no_fetch_on_miss|user_tweets]" >&2; exit 2 ;;
    esac
done
listen="${CACHEBACKD_LISTEN:-127.0.0.1:7070}"

cargo build -q -p cachebackd --bin cachebackd -p cacheback --example "$example"
bin="${CARGO_TARGET_DIR:-target}/debug"

log="$(mktemp)"
"$bin/cachebackd" --listen "$listen" --data-dir ./cachebackd-data 2>"$log" &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -f "$log"' EXIT

for _ in $(seq 100); do
    grep -q "cachebackd is serving" "$log" && break
    if ! kill -0 "$daemon" 2>/dev/null; then
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "cachebackd is serving on $listen (data in ./cachebackd-data)"
echo "--- cargo run -p cacheback --example $example"
CACHEBACKD_URL="http://$listen" "$bin/examples/$example"
$once && exit 0
echo "--- the daemon keeps serving on $listen; its log follows. Ctrl-C stops it."
tail -n +1 -f "$log" &
wait "$daemon"
