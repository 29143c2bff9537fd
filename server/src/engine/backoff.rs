//! Backoff after failed fetches: an item whose fetch failed is not fetched again in the
//! background until its delay (`policy::backoff_delay`, doubling from `retry_base` up to
//! the job's refresh_timeout, with jitter) runs out. Kept per item in its shard of the
//! single-flight table, as is the failure of a missing item remembered for the job's
//! `error_ttl` (synchronous Gets of it answer that failure at once meanwhile).

use std::time::Duration;

use tokio::time::Instant;

use super::flights::Table;
use super::Engine;
use crate::error::Error;
use crate::model::ItemKey;
use crate::policy;

/// An item's failures in a row, and until when it is left alone.
pub(super) struct Backoff {
    pub(super) failures: u32,
    pub(super) until: Instant,
}

/// A failed fetch of a missing item, answered again until `until` (`error_ttl`).
pub(super) struct Remembered {
    pub(super) error: Error,
    pub(super) until: Instant,
}

impl Table {
    /// The failure remembered for `key`, if its `error_ttl` is still running.
    pub(super) fn remembered(&self, key: &ItemKey) -> Option<Error> {
        self.errors
            .get(key)
            .filter(|r| r.until > Instant::now())
            .map(|r| r.error.clone())
    }

    /// Remembers `error` as the answer for `key` for `ttl`.
    pub(super) fn remember_error(&mut self, key: &ItemKey, error: &Error, ttl: Duration) {
        let remembered = Remembered {
            error: error.clone(),
            until: Instant::now() + ttl,
        };
        self.errors.insert(key.clone(), remembered);
    }

    /// Whether `key` is backed off now.
    pub(super) fn backed_off(&self, key: &ItemKey) -> bool {
        self.backoff
            .get(key)
            .is_some_and(|b| b.until > Instant::now())
    }

    /// One more failure of `key`: its delay starts now.
    pub(super) fn record_failure(&mut self, key: &ItemKey, retry_base: Duration, cap: Duration) {
        let failures = self.backoff.get(key).map_or(0, |b| b.failures) + 1;
        let delay = policy::backoff_delay(failures, retry_base, cap, rand::random_range(0.5..=1.0));
        self.backoff.insert(
            key.clone(),
            Backoff {
                failures,
                until: Instant::now() + delay,
            },
        );
    }
}

impl Engine {
    /// Forgets the backoff of items whose delay ran out long ago: an item nobody reads is
    /// never retried, so its record would otherwise stay in memory for good.
    pub(super) fn prune_backoff(&self) {
        const KEEP: Duration = Duration::from_secs(600);
        let now = Instant::now();
        for table in self.inner.tables.iter() {
            let mut table = table.lock();
            table.backoff.retain(|_, b| b.until + KEEP > now);
            table.errors.retain(|_, r| r.until > now);
        }
    }
}
