//! The scripts that change an item in Redis, each atomic and each on one key (the item's
//! hash, see `keys`), so that they run alike on one server and on a Cluster. Times the
//! scripts compare (lease, backoff) are the calling daemon's wall clock in ms, passed in:
//! the fleet's daemons are expected to keep their clocks in step (NTP), as their items'
//! times already require.
//!
//! Every script that changes what a reader sees publishes the change on `keys::EVENTS`:
//! one byte of kind, the 16 bytes of the calling daemon's id, then the item's Redis key.

use redis::Script;
use std::sync::LazyLock;

/// Takes the item's lease unless a live one is held or the item's version moved from the
/// one the caller saw. ARGV: token, now (ms), until (ms), version seen. Returns `{0}` if
/// held, `{2}` if the version moved, else `{1, version, generation, failures}`.
pub(crate) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
local f = redis.call('HMGET', k, 'l', 'lu', 'v', 'g', 'bn')
if f[1] and (tonumber(f[2]) or 0) > tonumber(ARGV[2]) then return {0} end
if (f[3] or '0') ~= ARGV[4] then return {2} end
redis.call('HSET', k, 'l', ARGV[1], 'lu', ARGV[3])
local keep = tonumber(ARGV[3]) + 1000
if redis.call('PEXPIRETIME', k) < keep then redis.call('PEXPIREAT', k, keep) end
return {1, f[3] or '0', f[4] or '0', f[5] or '0'}
",
    )
});

/// Stores a fetch's result if the lease is still this fetch's and the version the one it
/// started from (a write since voided the lease or moved the version: the write won).
/// ARGV: token, version, generation, record, expire at (ms), stale ("1": a mark came in
/// during the fetch), stored_at (µs), origin. Returns 0 (not stored), 1 (stored), 2 (stored
/// stale: an Invalidate or a mark came in during the fetch, so a refresh must follow).
pub(crate) static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
local f = redis.call('HMGET', k, 'l', 'v', 'g')
if f[1] ~= ARGV[1] or (f[2] or '0') ~= ARGV[2] then return 0 end
local stale = ARGV[6] == '1' or (f[3] or '0') ~= ARGV[3]
redis.call('HSET', k, 'r', ARGV[4], 'v', tonumber(f[2] or '0') + 1)
redis.call('HDEL', k, 'l', 'lu', 'bn', 'bu', 'm', 'eu')
if stale then redis.call('HSET', k, 'x', ARGV[7]) else redis.call('HDEL', k, 'x') end
redis.call('PEXPIREAT', k, ARGV[5])
redis.call('PUBLISH', 'cb:events', 'C' .. ARGV[8] .. k)
if stale then return 2 end
return 1
",
    )
});

/// A failed fetch gives its lease back and starts a backoff; for a missing item it may
/// remember the error. ARGV: token, backoff until (ms), message, remembered until (ms, "0":
/// not remembered), origin. Returns 0 if the lease was not this fetch's any more.
pub(crate) static FAIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
if redis.call('HGET', k, 'l') ~= ARGV[1] then return 0 end
redis.call('HDEL', k, 'l', 'lu')
redis.call('HINCRBY', k, 'bn', 1)
redis.call('HSET', k, 'bu', ARGV[2], 'm', ARGV[3])
local keep = tonumber(ARGV[2])
if ARGV[4] ~= '0' then
  redis.call('HSET', k, 'eu', ARGV[4])
  keep = math.max(keep, tonumber(ARGV[4]))
end
keep = keep + 600000
if redis.call('PEXPIRETIME', k) < keep then redis.call('PEXPIREAT', k, keep) end
redis.call('PUBLISH', 'cb:events', 'F' .. ARGV[5] .. k)
return 1
",
    )
});

/// Gives a lease back without a result (the fetch never reached the origin: a full queue,
/// the daemon closing). ARGV: token, origin.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
if redis.call('HGET', k, 'l') ~= ARGV[1] then return 0 end
redis.call('HDEL', k, 'l', 'lu')
redis.call('PUBLISH', 'cb:events', 'U' .. ARGV[2] .. k)
return 1
",
    )
});

/// A Set: the record, a new version, the lease voided (a fetch in flight will not store
/// over it), backoff and remembered error over. ARGV: record, expire at (ms), origin.
pub(crate) static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
redis.call('HINCRBY', k, 'v', 1)
redis.call('HSET', k, 'r', ARGV[1])
redis.call('HDEL', k, 'x', 'l', 'lu', 'bn', 'bu', 'm', 'eu')
redis.call('PEXPIREAT', k, ARGV[2])
redis.call('PUBLISH', 'cb:events', 'C' .. ARGV[3] .. k)
return 1
",
    )
});

/// A Delete: everything of the item goes, its lease with it. ARGV: origin. Returns the
/// record that was there (or nil), for the caller to say whether it was present.
pub(crate) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
local r = redis.call('HGET', k, 'r')
redis.call('DEL', k)
redis.call('PUBLISH', 'cb:events', 'R' .. ARGV[1] .. k)
return r
",
    )
});

/// An Invalidate of a present item: stale from now (an item stale already keeps its
/// staleness), and the generation moves so that a fetch in flight stores stale and is
/// followed by one more. ARGV: now (µs), now (ms), origin. Returns `{found, lease held}`.
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local k = KEYS[1]
if redis.call('HEXISTS', k, 'r') == 0 then return {0, 0} end
local f = redis.call('HMGET', k, 'x', 'l', 'lu')
if not f[1] or tonumber(f[1]) > tonumber(ARGV[1]) then redis.call('HSET', k, 'x', ARGV[1]) end
redis.call('HINCRBY', k, 'g', 1)
redis.call('PUBLISH', 'cb:events', 'I' .. ARGV[3] .. k)
local held = 0
if f[2] and (tonumber(f[3]) or 0) > tonumber(ARGV[2]) then held = 1 end
return {1, held}
",
    )
});
