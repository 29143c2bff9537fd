/**
 * The wire conventions every cachebackd party shares, mirrored from the protocol crate's
 * `src/wire.rs` (the one source), as the Python package's `_wire.py` is.
 * `test/wire.test.ts` reads that file and compares, so the two cannot drift apart: change
 * a value there, then here.
 */

/** How long fetched data is fresh when a Register leaves `lifetime` unset (five minutes). */
export const JOB_LIFETIME_SECS = 300;
/** How long one fetch may take, queueing included, when a Register leaves it unset. */
export const JOB_REFRESH_TIMEOUT_SECS = 60;
/** Whether a miss waits for a synchronous fetch when a Register leaves it unset. */
export const JOB_FETCH_ON_MISS = true;
/** How long an item is kept at most, since it was stored (30 days). */
export const JOB_CACHE_TTL_SECS = 30 * 24 * 3600;

/** Fetches a worker takes at once when its Register says 0. */
export const DEFAULT_MAX_IN_FLIGHT = 16;
/** The most fetches at once a worker may ask for. */
export const MAX_MAX_IN_FLIGHT = 65_536;
/** Most Gets one GetMany may carry; longer lists are split into calls of this many. */
export const MAX_GET_MANY = 1000;

/** Longest job name a daemon accepts by default, in bytes. */
export const MAX_JOB_NAME_BYTES = 128;
/** Longest `args` a daemon accepts by default, in bytes. */
export const MAX_ARGS_BYTES = 4096;
/** Longest `data` a daemon accepts by default, in bytes (4 MiB). */
export const MAX_DATA_BYTES = 4 * 1024 * 1024;
/** What a message needs beyond its data and args. */
export const MESSAGE_OVERHEAD_BYTES = 64 * 1024;
/** The message limit clients set on both directions by default (16 MiB). */
export const CLIENT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** The first wait before a worker reconnects after its stream ended, in milliseconds. */
export const RECONNECT_MIN_MILLIS = 100;
/** The longest wait between a worker's reconnection attempts, in milliseconds (10 s). */
export const RECONNECT_MAX_MILLIS = 10_000;
