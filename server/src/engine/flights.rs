//! The single-flight table: at most one fetch per item, run by its own task (the
//! "driver") so that a caller who gives up never cancels a fetch others share. A flight is
//! finished under its shard's lock: its result is stored unless a write superseded it,
//! failures start a backoff (`backoff`), and an Invalidate that came in during the flight
//! starts one more.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::{Backoff, Remembered};
use super::Engine;
use crate::counters::JobMetrics;
use crate::error::Error;
use crate::logs::{clip, RateLimit};
use crate::model::{FetchReason, ItemKey, JobConfig, JobName, MAX_SPAN};
use crate::policy;
use crate::store::Item;
use crate::subscriptions::EventKind;
use crate::workers::Fetched;
use std::time::Duration;

/// How many shards the single-flight table has.
pub(super) const SHARDS: usize = 16;

/// One shard of the single-flight table: the fetches in flight and the items backed off.
#[derive(Default)]
pub(super) struct Table {
    pub(super) flights: HashMap<ItemKey, Flight>,
    pub(super) backoff: HashMap<ItemKey, Backoff>,
    /// Failed fetches of missing items, remembered for the job's `error_ttl`.
    pub(super) errors: HashMap<ItemKey, Remembered>,
}

/// How a flight starts: what its driver needs beyond the item and the job.
enum Start {
    /// On this daemon's store, sending this validator with a refresh.
    Here { validator: Arc<[u8]> },
    /// Through the fleet's lease, by a caller who saw the item at version `seen`.
    Fleet { seen: u64 },
}

/// A worker's answer, checked and timed, before it meets the store.
pub(super) enum Landed {
    /// An item to store (data or an absence).
    Item(Item),
    /// Extend the stored item (`NotModified`).
    NotModified {
        lifetime: Duration,
        fetch_took: Duration,
    },
}

/// What a flight ends with, shared by all its waiters.
pub(super) type FlightResult = Arc<Result<Item, Error>>;

/// One fetch in flight: its waiters watch `done`.
pub(super) struct Flight {
    pub(super) id: u64,
    pub(super) done: watch::Receiver<Option<FlightResult>>,
    /// A Set or Delete came in since it started: its result must not be stored.
    pub(super) superseded: bool,
    /// An Invalidate came in since it started: one more refresh follows it.
    pub(super) reinvalidate: bool,
    /// Why it was started (a failed MISS is what `error_ttl` remembers).
    pub(super) reason: FetchReason,
}

impl Table {
    /// A Set or Delete: a fetch in flight must not store over it, and backoff is over.
    pub(super) fn write_wins(&mut self, key: &ItemKey) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.superseded = true;
        }
        self.backoff.remove(key);
        self.errors.remove(key);
    }
}

impl Engine {
    /// The shard of the single-flight table that holds `key`.
    pub(super) fn shard(&self, key: &ItemKey) -> &Mutex<Table> {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.inner.tables[hasher.finish() as usize % SHARDS]
    }
    /// Every shard, locked in index order (the one order, so no deadlock).
    pub(super) fn lock_all(&self) -> Vec<MutexGuard<'_, Table>> {
        self.inner.tables.iter().map(|t| t.lock()).collect()
    }
    /// Starts the one fetch of `key` (the caller checked none is in flight) in its own task.
    /// `stored` is the item the caller read under the shard's lock (`None`: nothing stored):
    /// a refresh sends its validator, so the store is not read again for it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_flight(
        &self,
        table: &mut Table,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        stored: Option<&Item>,
    ) -> watch::Receiver<Option<FlightResult>> {
        let validator = match (reason, stored) {
            (FetchReason::Miss, _) | (_, None) => Arc::from(Vec::new()),
            (_, Some(item)) => Arc::from(item.validator.as_slice()),
        };
        self.launch(
            table,
            key,
            job,
            config,
            metrics,
            reason,
            Start::Here { validator },
        )
    }

    /// [`start_flight`](Engine::start_flight) by a caller who saw the item at `seen`, its
    /// version in the fleet's store (a fleet's flight fetches only if it has not moved).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_flight_seen(
        &self,
        table: &mut Table,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        seen: u64,
    ) -> watch::Receiver<Option<FlightResult>> {
        self.launch(
            table,
            key,
            job,
            config,
            metrics,
            reason,
            Start::Fleet { seen },
        )
    }

    /// Puts the flight in the table and spawns its driver.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        table: &mut Table,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        start: Start,
    ) -> watch::Receiver<Option<FlightResult>> {
        if table.backoff.contains_key(key) {
            metrics.fetches_retried.inc();
        }
        let (tx, rx) = watch::channel(None);
        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed) + 1;
        table.flights.insert(
            key.clone(),
            Flight {
                id,
                done: rx.clone(),
                superseded: false,
                reinvalidate: false,
                reason,
            },
        );
        let guard = FlightGuard {
            engine: self.clone(),
            key: key.clone(),
            id,
            tx: Some(tx),
        };
        let engine = self.clone();
        let (key, job, config, metrics) = (key.clone(), job.clone(), *config, metrics.clone());
        let shutdown = self.inner.shutdown.clone();
        self.inner.shutdown.spawn(async move {
            tokio::select! {
                // The guard, dropped here, answers the waiters "shutting down".
                _ = shutdown.closing() => {}
                result = engine.drive_here_or_fleet(&key, &job, &config, &metrics, reason, id, start) => {
                    guard.answer(result);
                }
            }
        });
        rx
    }

    /// Runs one fetch: through the fleet's lease in fleet mode, else here alone.
    #[allow(clippy::too_many_arguments)]
    async fn drive_here_or_fleet(
        &self,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        id: u64,
        start: Start,
    ) -> FlightResult {
        match (self.inner.fleet.clone(), start) {
            (Some(fleet), Start::Fleet { seen }) => {
                self.drive_fleet(&fleet, key, job, config, metrics, reason, id, seen)
                    .await
            }
            // A flight started by the sled path in fleet mode cannot happen (every item
            // call goes the fleet's way there); if it did, it saw version 0.
            (Some(fleet), Start::Here { .. }) => {
                self.drive_fleet(&fleet, key, job, config, metrics, reason, id, 0)
                    .await
            }
            (None, Start::Here { validator }) => {
                self.drive(key, job, config, metrics, reason, id, validator)
                    .await
            }
            (None, Start::Fleet { .. }) => {
                self.drive(key, job, config, metrics, reason, id, Arc::from(Vec::new()))
                    .await
            }
        }
    }

    /// Runs one fetch to its end and records its result. A refresh sends `validator`, the
    /// stored one, so that the worker may answer NotModified.
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &self,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        id: u64,
        validator: Arc<[u8]>,
    ) -> FlightResult {
        let landed = self
            .ask_worker(key, job, config, metrics, reason, validator)
            .await;
        let (result, stored) = self.finish_flight(key, job, config, metrics, id, landed);
        count_result(job, reason, metrics, &result);
        if stored {
            if let Err(e) = self.flush_if_always().await {
                tracing::error!(error = %e, "flush after a fetch failed");
            }
        }
        Arc::new(result)
    }

    /// Sends the fetch to one of this daemon's workers (within the job's refresh_timeout)
    /// and checks its answer, counting the fetch in flight, its duration and a NotModified.
    pub(super) async fn ask_worker(
        &self,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        validator: Arc<[u8]>,
    ) -> Result<Landed, Error> {
        let timeout = config.refresh_timeout;
        let started = Instant::now();
        metrics.fetches_in_flight.inc();
        let outcome = self
            .inner
            .workers
            .fetch(
                job,
                Arc::from(key.args()),
                validator,
                reason,
                Instant::now() + timeout,
                self.now() + timeout,
                timeout,
            )
            .await;
        let took = started.elapsed();
        let landed = outcome.and_then(|f| self.check_fetched(f, config, took));
        metrics.fetches_in_flight.dec();
        metrics.fetch_duration.observe(took.as_secs_f64());
        if matches!(landed, Ok(Landed::NotModified { .. })) {
            metrics.not_modified.inc();
        }
        landed
    }

    /// Checks a worker's answer against the limits and gives it its times.
    pub(super) fn check_fetched(
        &self,
        fetched: Fetched,
        config: &JobConfig,
        took: Duration,
    ) -> Result<Landed, Error> {
        let check_lifetime = |lifetime: Duration| {
            if lifetime > MAX_SPAN {
                return Err(Error::FetchFailed(format!(
                    "the worker's lifetime {lifetime:?} is over the limit of {MAX_SPAN:?}"
                )));
            }
            Ok(lifetime)
        };
        let now = self.now();
        Ok(match fetched {
            Fetched::Value {
                data,
                lifetime,
                validator,
                tags,
            } => {
                let limit = self.inner.settings.limits.max_data_bytes;
                if data.len() > limit {
                    return Err(Error::FetchFailed(format!(
                        "the worker answered {} bytes of data, over the limit of {limit} bytes",
                        data.len()
                    )));
                }
                let lifetime = check_lifetime(lifetime.unwrap_or(config.lifetime))?;
                Landed::Item(Item {
                    times: policy::times_for_new(now, lifetime),
                    fetch_took: took,
                    validator,
                    tags,
                    absent: false,
                    data,
                })
            }
            Fetched::Absent { lifetime, tags } => {
                let lifetime = check_lifetime(lifetime.unwrap_or(config.absent_lifetime()))?;
                Landed::Item(Item {
                    fetch_took: took,
                    tags,
                    absent: true,
                    ..Item::data(policy::times_for_new(now, lifetime), Vec::new())
                })
            }
            Fetched::NotModified { lifetime } => Landed::NotModified {
                lifetime: check_lifetime(lifetime.unwrap_or(config.lifetime))?,
                fetch_took: took,
            },
        })
    }

    /// Resolves a NotModified against what is stored now (under the item's shard lock):
    /// the stored item with its times renewed, or a failed fetch if nothing is stored.
    fn confirm(
        &self,
        key: &ItemKey,
        config: &JobConfig,
        lifetime: Duration,
        fetch_took: Duration,
    ) -> Result<Item, Error> {
        let stored = self.inner.store.get(key)?;
        renewed(stored, config, self.now(), lifetime, fetch_took)
    }

    /// Stores the flight's result unless a write superseded it, keeps the backoff (and,
    /// for a missing item, the error for `error_ttl`), takes the flight out, and starts
    /// the refresh an Invalidate asked for. The result the waiters get, and whether it
    /// stored.
    fn finish_flight(
        &self,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        id: u64,
        landed: Result<Landed, Error>,
    ) -> (Result<Item, Error>, bool) {
        let mut table = self.shard(key).lock();
        let result = landed.and_then(|landed| match landed {
            Landed::Item(item) => Ok(item),
            Landed::NotModified {
                lifetime,
                fetch_took,
            } => self.confirm(key, config, lifetime, fetch_took),
        });
        let Some(flight) = table.flights.get(key).filter(|f| f.id == id) else {
            return (result, false);
        };
        let (superseded, reinvalidate, reason) =
            (flight.superseded, flight.reinvalidate, flight.reason);
        let mut stored = false;
        match &result {
            Ok(item) => {
                table.backoff.remove(key);
                table.errors.remove(key);
                if !superseded && self.still_known(job).is_ok() {
                    let stale;
                    let item = if reinvalidate {
                        // Based on data from before the Invalidate: stale until the follow-up.
                        let mut times = item.times;
                        times.expires_at = times.stored_at;
                        stale = Item {
                            times,
                            ..item.clone()
                        };
                        &stale
                    } else {
                        item
                    };
                    match self.inner.store.put(key, item) {
                        Ok(()) => {
                            stored = true;
                            self.inner.subscriptions.emit(
                                key,
                                EventKind::Changed,
                                item.times.stored_at,
                            );
                        }
                        Err(e) => tracing::error!(%job, error = %e, "cannot store a fetched item"),
                    }
                }
            }
            // A full queue says nothing of the origin: no backoff for it.
            Err(Error::QueueFull { .. }) => {}
            Err(e) => {
                table.record_failure(key, self.inner.settings.retry_base, config.refresh_timeout);
                if let (Some(ttl), FetchReason::Miss, false) =
                    (config.error_ttl, reason, superseded)
                {
                    table.remember_error(key, e, ttl);
                }
            }
        }
        // Out of the table only now: a panic above leaves it to the guard, which answers
        // its waiters.
        table.flights.remove(key);
        if reinvalidate && !superseded && !table.backed_off(key) {
            metrics.refreshes_scheduled.inc();
            let stored_item = if stored { result.as_ref().ok() } else { None };
            self.start_flight(
                &mut table,
                key,
                job,
                config,
                metrics,
                FetchReason::Invalidated,
                stored_item,
            );
        }
        (result, stored)
    }
}

/// A NotModified resolved against the item `stored` now: it, with its times renewed, or a
/// failed fetch if nothing (alive) is stored.
pub(super) fn renewed(
    stored: Option<Item>,
    config: &JobConfig,
    now: std::time::SystemTime,
    lifetime: Duration,
    fetch_took: Duration,
) -> Result<Item, Error> {
    let stored = stored.filter(|i| !policy::is_past_ttl(i.times.stored_at, config, now));
    match policy::not_modified(stored.as_ref().map(|i| i.times), now, lifetime) {
        Some(times) => Ok(Item {
            times,
            fetch_took,
            ..stored.expect("times come from a stored item")
        }),
        None => Err(Error::FetchFailed(
            "the worker answered not_modified but no stored data".into(),
        )),
    }
}

/// Counts a fetch's end, with a rate-limited line for a failure.
pub(super) fn count_result<T>(
    job: &JobName,
    reason: FetchReason,
    metrics: &JobMetrics,
    result: &Result<T, Error>,
) {
    match result {
        Ok(_) => metrics.fetches_succeeded.inc(),
        Err(e) => {
            static FAILED: RateLimit = RateLimit::new(std::time::Duration::from_secs(10));
            if let Some(suppressed) = FAILED.allow() {
                tracing::warn!(%job, ?reason, error = %clip(&e.to_string()), more_since_last_line = suppressed, "fetch failed");
            }
            metrics.fetches_failed.inc()
        }
    };
}

/// Owns a flight from its start to its answer, as moka's `WaiterGuard` does: whatever ends
/// the driver without an answer (a panic in a store write or a bug, or the daemon closing)
/// drops the guard, which takes the flight out of the table, so the item is never stuck,
/// and answers its waiters: an internal error after a panic, "shutting down" otherwise.
struct FlightGuard {
    engine: Engine,
    key: ItemKey,
    id: u64,
    /// `None` once answered.
    tx: Option<watch::Sender<Option<FlightResult>>>,
}

impl FlightGuard {
    /// The driver's answer (the flight is out of the table already).
    fn answer(mut self, result: FlightResult) {
        if let Some(tx) = self.tx.take() {
            // Nobody may be waiting; that is fine.
            let _ = tx.send(Some(result));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let Some(tx) = self.tx.take() else {
            return;
        };
        {
            let mut table = self.engine.shard(&self.key).lock();
            if table
                .flights
                .get(&self.key)
                .is_some_and(|f| f.id == self.id)
            {
                table.flights.remove(&self.key);
            }
        }
        let error = if std::thread::panicking() {
            tracing::error!(key = ?self.key, "a fetch's driver panicked: its waiters get an internal error");
            Error::Internal("the daemon failed while finishing this fetch".into())
        } else {
            Error::ShuttingDown
        };
        let _ = tx.send(Some(Arc::new(Err(error))));
    }
}

/// Waits for a flight's result; a flight whose driver is gone answers "shutting down".
pub(super) async fn wait_flight(
    done: &mut watch::Receiver<Option<FlightResult>>,
) -> Result<FlightResult, Error> {
    match done.wait_for(Option::is_some).await {
        Ok(result) => Ok(result.clone().expect("waited for Some")),
        Err(_) => Err(Error::ShuttingDown),
    }
}
