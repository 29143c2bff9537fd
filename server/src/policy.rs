//! The staleness policy, written down in one place: what a Get does with what it finds.
//! Plain synchronous functions over plain data, so every rule is unit-tested with `now`
//! passed in rather than slept for.
//!
//! The rules (PROTOCOL.md, "Semantics"):
//! - An item is FRESH until `expires_at`, STALE after it, and gone (a MISS) once it is
//!   `cache_ttl` old, counted from `stored_at`.
//! - A miss fetches synchronously when `fetch_on_miss` (request override, else the job's)
//!   holds; otherwise it answers MISS and schedules one asynchronous fetch.
//! - A stale hit serves the stale data and schedules one asynchronous refresh, unless it has
//!   been stale (since `expires_at`) for longer than `fetch_on_stale_threshold`: then it
//!   fetches synchronously, and falls back to the stale data if that fetch fails.
//! - At most one fetch per item is in flight: a Get that finds one joins it (waiting only if
//!   it would itself have fetched synchronously).
//! - Backoff holds back asynchronous fetches only, never synchronous ones.

use std::time::{Duration, SystemTime};

use crate::model::{FetchReason, JobConfig};

/// What the store says about an item's age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    /// When the data was fetched or set.
    pub stored_at: SystemTime,
    /// When it stops being fresh.
    pub expires_at: SystemTime,
}

/// An item's freshness at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Within its lifetime.
    Fresh,
    /// Past its lifetime by `stale_for`.
    Stale {
        /// How long ago it expired.
        stale_for: Duration,
    },
    /// Not stored, or past `cache_ttl`.
    Absent,
}

/// Classifies an item (or its absence) at `now`.
pub(crate) fn freshness(times: Option<Times>, config: &JobConfig, now: SystemTime) -> Freshness {
    let Some(t) = times else {
        return Freshness::Absent;
    };
    if is_past_ttl(t.stored_at, config, now) {
        return Freshness::Absent;
    }
    if now < t.expires_at {
        Freshness::Fresh
    } else {
        Freshness::Stale {
            stale_for: now.duration_since(t.expires_at).unwrap_or_default(),
        }
    }
}

/// Whether an item stored at `stored_at` is past the job's hard `cache_ttl` at `now`.
pub(crate) fn is_past_ttl(stored_at: SystemTime, config: &JobConfig, now: SystemTime) -> bool {
    match now.duration_since(stored_at) {
        Ok(age) => age >= config.cache_ttl,
        Err(_) => false,
    }
}

/// An item's times once its whole job was invalidated at `invalidated_before`
/// (`CachebackAdmin.InvalidateJob`): an item stored then or earlier is stale from that
/// instant on at the latest; an item stored later is untouched. Applied as items are read,
/// so invalidating a job writes nothing per item and each item refreshes on its next Get.
pub(crate) fn after_job_invalidation(
    times: Times,
    invalidated_before: Option<SystemTime>,
) -> Times {
    match invalidated_before {
        Some(mark) if times.stored_at <= mark => Times {
            stored_at: times.stored_at,
            expires_at: times.expires_at.min(mark),
        },
        _ => times,
    }
}

/// What an asynchronous refresh does on this Get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// Start one now.
    Start(FetchReason),
    /// One is in flight already; nothing more starts.
    InFlight,
    /// Held back: backoff after a failure, or the job's wait queue is full.
    HeldBack,
}

impl Refresh {
    /// Whether the caller is told a refresh is scheduled (`GetResponse.refresh_scheduled`).
    pub(crate) fn scheduled(self) -> bool {
        matches!(self, Refresh::Start(_) | Refresh::InFlight)
    }
}

/// The plan for one Get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GetPlan {
    /// Serve the fresh data; start nothing.
    ServeFresh,
    /// Serve the stale data, refreshing as `Refresh` says.
    ServeStale(Refresh),
    /// Answer MISS at once, filling as `Refresh` says.
    AnswerMiss(Refresh),
    /// Wait for a fetch: join the one in flight or start one. If it fails and `stale` data
    /// exists, serve that instead of an error.
    FetchSync {
        /// Reason given to the worker if a fetch is started.
        reason: FetchReason,
        /// There is stale data to fall back on.
        stale_fallback: bool,
    },
}

/// What else a Get must know besides the item: the request and the flight table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GetContext {
    /// `GetRequest.fetch_on_miss`, if the caller set it.
    pub fetch_on_miss_override: Option<bool>,
    /// A fetch of this item is in flight.
    pub in_flight: bool,
    /// Asynchronous fetches of this item are held back: backoff after a failed fetch is
    /// still running, or the job's wait queue is full.
    pub backed_off: bool,
}

/// Decides what a Get does.
pub(crate) fn plan_get(freshness: Freshness, config: &JobConfig, ctx: GetContext) -> GetPlan {
    let refresh = |reason| {
        if ctx.in_flight {
            Refresh::InFlight
        } else if ctx.backed_off {
            Refresh::HeldBack
        } else {
            Refresh::Start(reason)
        }
    };
    match freshness {
        Freshness::Fresh => GetPlan::ServeFresh,
        Freshness::Absent => {
            if ctx.fetch_on_miss_override.unwrap_or(config.fetch_on_miss) {
                GetPlan::FetchSync {
                    reason: FetchReason::Miss,
                    stale_fallback: false,
                }
            } else {
                GetPlan::AnswerMiss(refresh(FetchReason::Miss))
            }
        }
        Freshness::Stale { stale_for } => match config.fetch_on_stale_threshold {
            Some(threshold) if stale_for > threshold => GetPlan::FetchSync {
                reason: FetchReason::Stale,
                stale_fallback: true,
            },
            _ => GetPlan::ServeStale(refresh(FetchReason::Stale)),
        },
    }
}

/// How long asynchronous refreshes of an item are held back after its `failures`-th
/// consecutive failure: `base` doubling per failure, capped at `cap` (the job's
/// `refresh_timeout`), then scaled by `jitter` in [0.5, 1.0] so that items that failed
/// together do not retry together.
pub(crate) fn backoff_delay(failures: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap.max(base));
    raw.mul_f64(jitter.clamp(0.5, 1.0))
}

/// The times of an item stored now with `lifetime`, to the microsecond: the precision of
/// the store, so that what a call answers is exactly what a later read finds.
pub(crate) fn times_for_new(now: SystemTime, lifetime: Duration) -> Times {
    let micros = |d: Duration| Duration::from_micros(d.as_micros().min(u64::MAX as u128) as u64);
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let stored_at = SystemTime::UNIX_EPOCH + micros(since_epoch);
    Times {
        stored_at,
        expires_at: stored_at + micros(lifetime),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn cfg() -> JobConfig {
        JobConfig {
            lifetime: Duration::from_secs(10),
            refresh_timeout: Duration::from_secs(8),
            fetch_on_miss: true,
            fetch_on_stale_threshold: None,
            cache_ttl: Duration::from_secs(100),
        }
    }

    fn stored(s: u64, lifetime: u64) -> Option<Times> {
        Some(times_for_new(at(s), Duration::from_secs(lifetime)))
    }

    const IDLE: GetContext = GetContext {
        fetch_on_miss_override: None,
        in_flight: false,
        backed_off: false,
    };

    #[test]
    fn item_is_fresh_until_expiry_then_stale_then_gone_at_cache_ttl() {
        let c = cfg();
        assert_eq!(freshness(stored(0, 10), &c, at(9)), Freshness::Fresh);
        assert_eq!(
            freshness(stored(0, 10), &c, at(10)),
            Freshness::Stale {
                stale_for: Duration::ZERO
            }
        );
        assert_eq!(
            freshness(stored(0, 10), &c, at(99)),
            Freshness::Stale {
                stale_for: Duration::from_secs(89)
            }
        );
        assert_eq!(freshness(stored(0, 10), &c, at(100)), Freshness::Absent);
        assert_eq!(freshness(None, &c, at(0)), Freshness::Absent);
    }

    #[test]
    fn clock_stepping_back_keeps_item_fresh() {
        assert_eq!(freshness(stored(50, 10), &cfg(), at(10)), Freshness::Fresh);
    }

    #[test]
    fn fresh_hit_starts_nothing() {
        assert_eq!(
            plan_get(Freshness::Fresh, &cfg(), IDLE),
            GetPlan::ServeFresh
        );
    }

    #[test]
    fn miss_fetches_synchronously_by_default() {
        assert_eq!(
            plan_get(Freshness::Absent, &cfg(), IDLE),
            GetPlan::FetchSync {
                reason: FetchReason::Miss,
                stale_fallback: false
            }
        );
    }

    #[test]
    fn async_miss_answers_miss_and_starts_one_fetch() {
        let c = JobConfig {
            fetch_on_miss: false,
            ..cfg()
        };
        assert_eq!(
            plan_get(Freshness::Absent, &c, IDLE),
            GetPlan::AnswerMiss(Refresh::Start(FetchReason::Miss))
        );
        let in_flight = GetContext {
            in_flight: true,
            ..IDLE
        };
        assert_eq!(
            plan_get(Freshness::Absent, &c, in_flight),
            GetPlan::AnswerMiss(Refresh::InFlight)
        );
    }

    #[test]
    fn request_override_beats_job_fetch_on_miss() {
        let ctx = GetContext {
            fetch_on_miss_override: Some(false),
            ..IDLE
        };
        assert_eq!(
            plan_get(Freshness::Absent, &cfg(), ctx),
            GetPlan::AnswerMiss(Refresh::Start(FetchReason::Miss))
        );
        let c = JobConfig {
            fetch_on_miss: false,
            ..cfg()
        };
        let ctx = GetContext {
            fetch_on_miss_override: Some(true),
            ..IDLE
        };
        assert!(matches!(
            plan_get(Freshness::Absent, &c, ctx),
            GetPlan::FetchSync { .. }
        ));
    }

    #[test]
    fn stale_hit_serves_old_data_and_refreshes_once() {
        let stale = Freshness::Stale {
            stale_for: Duration::from_secs(5),
        };
        assert_eq!(
            plan_get(stale, &cfg(), IDLE),
            GetPlan::ServeStale(Refresh::Start(FetchReason::Stale))
        );
        let in_flight = GetContext {
            in_flight: true,
            ..IDLE
        };
        assert_eq!(
            plan_get(stale, &cfg(), in_flight),
            GetPlan::ServeStale(Refresh::InFlight)
        );
    }

    #[test]
    fn stale_past_threshold_fetches_synchronously_with_stale_fallback() {
        let c = JobConfig {
            fetch_on_stale_threshold: Some(Duration::from_secs(5)),
            ..cfg()
        };
        let just = Freshness::Stale {
            stale_for: Duration::from_secs(5),
        };
        assert_eq!(
            plan_get(just, &c, IDLE),
            GetPlan::ServeStale(Refresh::Start(FetchReason::Stale))
        );
        let past = Freshness::Stale {
            stale_for: Duration::from_secs(6),
        };
        let backed_off = GetContext {
            backed_off: true,
            ..IDLE
        };
        assert_eq!(
            plan_get(past, &c, backed_off),
            GetPlan::FetchSync {
                reason: FetchReason::Stale,
                stale_fallback: true
            }
        );
    }

    #[test]
    fn backoff_gates_async_refreshes_only() {
        let ctx = GetContext {
            backed_off: true,
            ..IDLE
        };
        let stale = Freshness::Stale {
            stale_for: Duration::from_secs(1),
        };
        assert_eq!(
            plan_get(stale, &cfg(), ctx),
            GetPlan::ServeStale(Refresh::HeldBack)
        );
        assert!(!Refresh::HeldBack.scheduled());
        assert!(matches!(
            plan_get(Freshness::Absent, &cfg(), ctx),
            GetPlan::FetchSync { .. }
        ));
    }

    #[test]
    fn job_invalidation_makes_older_items_stale_and_spares_newer_ones() {
        let old = times_for_new(at(0), Duration::from_secs(10));
        let new = times_for_new(at(6), Duration::from_secs(10));
        let mark = Some(at(5));
        assert_eq!(
            freshness(Some(after_job_invalidation(old, mark)), &cfg(), at(7)),
            Freshness::Stale {
                stale_for: Duration::from_secs(2)
            }
        );
        assert_eq!(after_job_invalidation(new, mark), new);
        assert_eq!(after_job_invalidation(old, None), old);
        // An item stale already keeps its staleness.
        let stale = times_for_new(at(0), Duration::from_secs(1));
        assert_eq!(after_job_invalidation(stale, mark), stale);
    }

    #[test]
    fn backoff_doubles_from_base_up_to_refresh_timeout_with_jitter() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(8);
        let full: Vec<_> = (1..=6).map(|n| backoff_delay(n, base, cap, 1.0)).collect();
        let secs: Vec<u64> = full.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(backoff_delay(3, base, cap, 0.5), Duration::from_secs(2));
        assert_eq!(backoff_delay(3, base, cap, 0.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(u32::MAX, base, cap, 1.0), cap);
    }
}
