//! How a fleet lays its data out in Redis (docs/FLEET.md has the table).
//!
//! One item is one hash, `cb:i:<job>\0<epoch>\0<args>`, holding its record and everything
//! the fleet keeps of it (version, lease, backoff, remembered error, invalidation): one key,
//! so one hash slot on a Cluster, and every script that changes an item touches only it.
//! The job's epoch is part of the key, so that a DeleteJob makes every item of the job
//! unreachable at once (Redis expiry then frees them at their cache_ttl).

use crate::model::{ItemKey, JobName};

/// Every item's key starts so.
const ITEM: &[u8] = b"cb:i:";
/// Job name → its config record (the sled store's format).
pub(crate) const JOBS: &str = "cb:jobs";
/// Job name → its epoch, a random u64 given at its first registration after a delete.
pub(crate) const EPOCHS: &str = "cb:epochs";
/// Job name → its InvalidateJob mark, µs since the epoch.
pub(crate) const JOB_MARKS: &str = "cb:marks:job";
/// Tag → its InvalidateTags mark, µs since the epoch.
pub(crate) const TAG_MARKS: &str = "cb:marks:tag";
/// The channel every daemon of the fleet hears every change on.
pub(crate) const EVENTS: &str = "cb:events";

/// The hash fields of an item.
pub(crate) mod field {
    /// The item's record (`store::Item` encoded), absent while only a lease or a backoff
    /// is kept.
    pub(crate) const RECORD: &str = "r";
    /// Bumped by every write (Set, Delete, a stored fetch): a fetch stores only over the
    /// version it started from.
    pub(crate) const VERSION: &str = "v";
    /// Invalidated at (µs): the record reads stale from then on.
    pub(crate) const INVALIDATED: &str = "x";
    // "g", bumped by every Invalidate (a fetch that sees it moved stores stale, and a
    // refresh follows), is read and written by the scripts alone.
    /// The lease's token, and until when it holds (ms).
    pub(crate) const LEASE: &str = "l";
    pub(crate) const LEASE_UNTIL: &str = "lu";
    /// Failures in a row, and until when background fetches are held back (ms).
    pub(crate) const FAILURES: &str = "bn";
    pub(crate) const BACKOFF_UNTIL: &str = "bu";
    /// The last failure's message (what a daemon that joined a fetch answers).
    pub(crate) const LAST_ERROR: &str = "m";
    /// The failure of a missing item remembered for `error_ttl`, until (ms).
    pub(crate) const REMEMBERED_UNTIL: &str = "eu";
}

/// The Redis key of an item of `job` in its `epoch`.
pub(crate) fn item(key: &ItemKey, epoch: u64) -> Vec<u8> {
    let epoch = epoch.to_string();
    let job = key.job_bytes();
    let mut out = Vec::with_capacity(ITEM.len() + key.as_bytes().len() + epoch.len() + 1);
    out.extend_from_slice(ITEM);
    out.extend_from_slice(job);
    out.push(0);
    out.extend_from_slice(epoch.as_bytes());
    out.push(0);
    out.extend_from_slice(key.args());
    out
}

/// The item and epoch a Redis item key names, if it is one.
pub(crate) fn parse_item(redis_key: &[u8]) -> Option<(ItemKey, u64)> {
    let rest = redis_key.strip_prefix(ITEM)?;
    let job_end = rest.iter().position(|&b| b == 0)?;
    let job = JobName::from_stored(std::str::from_utf8(&rest[..job_end]).ok()?.to_owned());
    let rest = &rest[job_end + 1..];
    let epoch_end = rest.iter().position(|&b| b == 0)?;
    let epoch = std::str::from_utf8(&rest[..epoch_end]).ok()?.parse().ok()?;
    Some((ItemKey::new(&job, &rest[epoch_end + 1..]), epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_keys_round_trip_whatever_the_args_hold() {
        let job = JobName::from_stored("tweets.user".into());
        for args in [&b""[..], b"[1]", b"{a}\0}{", &[0, 255, 0]] {
            let key = ItemKey::new(&job, args);
            let redis = item(&key, 42);
            assert_eq!(parse_item(&redis), Some((key, 42)));
        }
        assert_eq!(parse_item(b"cb:jobs"), None);
    }
}
