//! The daemon's event counters: what the engine counts as it works. A leaf: it knows
//! nothing of the engine, so the engine can use it and the exporter (`metrics`) can read
//! both without the two importing each other.
//!
//! The Get-hit path must cost next to nothing, so nothing there looks up or hashes a label
//! set: each job's counters are resolved once, when the job becomes known, into a
//! [`JobMetrics`] kept next to its config, and a Get only increments an atomic.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::model::JobName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct JobLabels {
    pub(crate) job: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Outcome {
    fresh,
    stale,
    miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GetLabels {
    job: String,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum FetchResult {
    succeeded,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    job: String,
    result: FetchResult,
}

type HistogramFamily = Family<JobLabels, Histogram, fn() -> Histogram>;

fn fetch_histogram() -> Histogram {
    // 1 ms to about 65 s: the default refresh_timeout is 60 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The daemon's event counters, by job. A cheap-to-clone handle.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    started: Instant,
    started_wall: SystemTime,
    gets: Family<GetLabels, Counter>,
    sync_fetches: Family<JobLabels, Counter>,
    refreshes_scheduled: Family<JobLabels, Counter>,
    fetches: Family<FetchLabels, Counter>,
    fetches_retried: Family<JobLabels, Counter>,
    fetch_duration: HistogramFamily,
    fetches_in_flight: Family<JobLabels, Gauge>,
    early_refreshes: Family<JobLabels, Counter>,
    gets_absent: Family<JobLabels, Counter>,
    not_modified: Family<JobLabels, Counter>,
    fetch_batch_size: HistogramFamily,
    tag_invalidations: Counter,
}

fn batch_histogram() -> Histogram {
    // 1 to 1024 fetches per message.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One job's counters, resolved once: every update is a single atomic operation.
#[derive(Debug, Clone)]
pub(crate) struct JobMetrics {
    /// Gets that found the item fresh.
    pub gets_fresh: Counter,
    /// Gets that found the item stale.
    pub gets_stale: Counter,
    /// Gets that found no item.
    pub gets_miss: Counter,
    /// Fetches started for a Get that waits for them.
    pub sync_fetches: Counter,
    /// Background fetches started (stale hit, asynchronous miss, Invalidate).
    pub refreshes_scheduled: Counter,
    /// Fetches a worker answered with data.
    pub fetches_succeeded: Counter,
    /// Fetches that failed (worker error, timeout, no worker).
    pub fetches_failed: Counter,
    /// Fetches started for an item whose previous fetch failed.
    pub fetches_retried: Counter,
    /// How long fetches took, queueing included.
    pub fetch_duration: Histogram,
    /// Fetches running now.
    pub fetches_in_flight: Gauge,
    /// Refreshes XFetch started on a fresh hit (reason EARLY).
    pub early_refreshes: Counter,
    /// Gets answered with a stored absence (`absent = true`).
    pub gets_absent: Counter,
    /// Fetches a worker answered NotModified (counted as succeeded too).
    pub not_modified: Counter,
    /// Fetches per message sent to a worker of the job (1 without batching).
    pub fetch_batch_size: Histogram,
}

impl JobMetrics {
    /// Counts a Get by what it found.
    pub(crate) fn count_get(&self, found: Found) {
        match found {
            Found::Fresh => self.gets_fresh.inc(),
            Found::Stale => self.gets_stale.inc(),
            Found::Miss => self.gets_miss.inc(),
        };
    }
}

/// What a Get found in the cache (not what it answered: a miss fetched synchronously
/// answers FRESH, and counts as a miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// Within its lifetime.
    Fresh,
    /// Past its lifetime.
    Stale,
    /// Absent or past cache_ttl.
    Miss,
}

impl Metrics {
    /// Empty counters; uptime counts from now.
    pub(crate) fn new() -> Metrics {
        Metrics {
            inner: Arc::new(Families {
                started: Instant::now(),
                started_wall: SystemTime::now(),
                gets: Family::default(),
                sync_fetches: Family::default(),
                refreshes_scheduled: Family::default(),
                fetches: Family::default(),
                fetches_retried: Family::default(),
                fetch_duration: Family::new_with_constructor(fetch_histogram),
                fetches_in_flight: Family::default(),
                early_refreshes: Family::default(),
                gets_absent: Family::default(),
                not_modified: Family::default(),
                fetch_batch_size: Family::new_with_constructor(batch_histogram),
                tag_invalidations: Counter::default(),
            }),
        }
    }

    /// When the daemon started.
    pub(crate) fn started_at(&self) -> SystemTime {
        self.inner.started_wall
    }

    /// How long the daemon has run.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The counters of `job`, created if new. Call once per job, not per request.
    pub(crate) fn job(&self, job: &JobName) -> Arc<JobMetrics> {
        let f = &self.inner;
        let job = || JobLabels {
            job: job.to_string(),
        };
        let get = |outcome| {
            f.gets.get_or_create_owned(&GetLabels {
                job: job().job,
                outcome,
            })
        };
        let fetch = |result| {
            f.fetches.get_or_create_owned(&FetchLabels {
                job: job().job,
                result,
            })
        };
        Arc::new(JobMetrics {
            gets_fresh: get(Outcome::fresh),
            gets_stale: get(Outcome::stale),
            gets_miss: get(Outcome::miss),
            sync_fetches: f.sync_fetches.get_or_create_owned(&job()),
            refreshes_scheduled: f.refreshes_scheduled.get_or_create_owned(&job()),
            fetches_succeeded: fetch(FetchResult::succeeded),
            fetches_failed: fetch(FetchResult::failed),
            fetches_retried: f.fetches_retried.get_or_create_owned(&job()),
            fetch_duration: f.fetch_duration.get_or_create_owned(&job()),
            fetches_in_flight: f.fetches_in_flight.get_or_create_owned(&job()),
            early_refreshes: f.early_refreshes.get_or_create_owned(&job()),
            gets_absent: f.gets_absent.get_or_create_owned(&job()),
            not_modified: f.not_modified.get_or_create_owned(&job()),
            fetch_batch_size: f.fetch_batch_size.get_or_create_owned(&job()),
        })
    }

    /// Counts the tags one InvalidateTags marked.
    pub(crate) fn count_tag_invalidations(&self, tags: usize) {
        self.inner.tag_invalidations.inc_by(tags as u64);
    }

    /// Drops the series of a job that was deleted.
    pub(crate) fn forget_job(&self, job: &JobName) {
        let f = &self.inner;
        let labels = JobLabels {
            job: job.to_string(),
        };
        for outcome in [Outcome::fresh, Outcome::stale, Outcome::miss] {
            f.gets.remove(&GetLabels {
                job: labels.job.clone(),
                outcome,
            });
        }
        for result in [FetchResult::succeeded, FetchResult::failed] {
            f.fetches.remove(&FetchLabels {
                job: labels.job.clone(),
                result,
            });
        }
        f.sync_fetches.remove(&labels);
        f.refreshes_scheduled.remove(&labels);
        f.fetches_retried.remove(&labels);
        f.fetch_duration.remove(&labels);
        f.fetches_in_flight.remove(&labels);
        f.early_refreshes.remove(&labels);
        f.gets_absent.remove(&labels);
        f.not_modified.remove(&labels);
        f.fetch_batch_size.remove(&labels);
    }

    /// Registers every event counter in `r` (the exporter's registry).
    pub(crate) fn register(&self, r: &mut Registry) {
        let f = &self.inner;
        r.register(
            "gets",
            "Gets by what they found: fresh, stale or miss (a miss fetched synchronously counts as a miss)",
            f.gets.clone(),
        );
        r.register(
            "sync_fetches",
            "Fetches started for a Get that waits for them (a miss, or stale past fetch_on_stale_threshold)",
            f.sync_fetches.clone(),
        );
        r.register(
            "refreshes_scheduled",
            "Background fetches started (stale hit, asynchronous miss, Invalidate)",
            f.refreshes_scheduled.clone(),
        );
        r.register(
            "fetches",
            "Fetches finished, synchronous or background, by result",
            f.fetches.clone(),
        );
        r.register(
            "fetches_retried",
            "Fetches started for an item whose previous fetch failed",
            f.fetches_retried.clone(),
        );
        r.register_with_unit(
            "fetch_duration",
            "How long fetches took, waiting for a free worker included",
            Unit::Seconds,
            f.fetch_duration.clone(),
        );
        r.register(
            "fetches_in_flight",
            "Fetches running now",
            f.fetches_in_flight.clone(),
        );
        r.register(
            "early_refreshes",
            "Refreshes started ahead of expiry on a fresh hit (early_refresh_beta, reason EARLY)",
            f.early_refreshes.clone(),
        );
        r.register(
            "gets_absent",
            "Gets answered with a stored absence (FetchedAbsent: absent = true)",
            f.gets_absent.clone(),
        );
        r.register(
            "not_modified",
            "Fetches a worker answered NotModified (the stored data confirmed, not resent)",
            f.not_modified.clone(),
        );
        r.register(
            "fetch_batch_size",
            "Fetches per message sent to a worker (FetchBatch when max_batch > 1)",
            f.fetch_batch_size.clone(),
        );
        r.register(
            "tag_invalidations",
            "Tags marked by InvalidateTags",
            f.tag_invalidations.clone(),
        );
    }
}
