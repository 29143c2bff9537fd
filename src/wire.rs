//! The wire conventions every cachebackd party shares: the defaults a daemon fills in, the
//! limits it enforces, and what clients send and wait for. They are defined here once, so
//! the daemon, the Rust client and the tests cannot drift apart; the Python package
//! mirrors them in `cachebackd/_wire.py`, and `python/tests/test_wire.py` compares the two
//! (it reads this file), so a change here that Python does not follow fails its suite.
//!
//! Spans are written as seconds or milliseconds (`u64`) rather than `Duration`s so that
//! the Python test can read every value off this file with one pattern.

use std::time::Duration;

/// How long fetched data is fresh when a Register leaves `lifetime` unset: five minutes,
/// as the seed says (django-cacheback's own code defaults to 600 s).
pub const JOB_LIFETIME_SECS: u64 = 300;
/// How long one fetch may take, queueing included, when a Register leaves it unset.
pub const JOB_REFRESH_TIMEOUT_SECS: u64 = 60;
/// Whether a miss waits for a synchronous fetch when a Register leaves it unset.
pub const JOB_FETCH_ON_MISS: bool = true;
/// How long an item is kept at most, since it was stored, when a Register leaves it
/// unset: 30 days.
pub const JOB_CACHE_TTL_SECS: u64 = 30 * 24 * 3600;

/// Fetches a worker takes at once when its Register says 0.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;
/// The most fetches at once a worker may ask for: bounds the memory of its stream.
pub const MAX_MAX_IN_FLIGHT: u32 = 65_536;
/// Most Gets one GetMany may carry; clients split longer lists into calls of this many.
pub const MAX_GET_MANY: usize = 1000;

/// Longest job name a daemon accepts by default, in bytes.
pub const MAX_JOB_NAME_BYTES: usize = 128;
/// Longest `args` a daemon accepts by default, in bytes.
pub const MAX_ARGS_BYTES: usize = 4096;
/// Longest `data` a daemon accepts by default, in bytes (4 MiB).
pub const MAX_DATA_BYTES: usize = 4 * 1024 * 1024;
/// What a message needs beyond its data and args (field tags, times, the gRPC frame):
/// the daemon raises its message limits to data + args + this.
pub const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// The message limit clients set on both directions by default (16 MiB): room for a
/// default daemon's largest message, with margin for a daemon whose limits were raised.
pub const CLIENT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The first wait before a worker reconnects after its stream ended, in milliseconds.
pub const RECONNECT_MIN_MILLIS: u64 = 100;
/// The longest wait between a worker's reconnection attempts, in milliseconds (10 s).
pub const RECONNECT_MAX_MILLIS: u64 = 10_000;

/// [`JOB_LIFETIME_SECS`] as a `Duration`.
pub const JOB_LIFETIME: Duration = Duration::from_secs(JOB_LIFETIME_SECS);
/// [`JOB_REFRESH_TIMEOUT_SECS`] as a `Duration`.
pub const JOB_REFRESH_TIMEOUT: Duration = Duration::from_secs(JOB_REFRESH_TIMEOUT_SECS);
/// [`JOB_CACHE_TTL_SECS`] as a `Duration`.
pub const JOB_CACHE_TTL: Duration = Duration::from_secs(JOB_CACHE_TTL_SECS);
/// [`RECONNECT_MIN_MILLIS`] as a `Duration`.
pub const RECONNECT_MIN: Duration = Duration::from_millis(RECONNECT_MIN_MILLIS);
/// [`RECONNECT_MAX_MILLIS`] as a `Duration`.
pub const RECONNECT_MAX: Duration = Duration::from_millis(RECONNECT_MAX_MILLIS);
