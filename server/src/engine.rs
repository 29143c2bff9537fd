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
use crate::model::{FetchReason, ItemKey, ItemState, JobConfig, JobName, Limits, Tag, MAX_SPAN};
use crate::policy::{self, Freshness, GetContext, GetPlan, Refresh, Seen, Times};
use crate::store::{Durability, Item, Store};
use crate::workers::{Capacity, Fetched, Outbound, WorkerId, Workers};

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
    /// The stored item is an absence (`FetchedAbsent`): the origin has no such data.
    pub absent: bool,
    /// The item's tags.
    pub tags: Vec<Tag>,
}

/// What a Get asks besides the item's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetOptions {
    /// `GetRequest.fetch_on_miss`.
    pub fetch_on_miss: Option<bool>,
    /// `GetRequest.max_age`.
    pub max_age: Option<Duration>,
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

struct Inner {
    store: Arc<dyn Store>,
    workers: Workers,
    settings: EngineSettings,
    metrics: Metrics,
    jobs: RwLock<HashMap<JobName, JobEntry>>,
    /// Items carrying a tag and stored at or before its mark count as stale
    /// (InvalidateTags); read on every Get of an item that has tags.
    tag_marks: RwLock<HashMap<Tag, SystemTime>>,
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
    /// Failed fetches of missing items, remembered for the job's `error_ttl`.
    errors: HashMap<ItemKey, Remembered>,
}

struct Remembered {
    error: Error,
    until: Instant,
}

/// A worker's answer, checked and timed, before it meets the store.
enum Landed {
    /// An item to store (data or an absence).
    Item(Item),
    /// Extend the stored item (`NotModified`).
    NotModified {
        lifetime: Duration,
        fetch_took: Duration,
    },
}

type FlightResult = Arc<Result<Item, Error>>;

struct Flight {
    id: u64,
    done: watch::Receiver<Option<FlightResult>>,
    /// A Set or Delete came in since it started: its result must not be stored.
    superseded: bool,
    /// An Invalidate came in since it started: one more refresh follows it.
    reinvalidate: bool,
    reason: FetchReason,
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
        let tag_marks = store.tag_marks()?.into_iter().collect();
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
                tag_marks: RwLock::new(tag_marks),
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
                table
                    .errors
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

    /// Marks every item, of any job, that carries one of `tags` and was stored until now
    /// stale, touching none of them: Gets apply the marks as they read (as for
    /// InvalidateJob), so a tag on a million items writes one record per tag and causes no
    /// stampede. Fetches in flight for an item with one of the tags may have read old data:
    /// each is followed by one more refresh. Returns the mark.
    pub async fn invalidate_tags(&self, tags: &[Tag]) -> Result<SystemTime, Error> {
        let mark = policy::times_for_new(SystemTime::now(), Duration::ZERO).stored_at;
        {
            let mut tables = self.lock_all();
            self.inner.store.put_tag_marks(tags, mark)?;
            {
                let mut marks = self.inner.tag_marks.write();
                for tag in tags {
                    let at = marks.entry(tag.clone()).or_insert(mark);
                    *at = (*at).max(mark);
                }
            }
            for (key, flight) in tables.iter_mut().flat_map(|t| t.flights.iter_mut()) {
                let tagged = self.inner.store.get(key)?;
                if tagged.is_some_and(|i| i.tags.iter().any(|t| tags.contains(t))) {
                    flight.reinvalidate = true;
                }
            }
        }
        self.flush().await?;
        self.inner.metrics.count_tag_invalidations(tags.len());
        Ok(mark)
    }

    /// An item as a Get sees it: the marks of its job and of its tags applied.
    fn seen(&self, entry: &JobEntry, item: Option<Item>) -> Option<Item> {
        item.map(|mut i| {
            i.times = policy::after_job_invalidation(i.times, entry.invalidated_before);
            if !i.tags.is_empty() {
                let marks = self.inner.tag_marks.read();
                let of_tags = i.tags.iter().filter_map(|t| marks.get(t).copied());
                i.times = policy::after_marks(i.times, of_tags);
            }
            i
        })
    }

    /// Reads an item, refreshing it as the job's policy says.
    pub async fn get(
        &self,
        job: &JobName,
        args: &[u8],
        options: GetOptions,
    ) -> Result<GetOutcome, Error> {
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
            let now = SystemTime::now();
            let plan = policy::plan_get(item.as_ref().map(seen), &entry.config, request, now, u);
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
            let now = SystemTime::now();
            let remembered = table
                .errors
                .get(&key)
                .filter(|r| r.until > Instant::now())
                .map(|r| r.error.clone());
            let ctx = GetContext {
                in_flight: table.flights.contains_key(&key),
                // A full wait queue holds asynchronous fetches back like backoff does:
                // the item is served as it is rather than refused.
                backed_off: table.backed_off(&key) || self.inner.workers.queue_full(job),
                error_remembered: remembered.is_some(),
                ..request
            };
            let plan = policy::plan_get(item.as_ref().map(seen), &config, ctx, now, u);
            let wait = match plan {
                GetPlan::ServeFresh(Refresh::Start(reason))
                | GetPlan::ServeStale(Refresh::Start(reason))
                | GetPlan::AnswerMiss(Refresh::Start(reason)) => {
                    m.refreshes_scheduled.inc();
                    if reason == FetchReason::Early {
                        m.early_refreshes.inc();
                    }
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
            (plan, item, wait, remembered)
        };
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
    pub fn peek(&self, job: &JobName, args: &[u8]) -> Result<GetOutcome, Error> {
        let key = ItemKey::new(job, args);
        let jobs = self.inner.jobs.read();
        let entry = jobs
            .get(job)
            .ok_or_else(|| Error::UnknownJob(job.to_string()))?;
        let item = self.seen(entry, self.inner.store.get(&key)?);
        let times = item.as_ref().map(|i| i.times);
        Ok(
            match policy::freshness(times, &entry.config, SystemTime::now()) {
                Freshness::Fresh => served(ItemState::Fresh, item, false),
                Freshness::Stale => served(ItemState::Stale, item, false),
                Freshness::Absent => served(ItemState::Miss, None, false),
            },
        )
    }

    /// Stores `data` for an item directly, with its `tags`; returns its expiry.
    pub async fn set(
        &self,
        job: &JobName,
        args: &[u8],
        data: Vec<u8>,
        lifetime: Option<Duration>,
        tags: Vec<Tag>,
    ) -> Result<SystemTime, Error> {
        let config = self.job_config(job)?;
        let key = ItemKey::new(job, args);
        let times = policy::times_for_new(SystemTime::now(), lifetime.unwrap_or(config.lifetime));
        {
            let mut table = self.shard(&key).lock();
            self.still_known(job)?;
            let item = Item {
                tags,
                ..Item::data(times, data)
            };
            self.inner.store.put(&key, &item)?;
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
            table.errors.retain(|_, r| r.until > now);
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
                reason,
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
        // A refresh sends the stored validator, so the worker may answer NotModified.
        let validator: Arc<[u8]> = match reason {
            FetchReason::Miss => Arc::from(Vec::new()),
            _ => match self.inner.store.get(key) {
                Ok(Some(item)) => Arc::from(item.validator),
                _ => Arc::from(Vec::new()),
            },
        };
        let outcome = self
            .inner
            .workers
            .fetch(
                job,
                Arc::from(key.args()),
                validator,
                reason,
                Instant::now() + timeout,
                SystemTime::now() + timeout,
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
        let (result, stored) = self.finish_flight(key, job, config, metrics, id, landed);
        match &result {
            Ok(_) => metrics.fetches_succeeded.inc(),
            Err(e) => {
                tracing::warn!(%job, ?reason, error = %e, "fetch failed");
                metrics.fetches_failed.inc()
            }
        };
        if stored {
            if let Err(e) = self.flush_if_always().await {
                tracing::error!(error = %e, "flush after a fetch failed");
            }
        }
        Arc::new(result)
    }

    /// Checks a worker's answer against the limits and gives it its times.
    fn check_fetched(
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
        let now = SystemTime::now();
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
                    times: policy::times_for_new(now, lifetime),
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

    /// Removes the flight, stores its result unless a write superseded it, keeps the
    /// backoff (and, for a missing item, the error for `error_ttl`), and starts the
    /// refresh an Invalidate asked for. The result the waiters get, and whether it stored.
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
        let flight = table.flights.remove(key).filter(|f| f.id == id);
        let result = landed.and_then(|landed| match landed {
            Landed::Item(item) => Ok(item),
            // Confirmed against what is stored now, under the item's lock.
            Landed::NotModified {
                lifetime,
                fetch_took,
            } => {
                let stored =
                    self.inner.store.get(key)?.filter(|i| {
                        !policy::is_past_ttl(i.times.stored_at, config, SystemTime::now())
                    });
                let times = policy::not_modified(
                    stored.as_ref().map(|i| i.times),
                    SystemTime::now(),
                    lifetime,
                );
                match (stored, times) {
                    (Some(item), Some(times)) => Ok(Item {
                        times,
                        fetch_took,
                        ..item
                    }),
                    _ => Err(Error::FetchFailed(
                        "the worker answered not_modified but no stored data".into(),
                    )),
                }
            }
        });
        let Some(flight) = flight else {
            return (result, false);
        };
        let mut stored = false;
        match &result {
            Ok(item) => {
                table.backoff.remove(key);
                table.errors.remove(key);
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
            Err(e) => {
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
                if let (Some(ttl), FetchReason::Miss, false) =
                    (config.error_ttl, flight.reason, flight.superseded)
                {
                    table.errors.insert(
                        key.clone(),
                        Remembered {
                            error: e.clone(),
                            until: Instant::now() + ttl,
                        },
                    );
                }
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
        (result, stored)
    }
}

impl Table {
    /// A Set or Delete: a fetch in flight must not store over it, and backoff is over.
    fn write_wins(&mut self, key: &ItemKey) {
        if let Some(flight) = self.flights.get_mut(key) {
            flight.superseded = true;
        }
        self.backoff.remove(key);
        self.errors.remove(key);
    }

    fn backed_off(&self, key: &ItemKey) -> bool {
        self.backoff
            .get(key)
            .is_some_and(|b| b.until > Instant::now())
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

async fn wait_flight(
    done: &mut watch::Receiver<Option<FlightResult>>,
) -> Result<FlightResult, Error> {
    match done.wait_for(Option::is_some).await {
        Ok(result) => Ok(result.clone().expect("waited for Some")),
        Err(_) => Err(Error::ShuttingDown),
    }
}
