//! The staleness policy, written down in one place: what a Get does with what it finds.
//! Plain synchronous functions over plain data, so every rule is unit-tested with `now`
//! (and XFetch's random draw) passed in rather than slept for or rolled.
//!
//! The rules (PROTOCOL.md, "Semantics" and "Additions"):
//! - An item is FRESH until `expires_at`, STALE after it, and gone (a MISS) once it is
//!   `cache_ttl` old, counted from `stored_at`.
//! - A miss fetches synchronously when `fetch_on_miss` (request override, else the job's)
//!   holds; otherwise it answers MISS and schedules one asynchronous fetch. With `error_ttl`
//!   set, a synchronous miss whose last fetch failed within it answers that failure at once.
//! - A stale hit serves the stale data and schedules one asynchronous refresh, unless the
//!   item is older (age since `stored_at`, as django-cacheback counts it) than
//!   `fetch_on_stale_threshold`: then it fetches synchronously, and falls back to the stale
//!   data if that fetch fails.
//! - A Get's `max_age` bounds the age of any hit, fresh or stale, the same way; with the
//!   threshold, the smaller bound wins.
//! - A fresh hit starts nothing, except XFetch's early refresh (`early_refresh_beta`): one
//!   asynchronous refresh with a probability that grows as expiry nears, so that a hot item
//!   is refreshed before it turns stale.
//! - At most one fetch per item is in flight: a Get that finds one joins it (waiting only if
//!   it would itself have fetched synchronously).
//! - Backoff holds back asynchronous fetches only, never synchronous ones.
//! - Invalidation marks (a job's, a tag's) make every item stored at or before them stale
//!   from that instant, applied as the item is read.

use std::time::{Duration, SystemTime};

use crate::model::{Beta, FetchReason, ItemState, JobConfig};

/// What the store says about an item's age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    /// When the data was fetched or set (or last confirmed by a NotModified).
    pub stored_at: SystemTime,
    /// When it stops being fresh.
    pub expires_at: SystemTime,
}

/// What a Get knows of a stored item: its times, marks applied, and how long the fetch
/// that stored it took (XFetch's `delta`; zero for a Set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its times, every invalidation mark applied.
    pub times: Times,
    /// How long the fetch that stored it took.
    pub fetch_took: Duration,
}

/// An item's freshness at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Within its lifetime.
    Fresh,
    /// Past its lifetime, within `cache_ttl`.
    Stale,
    /// Not stored, or past `cache_ttl`.
    Absent,
}

/// Classifies an item (or its absence) at `now`.
pub(crate) fn freshness(times: Option<Times>, config: &JobConfig, now: SystemTime) -> Freshness {
    let Some(t) = times else {
        return Freshness::Absent;
    };
    if is_past_ttl(t.stored_at, config, now) {
        Freshness::Absent
    } else if now < t.expires_at {
        Freshness::Fresh
    } else {
        Freshness::Stale
    }
}

/// How old an item is at `now`: the time since it was stored (zero if the clock stepped
/// back past it).
pub(crate) fn age(times: Times, now: SystemTime) -> Duration {
    now.duration_since(times.stored_at).unwrap_or_default()
}

/// Whether an item stored at `stored_at` is past the job's hard `cache_ttl` at `now`.
pub(crate) fn is_past_ttl(stored_at: SystemTime, config: &JobConfig, now: SystemTime) -> bool {
    match now.duration_since(stored_at) {
        Ok(age) => age >= config.cache_ttl,
        Err(_) => false,
    }
}

/// An item's times once invalidation `marks` apply (a job's `InvalidateJob`, the marks of
/// its tags' `InvalidateTags`): an item stored at or before a mark is stale from that
/// instant on at the latest; a mark older than the item does not touch it. Applied as
/// items are read, so an invalidation writes one record however many items it covers,
/// and each item refreshes on its next Get (no stampede).
pub(crate) fn after_marks(times: Times, marks: impl IntoIterator<Item = SystemTime>) -> Times {
    let expires_at = marks
        .into_iter()
        .filter(|&mark| times.stored_at <= mark)
        .fold(times.expires_at, SystemTime::min);
    Times {
        stored_at: times.stored_at,
        expires_at,
    }
}

/// [`after_marks`] with a job's one mark.
pub(crate) fn after_job_invalidation(
    times: Times,
    invalidated_before: Option<SystemTime>,
) -> Times {
    after_marks(times, invalidated_before)
}

/// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): whether a Get at `now` that finds
/// a fresh item starts one early refresh, namely when
/// `now - fetch_took * beta * ln(u) >= expires_at`. `u` is the Get's uniform draw in
/// (0, 1] (passed in, so tests are exact). The longer the last fetch took and the nearer
/// expiry, the likelier; an item stored by a Set (`fetch_took` zero) is never refreshed
/// early, nor is any item of a job without a beta.
pub(crate) fn early_refresh(seen: Seen, beta: Option<Beta>, now: SystemTime, u: f64) -> bool {
    let Some(beta) = beta else {
        return false;
    };
    let Ok(left) = seen.times.expires_at.duration_since(now) else {
        // At or past expiry: stale, not early.
        return false;
    };
    let ahead = seen.fetch_took.as_secs_f64() * beta.get() * -u.clamp(f64::MIN_POSITIVE, 1.0).ln();
    ahead >= left.as_secs_f64()
}

/// The times of an item a worker confirmed as unchanged (`NotModified`) at `now`: the
/// origin vouched for it now, so it is as young as a fresh fetch. `None` when nothing is
/// stored any more: then there is nothing to confirm, and the answer is a failed fetch.
pub(crate) fn not_modified(
    stored: Option<Times>,
    now: SystemTime,
    lifetime: Duration,
) -> Option<Times> {
    stored.map(|_| times_for_new(now, lifetime))
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
    /// Nothing to refresh.
    None,
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
    /// Serve the fresh data, refreshing early as `Refresh` says (usually: nothing).
    ServeFresh(Refresh),
    /// Serve the stale data, refreshing as `Refresh` says.
    ServeStale(Refresh),
    /// Answer MISS at once, filling as `Refresh` says.
    AnswerMiss(Refresh),
    /// Wait for a fetch: join the one in flight or start one. If it fails and there is
    /// data to fall back on, serve that (in the state it is in) instead of an error.
    FetchSync {
        /// Reason given to the worker if a fetch is started.
        reason: FetchReason,
        /// The state of the data to fall back on (FRESH or STALE), if there is any.
        fallback: Option<ItemState>,
    },
    /// A missing item whose last fetch failed within `error_ttl`: answer that failure at
    /// once, starting nothing.
    FailRemembered,
}

/// What else a Get must know besides the item: the request and the flight table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GetContext {
    /// `GetRequest.fetch_on_miss`, if the caller set it.
    pub fetch_on_miss_override: Option<bool>,
    /// `GetRequest.max_age`, if the caller set it.
    pub max_age: Option<Duration>,
    /// A fetch of this item is in flight.
    pub in_flight: bool,
    /// Asynchronous fetches of this item are held back: backoff after a failed fetch is
    /// still running, or the job's wait queue is full.
    pub backed_off: bool,
    /// A fetch of this (missing) item failed within the job's `error_ttl`.
    pub error_remembered: bool,
}

/// Decides what a Get at `now` does with what it found; `u` is its XFetch draw in (0, 1].
pub(crate) fn plan_get(
    seen: Option<Seen>,
    config: &JobConfig,
    ctx: GetContext,
    now: SystemTime,
    u: f64,
) -> GetPlan {
    let refresh = |reason| {
        if ctx.in_flight {
            Refresh::InFlight
        } else if ctx.backed_off {
            Refresh::HeldBack
        } else {
            Refresh::Start(reason)
        }
    };
    let too_old = |seen: Seen, bound: Option<Duration>| {
        bound.is_some_and(|bound| age(seen.times, now) > bound)
    };
    let sync_refresh = |fallback| GetPlan::FetchSync {
        reason: FetchReason::Stale,
        fallback: Some(fallback),
    };
    match (freshness(seen.map(|s| s.times), config, now), seen) {
        (Freshness::Fresh, Some(seen)) => {
            if too_old(seen, ctx.max_age) {
                sync_refresh(ItemState::Fresh)
            } else if early_refresh(seen, config.early_refresh_beta, now, u) {
                GetPlan::ServeFresh(refresh(FetchReason::Early))
            } else {
                GetPlan::ServeFresh(Refresh::None)
            }
        }
        (Freshness::Stale, Some(seen)) => {
            let bound = match (config.fetch_on_stale_threshold, ctx.max_age) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if too_old(seen, bound) {
                sync_refresh(ItemState::Stale)
            } else {
                GetPlan::ServeStale(refresh(FetchReason::Stale))
            }
        }
        _ => {
            if !ctx.fetch_on_miss_override.unwrap_or(config.fetch_on_miss) {
                GetPlan::AnswerMiss(refresh(FetchReason::Miss))
            } else if ctx.error_remembered && !ctx.in_flight {
                GetPlan::FailRemembered
            } else {
                GetPlan::FetchSync {
                    reason: FetchReason::Miss,
                    fallback: None,
                }
            }
        }
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

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn cfg() -> JobConfig {
        JobConfig {
            lifetime: secs(10),
            refresh_timeout: secs(8),
            cache_ttl: secs(100),
            ..JobConfig::default()
        }
    }

    /// An item stored at `s` for `lifetime` seconds by a fetch that took `took` seconds.
    fn item(s: u64, lifetime: u64, took: u64) -> Option<Seen> {
        Some(Seen {
            times: times_for_new(at(s), secs(lifetime)),
            fetch_took: secs(took),
        })
    }

    fn stored(s: u64, lifetime: u64) -> Option<Times> {
        item(s, lifetime, 0).map(|i| i.times)
    }

    const IDLE: GetContext = GetContext {
        fetch_on_miss_override: None,
        max_age: None,
        in_flight: false,
        backed_off: false,
        error_remembered: false,
    };

    /// A Get at `now` with a draw of 1 (XFetch never fires).
    fn plan(seen: Option<Seen>, c: &JobConfig, ctx: GetContext, now: u64) -> GetPlan {
        plan_get(seen, c, ctx, at(now), 1.0)
    }

    #[test]
    fn item_is_fresh_until_expiry_then_stale_then_gone_at_cache_ttl() {
        let c = cfg();
        assert_eq!(freshness(stored(0, 10), &c, at(9)), Freshness::Fresh);
        assert_eq!(freshness(stored(0, 10), &c, at(10)), Freshness::Stale);
        assert_eq!(freshness(stored(0, 10), &c, at(99)), Freshness::Stale);
        assert_eq!(freshness(stored(0, 10), &c, at(100)), Freshness::Absent);
        assert_eq!(freshness(None, &c, at(0)), Freshness::Absent);
    }

    #[test]
    fn clock_stepping_back_keeps_item_fresh() {
        assert_eq!(freshness(stored(50, 10), &cfg(), at(10)), Freshness::Fresh);
        assert_eq!(age(times_for_new(at(50), secs(10)), at(10)), Duration::ZERO);
    }

    #[test]
    fn fresh_hit_starts_nothing() {
        assert_eq!(
            plan(item(0, 10, 3), &cfg(), IDLE, 5),
            GetPlan::ServeFresh(Refresh::None)
        );
    }

    #[test]
    fn miss_fetches_synchronously_by_default() {
        assert_eq!(
            plan(None, &cfg(), IDLE, 0),
            GetPlan::FetchSync {
                reason: FetchReason::Miss,
                fallback: None
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
            plan(None, &c, IDLE, 0),
            GetPlan::AnswerMiss(Refresh::Start(FetchReason::Miss))
        );
        let in_flight = GetContext {
            in_flight: true,
            ..IDLE
        };
        assert_eq!(
            plan(None, &c, in_flight, 0),
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
            plan(None, &cfg(), ctx, 0),
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
        assert!(matches!(plan(None, &c, ctx, 0), GetPlan::FetchSync { .. }));
    }

    #[test]
    fn stale_hit_serves_old_data_and_refreshes_once() {
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), IDLE, 15),
            GetPlan::ServeStale(Refresh::Start(FetchReason::Stale))
        );
        let in_flight = GetContext {
            in_flight: true,
            ..IDLE
        };
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), in_flight, 15),
            GetPlan::ServeStale(Refresh::InFlight)
        );
    }

    #[test]
    fn stale_item_older_than_threshold_since_stored_at_fetches_synchronously() {
        // Lifetime 10 s, threshold 30 s: counted from stored_at, not from expiry.
        let c = JobConfig {
            fetch_on_stale_threshold: Some(secs(30)),
            ..cfg()
        };
        assert_eq!(
            plan(item(0, 10, 1), &c, IDLE, 30),
            GetPlan::ServeStale(Refresh::Start(FetchReason::Stale)),
            "exactly the threshold old is not older than it"
        );
        let backed_off = GetContext {
            backed_off: true,
            ..IDLE
        };
        assert_eq!(
            plan(item(0, 10, 1), &c, backed_off, 31),
            GetPlan::FetchSync {
                reason: FetchReason::Stale,
                fallback: Some(ItemState::Stale)
            }
        );
        // A threshold shorter than the lifetime: every stale hit is past it.
        let short = JobConfig {
            fetch_on_stale_threshold: Some(secs(5)),
            ..cfg()
        };
        assert!(matches!(
            plan(item(0, 10, 1), &short, IDLE, 10),
            GetPlan::FetchSync { .. }
        ));
        // It never applies to a fresh item.
        assert_eq!(
            plan(item(0, 10, 1), &short, IDLE, 9),
            GetPlan::ServeFresh(Refresh::None)
        );
    }

    #[test]
    fn max_age_fetches_an_older_fresh_or_stale_item_synchronously() {
        let ctx = GetContext {
            max_age: Some(secs(4)),
            ..IDLE
        };
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), ctx, 4),
            GetPlan::ServeFresh(Refresh::None)
        );
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), ctx, 5),
            GetPlan::FetchSync {
                reason: FetchReason::Stale,
                fallback: Some(ItemState::Fresh)
            }
        );
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), ctx, 12),
            GetPlan::FetchSync {
                reason: FetchReason::Stale,
                fallback: Some(ItemState::Stale)
            }
        );
        // A miss ignores it.
        assert_eq!(
            plan(None, &cfg(), ctx, 0),
            GetPlan::FetchSync {
                reason: FetchReason::Miss,
                fallback: None
            }
        );
    }

    #[test]
    fn max_age_and_threshold_the_smaller_bound_wins() {
        let c = JobConfig {
            fetch_on_stale_threshold: Some(secs(30)),
            ..cfg()
        };
        let loose = GetContext {
            max_age: Some(secs(50)),
            ..IDLE
        };
        let tight = GetContext {
            max_age: Some(secs(20)),
            ..IDLE
        };
        // 25 s old: within the threshold and the loose max_age, past the tight one.
        assert_eq!(
            plan(item(0, 10, 1), &c, loose, 25),
            GetPlan::ServeStale(Refresh::Start(FetchReason::Stale))
        );
        assert!(matches!(
            plan(item(0, 10, 1), &c, tight, 25),
            GetPlan::FetchSync { .. }
        ));
        // 35 s old: past the threshold, within the loose max_age: the threshold wins.
        assert!(matches!(
            plan(item(0, 10, 1), &c, loose, 35),
            GetPlan::FetchSync { .. }
        ));
    }

    #[test]
    fn backoff_gates_async_refreshes_only() {
        let ctx = GetContext {
            backed_off: true,
            ..IDLE
        };
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), ctx, 11),
            GetPlan::ServeStale(Refresh::HeldBack)
        );
        assert!(!Refresh::HeldBack.scheduled());
        assert!(matches!(
            plan(None, &cfg(), ctx, 0),
            GetPlan::FetchSync { .. }
        ));
    }

    #[test]
    fn xfetch_fires_exactly_when_now_minus_delta_beta_ln_u_reaches_expiry() {
        let beta = |b| Some(Beta::new(b).unwrap());
        // Stored at 0 for 10 s by a 2 s fetch; at 8 s, 2 s are left.
        let seen = item(0, 10, 2).unwrap();
        let e = std::f64::consts::E;
        // -ln(u) = 1: ahead = 2 * beta.
        assert!(early_refresh(seen, beta(1.0), at(8), 1.0 / e));
        assert!(!early_refresh(seen, beta(0.9), at(8), 1.0 / e));
        // -ln(u) = 2 at beta 0.5 is the same 2 s ahead.
        assert!(early_refresh(seen, beta(0.5), at(8), 1.0 / (e * e)));
        // u = 1: ln(u) = 0, never early.
        assert!(!early_refresh(seen, beta(100.0), at(9), 1.0));
        // Off without a beta, and for an item a Set stored (no fetch duration).
        assert!(!early_refresh(seen, None, at(9), 1e-9));
        let set = item(0, 10, 0).unwrap();
        assert!(!early_refresh(set, beta(100.0), at(9), 1e-9));
        // A draw of 0 (outside the range) counts as the smallest positive one.
        assert!(early_refresh(seen, beta(1.0), at(1), 0.0));
    }

    #[test]
    fn early_refresh_serves_fresh_and_starts_one_reason_early_refresh() {
        let c = JobConfig {
            early_refresh_beta: Some(Beta::new(1.0).unwrap()),
            ..cfg()
        };
        let u = 1.0 / std::f64::consts::E; // ahead = delta = 2 s
        assert_eq!(
            plan_get(item(0, 10, 2), &c, IDLE, at(7), u),
            GetPlan::ServeFresh(Refresh::None)
        );
        assert_eq!(
            plan_get(item(0, 10, 2), &c, IDLE, at(8), u),
            GetPlan::ServeFresh(Refresh::Start(FetchReason::Early))
        );
        let in_flight = GetContext {
            in_flight: true,
            ..IDLE
        };
        assert_eq!(
            plan_get(item(0, 10, 2), &c, in_flight, at(8), u),
            GetPlan::ServeFresh(Refresh::InFlight)
        );
        let backed_off = GetContext {
            backed_off: true,
            ..IDLE
        };
        assert_eq!(
            plan_get(item(0, 10, 2), &c, backed_off, at(8), u),
            GetPlan::ServeFresh(Refresh::HeldBack)
        );
    }

    #[test]
    fn beta_must_be_positive_and_finite() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(Beta::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Beta::new(1.5).unwrap().get(), 1.5);
    }

    #[test]
    fn remembered_error_fails_a_sync_miss_at_once_and_nothing_else() {
        let ctx = GetContext {
            error_remembered: true,
            ..IDLE
        };
        assert_eq!(plan(None, &cfg(), ctx, 0), GetPlan::FailRemembered);
        // A fetch in flight is joined rather than refused.
        let joined = GetContext {
            in_flight: true,
            ..ctx
        };
        assert!(matches!(
            plan(None, &cfg(), joined, 0),
            GetPlan::FetchSync { .. }
        ));
        // Stale items are served; async misses answer MISS.
        assert_eq!(
            plan(item(0, 10, 1), &cfg(), ctx, 11),
            GetPlan::ServeStale(Refresh::Start(FetchReason::Stale))
        );
        let lazy = GetContext {
            fetch_on_miss_override: Some(false),
            ..ctx
        };
        assert!(matches!(
            plan(None, &cfg(), lazy, 0),
            GetPlan::AnswerMiss(_)
        ));
    }

    #[test]
    fn not_modified_makes_the_item_as_young_as_a_fresh_fetch() {
        let old = times_for_new(at(0), secs(10));
        assert_eq!(
            not_modified(Some(old), at(50), secs(20)),
            Some(Times {
                stored_at: at(50),
                expires_at: at(70)
            })
        );
        assert_eq!(not_modified(None, at(50), secs(20)), None);
    }

    #[test]
    fn job_invalidation_makes_older_items_stale_and_spares_newer_ones() {
        let old = times_for_new(at(0), secs(10));
        let new = times_for_new(at(6), secs(10));
        let mark = Some(at(5));
        assert_eq!(after_job_invalidation(old, mark).expires_at, at(5));
        assert_eq!(
            freshness(Some(after_job_invalidation(old, mark)), &cfg(), at(7)),
            Freshness::Stale
        );
        assert_eq!(after_job_invalidation(new, mark), new);
        assert_eq!(after_job_invalidation(old, None), old);
        // An item stale already keeps its staleness.
        let stale = times_for_new(at(0), secs(1));
        assert_eq!(after_job_invalidation(stale, mark), stale);
    }

    #[test]
    fn tag_marks_apply_the_earliest_mark_at_or_after_the_item() {
        let item = times_for_new(at(10), secs(100));
        // Marks before the item are ignored; of the rest the earliest wins.
        let marks = [at(5), at(40), at(20)];
        assert_eq!(after_marks(item, marks).expires_at, at(20));
        assert_eq!(after_marks(item, [at(9)]), item);
        // A mark at the very instant of storing covers the item.
        assert_eq!(after_marks(item, [at(10)]).expires_at, at(10));
        assert_eq!(after_marks(item, []), item);
    }

    #[test]
    fn backoff_doubles_from_base_up_to_refresh_timeout_with_jitter() {
        let base = secs(1);
        let cap = secs(8);
        let full: Vec<_> = (1..=6).map(|n| backoff_delay(n, base, cap, 1.0)).collect();
        let s: Vec<u64> = full.iter().map(Duration::as_secs).collect();
        assert_eq!(s, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(backoff_delay(3, base, cap, 0.5), secs(2));
        assert_eq!(backoff_delay(3, base, cap, 0.0), secs(2));
        assert_eq!(backoff_delay(u32::MAX, base, cap, 1.0), cap);
    }
}
