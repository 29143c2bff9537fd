//! What a Get, Set, Invalidate and Delete do: the staleness policy (`policy`) applied to the
//! store, the single-flight table, and refresh scheduling with backoff. Knows nothing of
//! gRPC; `service` calls in with validated values.
//!
//! The single-flight table holds at most one fetch per item. A fetch runs in its own task
//! (the "driver"), so a caller that gives up never cancels a fetch that others share. Writes
//! win over fetches in flight: a Set or Delete marks the item's flight superseded, and its
//! result then answers its waiters but is not stored.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::{Found, JobMetrics, Metrics};
use crate::model::{FetchReason, ItemKey, ItemState, JobConfig, JobName, Limits, MAX_SPAN};
use crate::policy::{self, Freshness, GetContext, GetPlan, Refresh, Times};
use crate::store::{Durability, Item, Store};
use crate::workers::{Fetched, Outbound, WorkerId, Workers};

/// Settings of the engine that are not per job.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// When writes reach the disk.
    pub durability: Durability,
    /// First backoff delay after a failed fetch; it doubles up to the job's refresh_timeout.
    pub retry_base: Duration,
    /// Capacity of each job's queue of fetches waiting for a worker.
    pub queue_capacity: usize,
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
            sweep_interval: Duration::from_secs(60),
            limits: Limits::default(),
            job_defaults: JobConfig::default(),
        }
    }
}

/// What a Get answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
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
}

/// What an Invalidate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InvalidateOutcome {
    /// The item was present.
    pub found: bool,
    /// A refresh was scheduled or is in flight.
    pub refresh_scheduled: bool,
}

/// The engine: a cheap-to-clone handle.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A known job: its config, its invalidation instant and its counters, resolved once so
/// that a Get only increments them.
#[derive(Clone)]
pub struct JobEntry {
    /// The effective config.
    pub config: JobConfig,
    /// Items stored at or before this instant count as stale (InvalidateJob).
    pub invalidated_before: Option<SystemTime>,
    /// The job's counters.
    pub metrics: Arc<JobMetrics>,
}

impl JobEntry {
    /// An item as a Get sees it: the job's invalidation applied.
    fn seen(&self, item: Option<Item>) -> Option<Item> {
        item.map(|mut i| {
            i.times = policy::after_job_invalidation(i.times, self.invalidated_before);
            i
        })
    }
}

struct Inner {
    store: Arc<dyn Store>,
    workers: Workers,
    settings: EngineSettings,
    metrics: Metrics,
    jobs: RwLock<HashMap<JobName, JobEntry>>,
    // The single-flight table, sharded by item so that answers for different items do not
    // queue behind each other's store write. Blocking mutexes, held only for map updates
    // and short store calls, never across `.await` (parking_lot's: no poisoning, so one
    // panic cannot wedge every later call). A path that needs every shard locks them in
    // index order; every other path holds one shard at a time.
    tables: Box<[Mutex<Table>]>,
    next_flight: AtomicU64,
}

/// How many shards the single-flight table has.
const SHARDS: usize = 16;

#[derive(Default)]
struct Table {
    flights: HashMap<ItemKey, Flight>,
    backoff: HashMap<ItemKey, Backoff>,
}

type FlightResult = Arc<Result<Item, Error>>;

struct Flight {
    id: u64,
    done: watch::Receiver<Option<FlightResult>>,
    /// A Set or Delete came in since it started: its result must not be stored.
    superseded: bool,
    /// An Invalidate came in since it started: one more refresh follows it.
    reinvalidate: bool,
}

struct Backoff {
    failures: u32,
    until: Instant,
}

impl Engine {
    /// An engine over `store`, loading the stored job configs.
    pub fn new(store: Arc<dyn Store>, settings: EngineSettings) -> Result<Engine, Error> {
        Engine::with_metrics(store, settings, Metrics::new())
    }

    /// An engine over `store` that counts what it does in `metrics`.
    pub fn with_metrics(
        store: Arc<dyn Store>,
        settings: EngineSettings,
        metrics: Metrics,
    ) -> Result<Engine, Error> {
        let marks: HashMap<JobName, SystemTime> = store.invalidated_before()?.into_iter().collect();
        let jobs = store
            .jobs()?
            .into_iter()
            .map(|(job, config)| {
                let entry = JobEntry {
                    config,
                    invalidated_before: marks.get(&job).copied(),
                    metrics: metrics.job(&job),
                };
                (job, entry)
            })
            .collect();
        Ok(Engine {
            inner: Arc::new(Inner {
                workers: Workers::new(settings.queue_capacity),
                store,
                settings,
                metrics,
                jobs: RwLock::new(jobs),
                tables: (0..SHARDS).map(|_| Mutex::default()).collect(),
                next_flight: AtomicU64::new(0),
            }),
        })
    }

    /// The worker registry.
    pub fn workers(&self) -> &Workers {
        &self.inner.workers
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The size limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.settings.limits
    }

    /// The config of `job`, or `UnknownJob`.
    pub fn job_config(&self, job: &JobName) -> Result<JobConfig, Error> {
        self.job_entry(job).map(|e| e.config)
    }

    /// Everything known of `job`, or `UnknownJob`.
    pub fn job_entry(&self, job: &JobName) -> Result<JobEntry, Error> {
        let jobs = self.inner.jobs.read();
        jobs.get(job)
            .cloned()
            .ok_or_else(|| Error::UnknownJob(job.to_string()))
    }

    /// Every known job and its config.
    pub fn jobs(&self) -> Vec<(JobName, JobConfig)> {
        let jobs = self.inner.jobs.read();
        jobs.iter().map(|(k, v)| (k.clone(), v.config)).collect()
    }

    /// Every known job and everything known of it.
    pub fn job_entries(&self) -> Vec<(JobName, JobEntry)> {
        let jobs = self.inner.jobs.read();
        jobs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What a Register leaves unset.
    pub fn job_defaults(&self) -> &JobConfig {
        &self.inner.settings.job_defaults
    }

    /// Makes `config` the job's config (the latest registration wins) and stores it durably.
    pub async fn register_job(&self, job: &JobName, config: JobConfig) -> Result<(), Error> {
        self.inner.store.put_job(job, &config)?;
        self.flush().await?;
        let mut jobs = self.inner.jobs.write();
        match jobs.get_mut(job) {
            Some(entry) => entry.config = config,
            None => {
                let entry = JobEntry {
                    config,
                    invalidated_before: None,
                    metrics: self.inner.metrics.job(job),
                };
                jobs.insert(job.clone(), entry);
            }
        }
        Ok(())
    }

    /// Marks every item of `job` stored until now stale, without touching any of them: Gets
    /// apply the mark as they read, so each item refreshes on its next Get (no stampede).
    /// Fetches in flight may have read old data: each is followed by one more refresh, as
    /// for an Invalidate. Returns the mark.
    pub async fn invalidate_job(&self, job: &JobName) -> Result<SystemTime, Error> {
        self.job_entry(job)?;
        let mark = policy::times_for_new(SystemTime::now(), Duration::ZERO).stored_at;
        {
            let mut tables = self.lock_all();
            self.inner.store.put_invalidated_before(job, mark)?;
            let prefix = ItemKey::job_prefix(job);
            let flights = tables.iter_mut().flat_map(|t| t.flights.iter_mut());
            for (key, flight) in flights {
                if key.as_bytes().starts_with(&prefix) {
                    flight.reinvalidate = true;
                }
            }
            let mut jobs = self.inner.jobs.write();
            if let Some(entry) = jobs.get_mut(job) {
                entry.invalidated_before = Some(mark);
            }
        }
        self.flush().await?;
        Ok(mark)
    }

    /// Removes `job`: its config, its items and its mark; how many items went, or `None` if
    /// the job was not known. Refused while workers of the job are connected, since they
    /// would register it again at once. Fetches in flight finish, unstored.
    pub async fn delete_job(&self, job: &JobName) -> Result<Option<u64>, Error> {
        let workers = self.inner.workers.count(job);
        if workers > 0 {
            return Err(Error::FailedPrecondition(format!(
                "job {job:?} has {workers} worker(s) connected: stop them before deleting it"
            )));
        }
        {
            let mut tables = self.lock_all();
            let prefix = ItemKey::job_prefix(job);
            for table in tables.iter_mut() {
                for (key, flight) in table.flights.iter_mut() {
                    if key.as_bytes().starts_with(&prefix) {
                        flight.superseded = true;
                    }
                }
                table
                    .backoff
                    .retain(|key, _| !key.as_bytes().starts_with(&prefix));
            }
            if self.inner.jobs.write().remove(job).is_none() {
                return Ok(None);
            }
        }
        let store = self.inner.store.clone();
        let name = job.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove_job(&name))
            .await
            .map_err(|e| Error::Store(format!("delete task failed: {e}")))??;
        self.flush().await?;
        self.inner.metrics.forget_job(job);
        Ok(Some(removed))
    }

    /// Adds a registered worker's stream to the job's workers.
    pub fn add_worker(
        &self,
        job: &JobName,
        id: WorkerId,
        max_in_flight: usize,
        tx: tokio::sync::mpsc::Sender<Outbound>,
    ) {
        self.inner.workers.register(job, id, max_in_flight, tx);
    }

    /// Reads an item, refreshing it as the job's policy says.
    pub async fn get(
        &self,
        job: &JobName,
        args: &[u8],
        fetch_on_miss: Option<bool>,
    ) -> Result<GetOutcome, Error> {
        let key = ItemKey::new(job, args);
        // The hot path: a fresh hit is answered under the jobs' read lock, taking no
        // table lock and copying nothing of the job's entry.
        let entry = {
            let jobs = self.inner.jobs.read();
            let entry = jobs
                .get(job)
                .ok_or_else(|| Error::UnknownJob(job.to_string()))?;
            let item = entry.seen(self.inner.store.get(&key)?);
            let times = item.as_ref().map(|i| i.times);
            if policy::freshness(times, &entry.config, SystemTime::now()) == Freshness::Fresh {
                entry.metrics.gets_fresh.inc();
                return Ok(served(ItemState::Fresh, item, false));
            }
            entry.clone()
        };
        let config = entry.config;

        let (plan, item, wait) = {
            let mut table = self.shard(&key).lock();
            // Look again under the lock: a write may have landed since.
            let item = entry.seen(self.inner.store.get(&key)?);
            let now = SystemTime::now();
            let freshness = policy::freshness(item.as_ref().map(|i| i.times), &config, now);
            let ctx = GetContext {
                fetch_on_miss_override: fetch_on_miss,
                in_flight: table.flights.contains_key(&key),
                // A full wait queue holds asynchronous fetches back like backoff does:
                // the item is served as it is rather than refused.
                backed_off: table.backed_off(&key) || self.inner.workers.queue_full(job),
            };
            let plan = policy::plan_get(freshness, &config, ctx);
            let m = &entry.metrics;
            let wait = match plan {
                GetPlan::ServeStale(Refresh::Start(reason))
                | GetPlan::AnswerMiss(Refresh::Start(reason)) => {
                    m.refreshes_scheduled.inc();
                    self.start_flight(&mut table, &key, job, &config, m, reason);
                    None
                }
                GetPlan::FetchSync { reason, .. } => Some(match table.flights.get(&key) {
                    Some(flight) => flight.done.clone(),
                    None => {
                        m.sync_fetches.inc();
                        self.start_flight(&mut table, &key, job, &config, m, reason)
                    }
                }),
                _ => None,
            };
            (plan, item, wait)
        };
        entry.metrics.count_get(match plan {
            GetPlan::ServeFresh => Found::Fresh,
            GetPlan::ServeStale(_)
            | GetPlan::FetchSync {
                stale_fallback: true,
                ..
            } => Found::Stale,
            GetPlan::AnswerMiss(_) | GetPlan::FetchSync { .. } => Found::Miss,
        });

        match plan {
            GetPlan::ServeFresh => Ok(served(ItemState::Fresh, item, false)),
            GetPlan::ServeStale(refresh) => Ok(served(ItemState::Stale, item, refresh.scheduled())),
            GetPlan::AnswerMiss(refresh) => Ok(GetOutcome {
                state: ItemState::Miss,
                data: Vec::new(),
                times: None,
                refresh_scheduled: refresh.scheduled(),
                fetched: false,
            }),
            GetPlan::FetchSync { stale_fallback, .. } => {
                let mut done = wait.expect("a synchronous plan waits on a flight");
                let result = wait_flight(&mut done).await?;
                match (&*result, stale_fallback, item) {
                    (Ok(fetched), _, _) => Ok(GetOutcome {
                        state: ItemState::Fresh,
                        data: fetched.data.clone(),
                        times: Some(fetched.times),
                        refresh_scheduled: false,
                        fetched: true,
                    }),
                    // Stale beats an error.
                    (Err(_), true, Some(stale)) => Ok(served(ItemState::Stale, Some(stale), false)),
                    (Err(e), _, _) => Err(e.clone()),
                }
            }
        }
    }

    /// Reads what is stored and starts nothing (`GetRequest.peek`, django-cacheback's
    /// `raw_get`): no fetch, no refresh, no backoff change, no counters moved.
    pub fn peek(&self, job: &JobName, args: &[u8]) -> Result<GetOutcome, Error> {
        let key = ItemKey::new(job, args);
        let jobs = self.inner.jobs.read();
        let entry = jobs
            .get(job)
            .ok_or_else(|| Error::UnknownJob(job.to_string()))?;
        let item = entry.seen(self.inner.store.get(&key)?);
        let times = item.as_ref().map(|i| i.times);
        Ok(
            match policy::freshness(times, &entry.config, SystemTime::now()) {
                Freshness::Fresh => served(ItemState::Fresh, item, false),
                Freshness::Stale { .. } => served(ItemState::Stale, item, false),
                Freshness::Absent => served(ItemState::Miss, None, false),
            },
        )
    }

    /// Stores `data` for an item directly; returns its expiry.
    pub async fn set(
        &self,
        job: &JobName,
        args: &[u8],
        data: Vec<u8>,
        lifetime: Option<Duration>,
    ) -> Result<SystemTime, Error> {
        let config = self.job_config(job)?;
        let key = ItemKey::new(job, args);
        let times = policy::times_for_new(SystemTime::now(), lifetime.unwrap_or(config.lifetime));
        {
            let mut table = self.shard(&key).lock();
            self.still_known(job)?;
            self.inner.store.put(&key, &Item { times, data })?;
            table.write_wins(&key);
        }
        self.flush_if_always().await?;
        Ok(times.expires_at)
    }

    /// Removes an item; whether it was there.
    pub async fn delete(&self, job: &JobName, args: &[u8]) -> Result<bool, Error> {
        let config = self.job_config(job)?;
        let key = ItemKey::new(job, args);
        let found = {
            let mut table = self.shard(&key).lock();
            let present = self.present(&key, &config)?;
            self.inner.store.remove(&key)?;
            table.write_wins(&key);
            present
        };
        self.flush_if_always().await?;
        Ok(found)
    }

    /// Marks a present item stale now and schedules a refresh; an absent item is left alone.
    pub async fn invalidate(&self, job: &JobName, args: &[u8]) -> Result<InvalidateOutcome, Error> {
        let entry = self.job_entry(job)?;
        let config = entry.config;
        let key = ItemKey::new(job, args);
        let outcome = {
            let mut table = self.shard(&key).lock();
            let now = SystemTime::now();
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

    /// Removes the items past their job's cache_ttl, and the items of jobs that no longer
    /// exist (the job is looked up live, item by item); how many went.
    pub fn sweep(&self, now: SystemTime) -> Result<usize, Error> {
        let config_of = |name: &str| self.inner.jobs.read().get(name).map(|e| e.config);
        self.inner.store.sweep(&config_of, now)
    }

    /// Runs the sweeper every `sweep_interval` until `shutdown`.
    pub async fn run_sweeper(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.settings.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.prune_backoff();
            let engine = self.clone();
            match tokio::task::spawn_blocking(move || engine.sweep(SystemTime::now())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(removed = n, "swept items past their cache_ttl"),
                Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
                Err(e) => tracing::error!(error = %e, "sweep task failed"),
            }
        }
    }

    /// Forgets the backoff of items whose delay ran out long ago: an item nobody reads is
    /// never retried, so its record would otherwise stay in memory for good.
    fn prune_backoff(&self) {
        const KEEP: Duration = Duration::from_secs(600);
        let now = Instant::now();
        for table in self.inner.tables.iter() {
            let mut table = table.lock();
            table.backoff.retain(|_, b| b.until + KEEP > now);
        }
    }

    /// Whether `job` still exists, asked under the item's shard lock just before a store
    /// write: `delete_job` removes the job while holding every shard, so a write that
    /// looked the job up before a DeleteJob cannot leave an item behind it.
    fn still_known(&self, job: &JobName) -> Result<(), Error> {
        if self.inner.jobs.read().contains_key(job) {
            Ok(())
        } else {
            Err(Error::UnknownJob(job.to_string()))
        }
    }

    /// The shard of the single-flight table that holds `key`.
    fn shard(&self, key: &ItemKey) -> &Mutex<Table> {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.inner.tables[hasher.finish() as usize % SHARDS]
    }

    /// Every shard, locked in index order (the one order, so no deadlock).
    fn lock_all(&self) -> Vec<MutexGuard<'_, Table>> {
        self.inner.tables.iter().map(|t| t.lock()).collect()
    }

    /// Before a clean stop: the store records what its next start may skip, and flushes.
    pub async fn close(&self) -> Result<(), Error> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| Error::Store(format!("close task failed: {e}")))?
    }

    /// Makes every acknowledged write durable.
    pub async fn flush(&self) -> Result<(), Error> {
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
            .is_some_and(|i| !policy::is_past_ttl(i.times.stored_at, config, SystemTime::now())))
    }

    /// Starts the one fetch of `key` (the caller checked none is in flight) in its own task.
    fn start_flight(
        &self,
        table: &mut Table,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
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
            },
        );
        let engine = self.clone();
        let (key, job, config, metrics) = (key.clone(), job.clone(), *config, metrics.clone());
        tokio::spawn(async move {
            let result = engine
                .drive(&key, &job, &config, &metrics, reason, id)
                .await;
            // Nobody may be waiting; that is fine.
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// Runs one fetch to its end and records its result.
    async fn drive(
        &self,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        id: u64,
    ) -> FlightResult {
        let timeout = config.refresh_timeout;
        let started = Instant::now();
        metrics.fetches_in_flight.inc();
        let outcome = self
            .inner
            .workers
            .fetch(
                job,
                Arc::from(key.args()),
                reason,
                Instant::now() + timeout,
                SystemTime::now() + timeout,
                timeout,
            )
            .await;
        let result = outcome.and_then(|f| self.check_fetched(f, config));
        metrics.fetches_in_flight.dec();
        metrics
            .fetch_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics.fetches_succeeded.inc(),
            Err(e) => {
                tracing::warn!(%job, ?reason, error = %e, "fetch failed");
                metrics.fetches_failed.inc()
            }
        };
        let stored = self.finish_flight(key, job, config, metrics, id, &result);
        if stored {
            if let Err(e) = self.flush_if_always().await {
                tracing::error!(error = %e, "flush after a fetch failed");
            }
        }
        Arc::new(result)
    }

    /// Checks a worker's answer against the limits and gives it its times.
    fn check_fetched(&self, fetched: Fetched, config: &JobConfig) -> Result<Item, Error> {
        let limit = self.inner.settings.limits.max_data_bytes;
        if fetched.data.len() > limit {
            return Err(Error::FetchFailed(format!(
                "the worker answered {} bytes of data, over the limit of {limit} bytes",
                fetched.data.len()
            )));
        }
        let lifetime = fetched.lifetime.unwrap_or(config.lifetime);
        if lifetime > MAX_SPAN {
            return Err(Error::FetchFailed(format!(
                "the worker's lifetime {lifetime:?} is over the limit of {MAX_SPAN:?}"
            )));
        }
        Ok(Item {
            times: policy::times_for_new(SystemTime::now(), lifetime),
            data: fetched.data,
        })
    }

    /// Removes the flight, stores its result unless a write superseded it, keeps the
    /// backoff, and starts the refresh an Invalidate asked for. Whether it stored.
    fn finish_flight(
        &self,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        id: u64,
        result: &Result<Item, Error>,
    ) -> bool {
        let mut table = self.shard(key).lock();
        let Some(flight) = table.flights.remove(key).filter(|f| f.id == id) else {
            return false;
        };
        let mut stored = false;
        match result {
            Ok(item) => {
                table.backoff.remove(key);
                if !flight.superseded && self.still_known(job).is_ok() {
                    let mut item = item.clone();
                    if flight.reinvalidate {
                        // Based on data from before the Invalidate: stale until the follow-up.
                        item.times.expires_at = item.times.stored_at;
                    }
                    match self.inner.store.put(key, &item) {
                        Ok(()) => stored = true,
                        Err(e) => tracing::error!(%job, error = %e, "cannot store a fetched item"),
                    }
                }
            }
            // A full queue says nothing of the origin: no backoff for it.
            Err(Error::QueueFull { .. }) => {}
            Err(_) => {
                let failures = table.backoff.get(key).map_or(0, |b| b.failures) + 1;
                let delay = policy::backoff_delay(
                    failures,
                    self.inner.settings.retry_base,
                    config.refresh_timeout,
                    rand::random_range(0.5..=1.0),
                );
                table.backoff.insert(
                    key.clone(),
                    Backoff {
                        failures,
                        until: Instant::now() + delay,
                    },
                );
            }
        }
        if flight.reinvalidate && !flight.superseded && !table.backed_off(key) {
            metrics.refreshes_scheduled.inc();
            self.start_flight(
                &mut table,
                key,
                job,
                config,
                metrics,
                FetchReason::Invalidated,
            );
        }
        stored
    }
}

impl Table {
    /// A Set or Delete: a fetch in flight must not store over it, and backoff is over.
    fn write_wins(&mut self, key: &ItemKey) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.superseded = true;
        }
        self.backoff.remove(key);
    }

    fn backed_off(&self, key: &ItemKey) -> bool {
        self.backoff
            .get(key)
            .is_some_and(|b| b.until > Instant::now())
    }
}

fn served(state: ItemState, item: Option<Item>, refresh_scheduled: bool) -> GetOutcome {
    let (data, times) = match item {
        Some(i) => (i.data, Some(i.times)),
        None => (Vec::new(), None),
    };
    GetOutcome {
        state,
        data,
        times,
        refresh_scheduled,
        fetched: false,
    }
}

async fn wait_flight(
    done: &mut watch::Receiver<Option<FlightResult>>,
) -> Result<FlightResult, Error> {
    match done.wait_for(Option::is_some).await {
        Ok(result) => Ok(result.clone().expect("waited for Some")),
        Err(_) => Err(Error::ShuttingDown),
    }
}
