"""The wire conventions every cachebackd party shares, mirrored from the protocol crate's
`src/wire.rs` (the one source). `tests/test_wire.py` reads that file and compares, so the
two cannot drift apart: change a value there, then here."""

from __future__ import annotations

#: How long fetched data is fresh when a Register leaves `lifetime` unset (five minutes).
JOB_LIFETIME_SECS = 300
#: How long one fetch may take, queueing included, when a Register leaves it unset.
JOB_REFRESH_TIMEOUT_SECS = 60
#: Whether a miss waits for a synchronous fetch when a Register leaves it unset.
JOB_FETCH_ON_MISS = True
#: How long an item is kept at most, since it was stored (30 days).
JOB_CACHE_TTL_SECS = 30 * 24 * 3600

#: Fetches a worker takes at once when its Register says 0.
DEFAULT_MAX_IN_FLIGHT = 16
#: The most fetches at once a worker may ask for.
MAX_MAX_IN_FLIGHT = 65_536
#: Most Gets one GetMany may carry; longer lists are split into calls of this many.
MAX_GET_MANY = 1000

#: Longest job name a daemon accepts by default, in bytes.
MAX_JOB_NAME_BYTES = 128
#: Longest `args` a daemon accepts by default, in bytes.
MAX_ARGS_BYTES = 4096
#: Longest `data` a daemon accepts by default, in bytes (4 MiB).
MAX_DATA_BYTES = 4 * 1024 * 1024
#: What a message needs beyond its data and args.
MESSAGE_OVERHEAD_BYTES = 64 * 1024
#: The message limit clients set on both directions by default (16 MiB).
CLIENT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: The first wait before a worker reconnects after its stream ended, in milliseconds.
RECONNECT_MIN_MILLIS = 100
#: The longest wait between a worker's reconnection attempts, in milliseconds (10 s).
RECONNECT_MAX_MILLIS = 10_000
