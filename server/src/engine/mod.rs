//! What a Get, Set, Invalidate and Delete do: the staleness policy (`policy`) applied to the
//! store, the single-flight table, and refresh scheduling with backoff. Knows nothing of
//! gRPC; `service` calls in with validated values.
//!
//! The single-flight table holds at most one fetch per item. A fetch runs in its own task
//! (the "driver"), so a caller that gives up never cancels a fetch that others share. Writes
//! win over fetches in flight: a Set or Delete marks the item's flight superseded, and its
//! result then answers its waiters but is not stored.
//!
//! Split along its seams: `jobs` (the registry of jobs), `tags` (tag marks, InvalidateTags),
//! `flights` (the single-flight table and its drivers), `backoff` (after failed fetches,
//! and `error_ttl`) and `sweeper`; this file holds the handle and the item calls.
//!
//! # Lock order
//!
//! Three kinds of blocking lock, always taken in this order and never held across an
//! `.await`: a **shard** of the single-flight table (several shards only in index order,
//! `lock_all`), then the **jobs** map (`Inner::jobs`), then the **workers** registry
//! (`Workers`' own mutex, taken inside its methods). A path may skip a level, never go
//! back up: so a Get that holds a shard may read the jobs and ask the workers, and
//! DeleteJob holds every shard while it removes the job, which is what lets item writes
//! re-check their job under their shard (`still_known`).

#[cfg(test)]
mod additions_tests;
mod backoff;
mod fleet;
mod flights;
mod jobs;
mod many;
mod sweeper;
mod tags;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};

use flights::{wait_flight, Table, SHARDS};
pub(crate) use jobs::JobEntry;
pub(crate) use many::HitCandidate;

use crate::clock::Clock;
use crate::counters::{Found, Metrics};
use crate::error::Error;
use crate::model::{FetchReason, ItemKey, ItemState, JobConfig, JobName, Limits, Tag};
use crate::policy::{self, Freshness, GetContext, GetPlan, Refresh, Seen, Times};
use crate::shutdown::Shutdown;
use crate::store::{Durability, Item, Store};
use crate::subscriptions::{EventKind, Subscriptions};
use crate::workers::{Capacity, Outbound, WorkerId, Workers};

/// Settings of the engine that are not per job.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// When writes reach the disk.
    pub durability: Durability,
    /// First backoff delay after a failed fetch; it doubles up to the job's refresh_timeout.
    pub retry_base: Duration,
    /// Capacity of each job's queue of fetches waiting for a worker.
    pub queue_capacity: usize,
    /// Most jobs kept (`max_jobs`).
    pub max_jobs: usize,
    /// Most fetches waiting for a worker across all jobs.
    pub max_queued_fetches: usize,
    /// How often items past their cache_ttl are swept.
    pub sweep_interval: Duration,
    /// Size limits.
    pub limits: Limits,
    /// What a Register leaves unset.
    pub job_defaults: JobConfig,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            durability: Durability::Interval,
            retry_base: Duration::from_secs(1),
            queue_capacity: 10_000,
            max_jobs: 10_000,
            max_queued_fetches: 100_000,
            sweep_interval: Duration::from_secs(60),
            limits: Limits::default(),
            job_defaults: JobConfig::default(),
        }
    }
}

/// What a Get answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GetOutcome {
    /// FRESH, STALE or MISS.
    pub state: ItemState,
    /// The data (empty on MISS).
    pub data: Vec<u8>,
    /// The item's times (`None` on MISS).
    pub times: Option<Times>,
    /// An asynchronous fetch was started by this call or is in flight.
    pub refresh_scheduled: bool,
    /// This call waited for a synchronous fetch.
    pub fetched: bool,
    /// The stored item is an absence (`FetchedAbsent`): the origin has no such data.
    pub absent: bool,
    /// The item's tags.
    pub tags: Vec<Tag>,
}

/// What a Get asks besides the item's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GetOptions {
    /// `GetRequest.fetch_on_miss`.
    pub fetch_on_miss: Option<bool>,
    /// `GetRequest.max_age`.
    pub max_age: Option<std::time::Duration>,
}

/// What an Invalidate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct InvalidateOutcome {
    /// The item was present.
    pub found: bool,
    /// A refresh was scheduled or is in flight.
    pub refresh_scheduled: bool,
}

/// The engine: a cheap-to-clone handle.
#[derive(Clone)]
pub(crate) struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    workers: Workers,
    settings: EngineSettings,
    metrics: Metrics,
    /// The wall time of what is persisted (tests drive it; see `clock`).
    clock: Clock,
    /// Owns the flight drivers; a driver ends when the daemon closes.
    shutdown: Shutdown,
    jobs: RwLock<HashMap<JobName, JobEntry>>,
    /// Items carrying a tag and stored at or before its mark count as stale
    /// (InvalidateTags); read on every Get of an item that has tags (see `tags`).
    tag_marks: RwLock<HashMap<Tag, SystemTime>>,
    // The single-flight table, sharded by item so that answers for different items do not
    // queue behind each other's store write. Blocking mutexes, held only for map updates
    // and short store calls, never across `.await` (parking_lot's: no poisoning, so one
    // panic cannot wedge every later call). A path that needs every shard locks them in
    // index order; every other path holds one shard at a time. Lock order: shard, then
    // `jobs`, then the workers' registry (see the module's docs).
    tables: Box<[Mutex<Table>]>,
    next_flight: AtomicU64,
    /// The near caches to tell of every change, told under the item's shard lock.
    subscriptions: Subscriptions,
    /// The fleet's store, in fleet mode (items, jobs and marks then live in Redis).
    fleet: Option<crate::fleet::Fleet>,
    /// In fleet mode, the wake-up of each flight that may be waiting for another
    /// daemon's fetch (see `fleet`).
    joins: Mutex<HashMap<ItemKey, Arc<tokio::sync::Notify>>>,
}

impl Engine {
    /// An engine over `store`, loading the stored job configs, that counts what it does in
    /// `metrics` and spawns its tasks under `shutdown`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        settings: EngineSettings,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Result<Engine, Error> {
        Engine::with_clock(store, settings, metrics, shutdown, Clock::system())
    }

    /// An engine over the fleet's store: items, jobs and marks in Redis, its changes
    /// heard from `events` by a task of `shutdown`.
    pub(crate) fn with_fleet(
        fleet: crate::fleet::Fleet,
        events: tokio::sync::mpsc::Receiver<crate::fleet::FleetEvent>,
        settings: EngineSettings,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Result<Engine, Error> {
        let store = Arc::new(crate::fleet::FleetShim(fleet.clone()));
        let mut engine =
            Engine::with_clock(store, settings, metrics, shutdown.clone(), Clock::system())?;
        Arc::get_mut(&mut engine.inner)
            .expect("the engine is not shared yet")
            .fleet = Some(fleet.clone());
        shutdown.spawn(engine.clone().follow_fleet(fleet, events));
        Ok(engine)
    }

    /// [`Engine::new`] with the wall time read from `clock`.
    pub(crate) fn with_clock(
        store: Arc<dyn Store>,
        settings: EngineSettings,
        metrics: Metrics,
        shutdown: Shutdown,
        clock: Clock,
    ) -> Result<Engine, Error> {
        let marks: HashMap<JobName, SystemTime> = store.invalidated_before()?.into_iter().collect();
        let tag_marks = store.tag_marks()?.into_iter().collect();
        let jobs = store
            .jobs()?
            .into_iter()
            .map(|(job, config)| {
                let entry = JobEntry {
                    config,
                    invalidated_before: marks.get(&job).copied(),
                    metrics: metrics.job(&job),
                    epoch: 0,
                };
                (job, entry)
            })
            .collect();
        let subscriptions = Subscriptions::new();
        let told = subscriptions.clone();
        store.watch_removals(Box::new(move |key| {
            told.emit_stored(key, EventKind::Removed, clock.now())
        }));
        Ok(Engine {
            inner: Arc::new(Inner {
                workers: Workers::new(settings.queue_capacity, settings.max_queued_fetches),
                store,
                settings,
                metrics,
                clock,
                shutdown,
                jobs: RwLock::new(jobs),
                tag_marks: RwLock::new(tag_marks),
                tables: (0..SHARDS).map(|_| Mutex::default()).collect(),
                next_flight: AtomicU64::new(0),
                subscriptions,
                fleet: None,
                joins: Mutex::default(),
            }),
        })
    }

    /// The wall time now, by the engine's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The near caches' subscriptions.
    pub(crate) fn subscriptions(&self) -> &Subscriptions {
        &self.inner.subscriptions
    }

    /// The worker registry.
    pub(crate) fn workers(&self) -> &Workers {
        &self.inner.workers
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The size limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.settings.limits
    }

    /// The counters.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What a Register leaves unset.
    pub(crate) fn job_defaults(&self) -> &JobConfig {
        &self.inner.settings.job_defaults
    }

    /// Adds a registered worker's stream to the job's workers.
    pub(crate) fn add_worker(
        &self,
        job: &JobName,
        id: WorkerId,
        max_in_flight: usize,
        max_batch: usize,
        tx: tokio::sync::mpsc::Sender<Outbound>,
    ) -> Result<(), Error> {
        let batch_sizes = self.job_entry(job)?.metrics.fetch_batch_size.clone();
        let capacity = Capacity {
            max_in_flight,
            max_batch,
            batch_sizes,
        };
        self.inner.workers.register(job, id, capacity, tx);
        Ok(())
    }

    /// Reads an item, refreshing it as the job's policy says.
    pub(crate) async fn get(
        &self,
        job: &JobName,
        args: &[u8],
        options: GetOptions,
    ) -> Result<GetOutcome, Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_get(fleet, job, args, options).await;
        }
        let key = ItemKey::new(job, args);
        let request = GetContext {
            fetch_on_miss_override: options.fetch_on_miss,
            max_age: options.max_age,
            ..GetContext::default()
        };
        // The hot path: a fresh hit that starts nothing is answered under the jobs' read
        // lock, taking no table lock and copying nothing of the job's entry.
        let (entry, u) = {
            let jobs = self.inner.jobs.read();
            let entry = jobs
                .get(job)
                .ok_or_else(|| Error::UnknownJob(job.to_string()))?;
            let item = self.seen(entry, self.inner.store.get(&key)?);
            // XFetch's draw, in (0, 1]; the same one decides again under the lock.
            let u = match entry.config.early_refresh_beta {
                Some(_) => 1.0 - rand::random::<f64>(),
                None => 1.0,
            };
            let plan = policy::plan_get(
                item.as_ref().map(seen),
                &entry.config,
                request,
                self.now(),
                u,
            );
            if plan == GetPlan::ServeFresh(Refresh::None) {
                entry.metrics.gets_fresh.inc();
                if item.as_ref().is_some_and(|i| i.absent) {
                    entry.metrics.gets_absent.inc();
                }
                return Ok(served(ItemState::Fresh, item, false));
            }
            (entry.clone(), u)
        };
        let config = entry.config;
        let m = &entry.metrics;

        let (plan, item, wait, remembered) = {
            let mut table = self.shard(&key).lock();
            // Look again under the lock: a write may have landed since.
            let item = self.seen(&entry, self.inner.store.get(&key)?);
            let remembered = table.remembered(&key);
            let ctx = GetContext {
                in_flight: table.flights.contains_key(&key),
                // A full wait queue holds asynchronous fetches back like backoff does:
                // the item is served as it is rather than refused.
                backed_off: table.backed_off(&key) || self.inner.workers.queue_full(job),
                error_remembered: remembered.is_some(),
                ..request
            };
            let plan = policy::plan_get(item.as_ref().map(seen), &config, ctx, self.now(), u);
            let wait = match plan {
                GetPlan::ServeFresh(Refresh::Start(reason))
                | GetPlan::ServeStale(Refresh::Start(reason))
                | GetPlan::AnswerMiss(Refresh::Start(reason)) => {
                    m.refreshes_scheduled.inc();
                    if reason == FetchReason::Early {
                        m.early_refreshes.inc();
                    }
                    self.start_flight(&mut table, &key, job, &config, m, reason, item.as_ref());
                    None
                }
                GetPlan::FetchSync { reason, .. } => Some(match table.flights.get(&key) {
                    Some(flight) => flight.done.clone(),
                    None => {
                        m.sync_fetches.inc();
                        self.start_flight(&mut table, &key, job, &config, m, reason, item.as_ref())
                    }
                }),
                _ => None,
            };
            (plan, item, wait, remembered)
        };
        self.answer_get(plan, item, wait, remembered, m).await
    }

    /// Answers a Get by its plan: counts it, and waits for its flight if it fetches.
    async fn answer_get(
        &self,
        plan: GetPlan,
        item: Option<Item>,
        wait: Option<tokio::sync::watch::Receiver<Option<flights::FlightResult>>>,
        remembered: Option<Error>,
        m: &crate::counters::JobMetrics,
    ) -> Result<GetOutcome, Error> {
        m.count_get(match plan {
            GetPlan::ServeFresh(_)
            | GetPlan::FetchSync {
                fallback: Some(ItemState::Fresh),
                ..
            } => Found::Fresh,
            GetPlan::ServeStale(_)
            | GetPlan::FetchSync {
                fallback: Some(_), ..
            } => Found::Stale,
            GetPlan::AnswerMiss(_) | GetPlan::FetchSync { .. } | GetPlan::FailRemembered => {
                Found::Miss
            }
        });

        let outcome = match plan {
            GetPlan::ServeFresh(refresh) => served(ItemState::Fresh, item, refresh.scheduled()),
            GetPlan::ServeStale(refresh) => served(ItemState::Stale, item, refresh.scheduled()),
            GetPlan::AnswerMiss(refresh) => served(ItemState::Miss, None, refresh.scheduled()),
            GetPlan::FailRemembered => {
                return Err(remembered
                    .unwrap_or_else(|| Error::FetchFailed("the item's last fetch failed".into())))
            }
            GetPlan::FetchSync { fallback, .. } => {
                let mut done = wait.expect("a synchronous plan waits on a flight");
                let result = wait_flight(&mut done).await?;
                match (&*result, fallback, item) {
                    (Ok(fetched), _, _) => GetOutcome {
                        fetched: true,
                        ..served(ItemState::Fresh, Some(fetched.clone()), false)
                    },
                    // Old data beats an error.
                    (Err(_), Some(state), Some(old)) => served(state, Some(old), false),
                    (Err(e), _, _) => return Err(e.clone()),
                }
            }
        };
        if outcome.absent {
            m.gets_absent.inc();
        }
        Ok(outcome)
    }

    /// Reads what is stored and starts nothing (`GetRequest.peek`, django-cacheback's
    /// `raw_get`): no fetch, no refresh, no backoff change, no counters moved.
    pub(crate) async fn peek(&self, job: &JobName, args: &[u8]) -> Result<GetOutcome, Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_peek(fleet, job, args).await;
        }
        let key = ItemKey::new(job, args);
        let jobs = self.inner.jobs.read();
        let entry = jobs
            .get(job)
            .ok_or_else(|| Error::UnknownJob(job.to_string()))?;
        let item = self.seen(entry, self.inner.store.get(&key)?);
        let times = item.as_ref().map(|i| i.times);
        Ok(match policy::freshness(times, &entry.config, self.now()) {
            Freshness::Fresh => served(ItemState::Fresh, item, false),
            Freshness::Stale => served(ItemState::Stale, item, false),
            Freshness::Absent => served(ItemState::Miss, None, false),
        })
    }

    /// Stores `data` for an item directly, with its `tags`; returns its expiry.
    pub(crate) async fn set(
        &self,
        job: &JobName,
        args: &[u8],
        data: Vec<u8>,
        lifetime: Option<Duration>,
        tags: Vec<Tag>,
    ) -> Result<SystemTime, Error> {
        if let Some(fleet) = &self.inner.fleet {
            let config = self.fleet_entry(fleet, job).await?.config;
            let times = policy::times_for_new(self.now(), lifetime.unwrap_or(config.lifetime));
            let item = Item {
                tags,
                ..Item::data(times, data)
            };
            self.fleet_set(fleet, job, args, item).await?;
            return Ok(times.expires_at);
        }
        let config = self.job_config(job)?;
        let key = ItemKey::new(job, args);
        let times = policy::times_for_new(self.now(), lifetime.unwrap_or(config.lifetime));
        {
            let mut table = self.shard(&key).lock();
            self.still_known(job)?;
            let item = Item {
                tags,
                ..Item::data(times, data)
            };
            self.inner.store.put(&key, &item)?;
            self.inner
                .subscriptions
                .emit(&key, EventKind::Changed, times.stored_at);
            table.write_wins(&key);
        }
        self.flush_if_always().await?;
        Ok(times.expires_at)
    }

    /// Removes an item; whether it was there.
    pub(crate) async fn delete(&self, job: &JobName, args: &[u8]) -> Result<bool, Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_delete(fleet, job, args).await;
        }
        let config = self.job_config(job)?;
        let key = ItemKey::new(job, args);
        let found = {
            let mut table = self.shard(&key).lock();
            let present = self.present(&key, &config)?;
            if self.inner.store.remove(&key)? {
                self.inner
                    .subscriptions
                    .emit(&key, EventKind::Removed, self.now());
            }
            table.write_wins(&key);
            present
        };
        self.flush_if_always().await?;
        Ok(found)
    }

    /// Marks a present item stale now and schedules a refresh; an absent item is left alone.
    pub(crate) async fn invalidate(
        &self,
        job: &JobName,
        args: &[u8],
    ) -> Result<InvalidateOutcome, Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_invalidate(fleet, job, args).await;
        }
        let entry = self.job_entry(job)?;
        let config = entry.config;
        let key = ItemKey::new(job, args);
        let outcome = {
            let mut table = self.shard(&key).lock();
            let now = self.now();
            let Some(mut item) = self.inner.store.get(&key)? else {
                return Ok(InvalidateOutcome::default());
            };
            if policy::is_past_ttl(item.times.stored_at, &config, now) {
                return Ok(InvalidateOutcome::default());
            }
            // An item stale already keeps its staleness (it matters to the threshold).
            item.times.expires_at = item.times.expires_at.min(now);
            self.still_known(job)?;
            self.inner.store.put(&key, &item)?;
            self.inner
                .subscriptions
                .emit(&key, EventKind::Invalidated, now);
            let refresh_scheduled = if let Some(flight) = table.flights.get_mut(&key) {
                // That fetch may have read the old data: one more refresh follows it.
                flight.reinvalidate = true;
                true
            } else if table.backed_off(&key) || self.inner.workers.queue_full(job) {
                false
            } else {
                entry.metrics.refreshes_scheduled.inc();
                self.start_flight(
                    &mut table,
                    &key,
                    job,
                    &config,
                    &entry.metrics,
                    FetchReason::Invalidated,
                    Some(&item),
                );
                true
            };
            InvalidateOutcome {
                found: true,
                refresh_scheduled,
            }
        };
        self.flush_if_always().await?;
        Ok(outcome)
    }

    /// Before a clean stop: the store records what its next start may skip, and flushes.
    pub(crate) async fn close(&self) -> Result<(), Error> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| Error::Store(format!("close task failed: {e}")))?
    }

    /// Makes every acknowledged write durable.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| Error::Store(format!("flush task failed: {e}")))?
    }

    async fn flush_if_always(&self) -> Result<(), Error> {
        match self.inner.settings.durability {
            Durability::Always => self.flush().await,
            Durability::Interval => Ok(()),
        }
    }

    fn present(&self, key: &ItemKey, config: &JobConfig) -> Result<bool, Error> {
        Ok(self
            .inner
            .store
            .get(key)?
            .is_some_and(|i| !policy::is_past_ttl(i.times.stored_at, config, self.now())))
    }
}

fn served(state: ItemState, item: Option<Item>, refresh_scheduled: bool) -> GetOutcome {
    let (data, times, absent, tags) = match item {
        Some(i) => (i.data, Some(i.times), i.absent, i.tags),
        None => (Vec::new(), None, false, Vec::new()),
    };
    GetOutcome {
        state,
        data,
        times,
        refresh_scheduled,
        fetched: false,
        absent,
        tags,
    }
}

/// What the policy needs of a stored item.
fn seen(item: &Item) -> Seen {
    Seen {
        times: item.times,
        fetch_took: item.fetch_took,
    }
}
