//! The engine in fleet mode (`--store redis://...`): the same policy, with the rules held
//! across every daemon on the Redis by the fleet's store (`crate::fleet`) instead of this
//! daemon's locks. docs/FLEET.md tells the design and its failure cases; in short:
//!
//! - **One fetch per item, fleet-wide**: a flight fetches only under the item's lease in
//!   Redis, taken only by a daemon with a worker of the job and only if the item has not
//!   changed since the Get that started the flight looked; every other daemon's flight
//!   joins: it waits for the item to change (its event, with a poll as fallback) and
//!   answers what was stored, or the failure. A lease holder that dies delays the item by
//!   its `refresh_timeout` at most, the lease's life.
//! - **Writes win, fleet-wide**: Set and Delete void the lease and move the version; a
//!   fetch stores only by a script that checks both. An Invalidate moves the generation:
//!   a fetch in flight then stores stale and one more refresh follows, as on one daemon.
//! - **Marks and jobs**: held in memory, as on one daemon, and kept current by the
//!   fleet's events; an unknown job is asked of Redis before it is refused. A lost
//!   subscription marks the fleet down (calls answer UNAVAILABLE) and resets every near
//!   cache; when it is back, everything is read afresh before calls are served again.
//! - The single-flight table still holds this daemon's flights, so its concurrent Gets
//!   of one item share one flight (and one poll) before the fleet is asked at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::flights::{count_result, renewed, FlightResult, Landed};
use super::jobs::JobEntry;
use super::{seen, served, Engine, GetOptions, GetOutcome, InvalidateOutcome};
use crate::counters::JobMetrics;
use crate::error::Error;
use crate::fleet::{self, Fleet, FleetEvent, ItemChange, Lease, Stored};
use crate::logs::clip;
use crate::model::{FetchReason, ItemKey, ItemState, JobConfig, JobName, Tag};
use crate::policy::{self, Freshness, GetContext, GetPlan, Refresh};
use crate::store::Item;
use crate::subscriptions::EventKind;

/// How often a flight that joined another daemon's fetch looks again if no event came
/// (events wake it at once; the poll finds a dead holder's lease run out).
const POLL: Duration = Duration::from_millis(250);

impl Engine {
    /// Everything known of `job`, asking the fleet when this daemon has not heard of it.
    pub(super) async fn fleet_entry(
        &self,
        fleet: &Fleet,
        job: &JobName,
    ) -> Result<JobEntry, Error> {
        if let Ok(entry) = self.job_entry(job) {
            return Ok(entry);
        }
        fleet.check_up()?;
        match fleet.job(job).await? {
            Some((config, epoch, mark)) => {
                self.adopt_job(job, config, epoch, mark);
                self.job_entry(job)
            }
            None => Err(Error::UnknownJob(job.to_string())),
        }
    }

    /// Takes the fleet's word for a job: its config, its epoch and its mark.
    fn adopt_job(&self, job: &JobName, config: JobConfig, epoch: u64, mark: Option<SystemTime>) {
        let mut jobs = self.inner.jobs.write();
        match jobs.get_mut(job) {
            Some(entry) => {
                let renewed = entry.epoch != epoch;
                entry.config = config;
                entry.epoch = epoch;
                entry.invalidated_before = mark;
                if renewed {
                    // Deleted and registered again elsewhere: its old items are gone.
                    self.inner.subscriptions.emit_prefix(
                        &ItemKey::job_prefix(job),
                        EventKind::Removed,
                        self.now(),
                    );
                }
            }
            None => {
                let entry = JobEntry {
                    config,
                    invalidated_before: mark,
                    metrics: self.inner.metrics.job(job),
                    epoch,
                };
                jobs.insert(job.clone(), entry);
            }
        }
    }

    /// A Get in fleet mode.
    pub(super) async fn fleet_get(
        &self,
        fleet: &Fleet,
        job: &JobName,
        args: &[u8],
        options: GetOptions,
    ) -> Result<GetOutcome, Error> {
        let entry = self.fleet_entry(fleet, job).await?;
        let key = ItemKey::new(job, args);
        let snap = fleet.read(&key, entry.epoch).await?;
        let item = self.seen(&entry, snap.item.clone());
        let u = match entry.config.early_refresh_beta {
            Some(_) => 1.0 - rand::random::<f64>(),
            None => 1.0,
        };
        let now_ms = fleet::now_ms();
        let remembered = snap.remembered(now_ms);
        let m = &entry.metrics;
        let (plan, wait) = {
            let mut table = self.shard(&key).lock();
            let ctx = GetContext {
                fetch_on_miss_override: options.fetch_on_miss,
                max_age: options.max_age,
                in_flight: table.flights.contains_key(&key) || snap.lease_live,
                backed_off: snap.backed_off(now_ms) || self.inner.workers.queue_full(job),
                error_remembered: remembered.is_some(),
            };
            let plan = policy::plan_get(item.as_ref().map(seen), &entry.config, ctx, self.now(), u);
            let wait = match plan {
                GetPlan::ServeFresh(Refresh::Start(reason))
                | GetPlan::ServeStale(Refresh::Start(reason))
                | GetPlan::AnswerMiss(Refresh::Start(reason)) => {
                    m.refreshes_scheduled.inc();
                    if reason == FetchReason::Early {
                        m.early_refreshes.inc();
                    }
                    let c = entry.config;
                    self.start_flight_seen(&mut table, &key, job, &c, m, reason, snap.version);
                    None
                }
                GetPlan::FetchSync { reason, .. } => Some(match table.flights.get(&key) {
                    Some(flight) => flight.done.clone(),
                    None => {
                        m.sync_fetches.inc();
                        let c = entry.config;
                        self.start_flight_seen(&mut table, &key, job, &c, m, reason, snap.version)
                    }
                }),
                _ => None,
            };
            (plan, wait)
        };
        self.answer_get(plan, item, wait, remembered, m).await
    }

    /// A peek in fleet mode: what is stored, nothing started.
    pub(super) async fn fleet_peek(
        &self,
        fleet: &Fleet,
        job: &JobName,
        args: &[u8],
    ) -> Result<GetOutcome, Error> {
        let entry = self.fleet_entry(fleet, job).await?;
        let key = ItemKey::new(job, args);
        let item = self.seen(&entry, fleet.read(&key, entry.epoch).await?.item);
        let times = item.as_ref().map(|i| i.times);
        Ok(match policy::freshness(times, &entry.config, self.now()) {
            Freshness::Fresh => served(ItemState::Fresh, item, false),
            Freshness::Stale => served(ItemState::Stale, item, false),
            Freshness::Absent => served(ItemState::Miss, None, false),
        })
    }

    /// A Set in fleet mode.
    pub(super) async fn fleet_set(
        &self,
        fleet: &Fleet,
        job: &JobName,
        args: &[u8],
        item: Item,
    ) -> Result<(), Error> {
        let entry = self.fleet_entry(fleet, job).await?;
        let key = ItemKey::new(job, args);
        let keep = item.times.stored_at + entry.config.cache_ttl;
        fleet.set(&key, entry.epoch, &item, keep).await?;
        let mut table = self.shard(&key).lock();
        self.inner
            .subscriptions
            .emit(&key, EventKind::Changed, item.times.stored_at);
        table.write_wins(&key);
        Ok(())
    }

    /// A Delete in fleet mode; whether the item was there.
    pub(super) async fn fleet_delete(
        &self,
        fleet: &Fleet,
        job: &JobName,
        args: &[u8],
    ) -> Result<bool, Error> {
        let entry = self.fleet_entry(fleet, job).await?;
        let key = ItemKey::new(job, args);
        let old = fleet.delete(&key, entry.epoch).await?;
        let mut table = self.shard(&key).lock();
        if old.is_some() {
            self.inner
                .subscriptions
                .emit(&key, EventKind::Removed, self.now());
        }
        table.write_wins(&key);
        Ok(old.is_some_and(|i| !policy::is_past_ttl(i.times.stored_at, &entry.config, self.now())))
    }

    /// An Invalidate in fleet mode.
    pub(super) async fn fleet_invalidate(
        &self,
        fleet: &Fleet,
        job: &JobName,
        args: &[u8],
    ) -> Result<InvalidateOutcome, Error> {
        let entry = self.fleet_entry(fleet, job).await?;
        let config = entry.config;
        let key = ItemKey::new(job, args);
        let snap = fleet.read(&key, entry.epoch).await?;
        let now = self.now();
        match &snap.item {
            Some(item) if !policy::is_past_ttl(item.times.stored_at, &config, now) => {}
            _ => return Ok(InvalidateOutcome::default()),
        }
        let (found, held) = fleet.invalidate(&key, entry.epoch, now).await?;
        if !found {
            return Ok(InvalidateOutcome::default());
        }
        let mut table = self.shard(&key).lock();
        self.inner
            .subscriptions
            .emit(&key, EventKind::Invalidated, now);
        let refresh_scheduled = if let Some(flight) = table.flights.get_mut(&key) {
            flight.reinvalidate = true;
            true
        } else if held {
            // The holder's fetch sees the generation move: it stores stale, and refreshes.
            true
        } else if snap.backed_off(fleet::now_ms()) || self.inner.workers.queue_full(job) {
            false
        } else {
            entry.metrics.refreshes_scheduled.inc();
            self.start_flight_seen(
                &mut table,
                &key,
                job,
                &config,
                &entry.metrics,
                FetchReason::Invalidated,
                snap.version,
            );
            true
        };
        Ok(InvalidateOutcome {
            found: true,
            refresh_scheduled,
        })
    }

    /// Runs one flight in fleet mode: fetches under the item's lease if this daemon can
    /// take it, else joins the fetch of the daemon that holds it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn drive_fleet(
        &self,
        fleet: &Fleet,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        id: u64,
        seen_version: u64,
    ) -> FlightResult {
        let joined = self.join(key);
        let result = self
            .lease_or_join(
                fleet,
                &joined,
                key,
                job,
                config,
                metrics,
                reason,
                id,
                seen_version,
            )
            .await;
        self.inner.joins.lock().remove(key);
        let (result, follow_up) = match result {
            Ok((item, follow_up)) => (Ok(item), follow_up),
            Err(e) => (Err(e), None),
        };
        let mut table = self.shard(key).lock();
        if table.flights.get(key).is_some_and(|f| f.id == id) {
            table.flights.remove(key);
            if let Some(version) = follow_up {
                metrics.refreshes_scheduled.inc();
                self.start_flight_seen(
                    &mut table,
                    key,
                    job,
                    config,
                    metrics,
                    FetchReason::Invalidated,
                    version,
                );
            }
        }
        Arc::new(result)
    }

    /// The wake-up of this daemon's flight of `key`, told of the item's every change.
    fn join(&self, key: &ItemKey) -> Arc<Notify> {
        self.inner
            .joins
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// The item the flight ends with, and the version to refresh from when an
    /// invalidation came in during its fetch.
    #[allow(clippy::too_many_arguments)]
    async fn lease_or_join(
        &self,
        fleet: &Fleet,
        joined: &Notify,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        id: u64,
        seen_version: u64,
    ) -> Result<(Item, Option<u64>), Error> {
        let epoch = self.job_entry(job)?.epoch;
        let deadline = Instant::now() + config.refresh_timeout;
        let poll = (config.refresh_timeout / 4).clamp(Duration::from_millis(10), POLL);
        let mut failures_seen = None;
        loop {
            let changed = joined.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let snap = fleet.read(key, epoch).await?;
            if snap.version != seen_version {
                // Someone stored (or deleted) since this flight's Get looked.
                if let Some(item) = snap.item {
                    return Ok((item, None));
                }
            }
            let failures = *failures_seen.get_or_insert(snap.failures);
            if snap.failures > failures && !snap.lease_live {
                return Err(Error::FetchFailed(snap.last_error.unwrap_or_else(|| {
                    "the fetch failed on another daemon of the fleet".into()
                })));
            }
            if !snap.lease_live && self.inner.workers.count(job) > 0 {
                let span = config.refresh_timeout;
                if let Some(lease) = fleet.take_lease(key, epoch, span, snap.version).await? {
                    let current = snap.item;
                    return self
                        .fetch_leased(
                            fleet, key, job, config, metrics, reason, id, epoch, lease, current,
                        )
                        .await;
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::FetchFailed(format!(
                    "no daemon of the fleet finished a fetch of this item within its refresh_timeout ({:?})",
                    config.refresh_timeout
                )));
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Fetches under `lease` through one of this daemon's workers and stores the result
    /// by the fleet's rule (or gives the lease back with the failure).
    #[allow(clippy::too_many_arguments)]
    async fn fetch_leased(
        &self,
        fleet: &Fleet,
        key: &ItemKey,
        job: &JobName,
        config: &JobConfig,
        metrics: &Arc<JobMetrics>,
        reason: FetchReason,
        id: u64,
        epoch: u64,
        lease: Lease,
        current: Option<Item>,
    ) -> Result<(Item, Option<u64>), Error> {
        let started_wall = self.now();
        if lease.failures > 0 {
            metrics.fetches_retried.inc();
        }
        let validator: Arc<[u8]> = match (reason, &current) {
            (FetchReason::Miss, _) | (_, None) => Arc::from(Vec::new()),
            (_, Some(item)) => Arc::from(item.validator.clone()),
        };
        let landed = match self
            .ask_worker(key, job, config, metrics, reason, validator)
            .await
        {
            Ok(Landed::Item(item)) => Ok(item),
            Ok(Landed::NotModified {
                lifetime,
                fetch_took,
            }) => {
                let stored = fleet.read(key, epoch).await?.item;
                renewed(stored, config, self.now(), lifetime, fetch_took)
            }
            Err(e) => Err(e),
        };
        count_result(job, reason, metrics, &landed);
        match landed {
            Ok(item) => {
                let reinvalidated = self
                    .shard(key)
                    .lock()
                    .flights
                    .get(key)
                    .is_some_and(|f| f.id == id && f.reinvalidate);
                let stale = reinvalidated || self.marked_since(job, &item.tags, started_wall);
                let keep = item.times.stored_at + config.cache_ttl;
                let follow_up = match fleet
                    .store_fetched(key, epoch, &lease, &item, keep, stale)
                    .await
                {
                    Ok(Stored::Lost) => None,
                    Ok(stored) => {
                        self.inner.subscriptions.emit(
                            key,
                            EventKind::Changed,
                            item.times.stored_at,
                        );
                        (stored == Stored::Stale).then_some(lease.version + 1)
                    }
                    Err(e) => {
                        tracing::error!(%job, error = %e, "cannot store a fetched item");
                        None
                    }
                };
                Ok((item, follow_up))
            }
            Err(e) => {
                let queue_full = matches!(e, Error::QueueFull { .. } | Error::QueuesFull { .. });
                let given_back = if queue_full {
                    // A full queue says nothing of the origin: no backoff for it.
                    fleet.release(key, epoch, &lease).await
                } else {
                    let delay = policy::backoff_delay(
                        lease.failures + 1,
                        self.inner.settings.retry_base,
                        config.refresh_timeout,
                        rand::random_range(0.5..=1.0),
                    );
                    let now = self.now();
                    let remember = match (config.error_ttl, reason) {
                        (Some(ttl), FetchReason::Miss) => Some(now + ttl),
                        _ => None,
                    };
                    fleet
                        .fail(
                            key,
                            epoch,
                            &lease,
                            now + delay,
                            &clip(&e.to_string()),
                            remember,
                        )
                        .await
                };
                if let Err(store) = given_back {
                    tracing::error!(%job, error = %store, "cannot give a failed fetch's lease back: the item waits for the lease to run out");
                }
                Err(e)
            }
        }
    }

    /// Whether a mark of `job`, or of one of `tags`, came at or after `since`: a fetch
    /// that started before it may hold data from before it, so it is stored stale.
    fn marked_since(&self, job: &JobName, tags: &[Tag], since: SystemTime) -> bool {
        let job_marked = self
            .inner
            .jobs
            .read()
            .get(job)
            .and_then(|e| e.invalidated_before)
            .is_some_and(|m| m >= since);
        if job_marked || tags.is_empty() {
            return job_marked;
        }
        let marks = self.inner.tag_marks.read();
        tags.iter()
            .filter_map(|t| marks.get(t))
            .any(|m| *m >= since)
    }

    /// Registers a job in fleet mode.
    pub(super) async fn fleet_register(
        &self,
        fleet: &Fleet,
        job: &JobName,
        config: JobConfig,
    ) -> Result<(), Error> {
        let max = self.inner.settings.max_jobs;
        if self.job_entry(job).is_err()
            && fleet.job(job).await?.is_none()
            && fleet.job_count().await? >= max
        {
            return Err(Error::TooManyJobs {
                job: job.to_string(),
                max,
            });
        }
        let epoch = fleet.put_job(job, &config).await?;
        let mark = fleet.job_mark(job).await?;
        self.adopt_job(job, config, epoch, mark);
        Ok(())
    }

    /// InvalidateJob in fleet mode.
    pub(super) async fn fleet_invalidate_job(
        &self,
        fleet: &Fleet,
        job: &JobName,
    ) -> Result<SystemTime, Error> {
        self.fleet_entry(fleet, job).await?;
        let mark = policy::times_for_new(self.now(), Duration::ZERO).stored_at;
        fleet.mark_job(job, mark).await?;
        self.apply_job_mark(job, Some(mark));
        Ok(mark)
    }

    fn apply_job_mark(&self, job: &JobName, mark: Option<SystemTime>) {
        let Some(mark) = mark else {
            return;
        };
        let prefix = ItemKey::job_prefix(job);
        let mut tables = self.lock_all();
        for (key, flight) in tables.iter_mut().flat_map(|t| t.flights.iter_mut()) {
            if key.as_bytes().starts_with(&prefix) {
                flight.reinvalidate = true;
            }
        }
        if let Some(entry) = self.inner.jobs.write().get_mut(job) {
            entry.invalidated_before = entry.invalidated_before.max(Some(mark));
        }
        self.inner
            .subscriptions
            .emit_prefix(&prefix, EventKind::Invalidated, mark);
    }

    /// InvalidateTags in fleet mode.
    pub(super) async fn fleet_invalidate_tags(
        &self,
        fleet: &Fleet,
        tags: &[Tag],
    ) -> Result<SystemTime, Error> {
        let mark = policy::times_for_new(self.now(), Duration::ZERO).stored_at;
        fleet.mark_tags(tags, mark).await?;
        self.apply_tag_marks(tags.iter().map(|t| (t.clone(), mark)));
        self.inner.metrics.count_tag_invalidations(tags.len());
        Ok(mark)
    }

    /// Takes tag marks in, and tells every near cache: the items' tags are in Redis, so
    /// every subscribed item is told (a near cache reads again what it dropped).
    fn apply_tag_marks(&self, marks: impl IntoIterator<Item = (Tag, SystemTime)>) {
        let mut latest = None;
        {
            let mut held = self.inner.tag_marks.write();
            for (tag, mark) in marks {
                let at = held.entry(tag).or_insert(mark);
                *at = (*at).max(mark);
                latest = latest.max(Some(mark));
            }
        }
        if let Some(mark) = latest {
            for key in self.inner.subscriptions.subscribed_items() {
                self.inner
                    .subscriptions
                    .emit(&key, EventKind::Invalidated, mark);
            }
        }
    }

    /// DeleteJob in fleet mode.
    pub(super) async fn fleet_delete_job(
        &self,
        fleet: &Fleet,
        job: &JobName,
    ) -> Result<Option<u64>, Error> {
        let removed = fleet.delete_job(job).await?;
        let known_here = self.forget_job(job);
        Ok((removed || known_here).then_some(0))
    }

    /// Forgets a job deleted in the fleet; whether it was known here.
    fn forget_job(&self, job: &JobName) -> bool {
        let prefix = ItemKey::job_prefix(job);
        let known = {
            let mut tables = self.lock_all();
            for table in tables.iter_mut() {
                for (key, flight) in table.flights.iter_mut() {
                    if key.as_bytes().starts_with(&prefix) {
                        flight.superseded = true;
                    }
                }
            }
            self.inner.jobs.write().remove(job).is_some()
        };
        if known {
            self.inner
                .subscriptions
                .emit_prefix(&prefix, EventKind::Removed, self.now());
            self.inner.metrics.forget_job(job);
        }
        known
    }

    /// Hears the fleet's events for good: keeps jobs and marks current, wakes the flights
    /// that joined another daemon's fetch, tells the near caches of other daemons' changes.
    pub(crate) async fn follow_fleet(self, fleet: Fleet, mut events: mpsc::Receiver<FleetEvent>) {
        let shutdown = self.inner.shutdown.clone();
        loop {
            let event = tokio::select! {
                _ = shutdown.closing() => return,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            tokio::select! {
                _ = shutdown.closing() => return,
                heard = self.hear(&fleet, event) => if let Err(e) = heard {
                    tracing::warn!(error = %e, "a change in the fleet could not be read: it is read again when the fleet reconnects");
                },
            }
        }
    }

    async fn hear(&self, fleet: &Fleet, event: FleetEvent) -> Result<(), Error> {
        match event {
            FleetEvent::Connected(subscription) => {
                // Read until it works: the fleet stays down meanwhile, and a loss of this
                // subscription makes `set_up` a no-op (a newer Connected follows).
                let mut jobs = loop {
                    match fleet.jobs().await {
                        Ok(jobs) => break jobs,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the fleet's jobs yet: trying again");
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                };
                // Jobs whose workers are connected here stay known even if the Redis lost
                // them (restarted empty): they are registered there again first.
                for (job, entry) in self.job_entries() {
                    let kept = jobs.configs.iter().any(|(j, _, _)| *j == job);
                    if !kept && self.inner.workers.count(&job) > 0 {
                        let epoch = fleet.put_job_while_down(&job, &entry.config).await?;
                        jobs.configs.push((job, entry.config, epoch));
                    }
                }
                self.replace_jobs(jobs);
                fleet.set_up(subscription);
            }
            FleetEvent::Lost => {
                // What the near caches were told may have missed a change: they start over.
                self.inner.subscriptions.reset_all();
                for joined in self.inner.joins.lock().values() {
                    joined.notify_waiters();
                }
            }
            FleetEvent::Item {
                kind,
                key,
                epoch,
                own,
            } => {
                if let Some(joined) = self.inner.joins.lock().get(&key) {
                    joined.notify_waiters();
                }
                let current = self
                    .inner
                    .jobs
                    .read()
                    .get(std::str::from_utf8(key.job_bytes()).unwrap_or(""))
                    .is_some_and(|e| e.epoch == epoch);
                if own || !current {
                    return Ok(());
                }
                let told = match kind {
                    ItemChange::Changed => EventKind::Changed,
                    ItemChange::Removed => EventKind::Removed,
                    ItemChange::Invalidated => EventKind::Invalidated,
                    ItemChange::Failed | ItemChange::Released => return Ok(()),
                };
                self.inner.subscriptions.emit(&key, told, self.now());
            }
            FleetEvent::JobChanged(job) => {
                if let Some((config, epoch, mark)) = fleet.job(&job).await? {
                    self.adopt_job(&job, config, epoch, mark);
                }
            }
            FleetEvent::JobDeleted(job) => {
                if fleet.job(&job).await?.is_none() {
                    self.forget_job(&job);
                }
            }
            FleetEvent::JobMarked(job) => {
                let mark = fleet.job_mark(&job).await?;
                self.apply_job_mark(&job, mark);
            }
            FleetEvent::TagsMarked(tags) => {
                let marks = fleet.tag_marks(&tags).await?;
                self.apply_tag_marks(marks);
            }
        }
        Ok(())
    }

    /// Everything held of jobs and marks, replaced by what the fleet holds (after a
    /// reconnect: changes may have been missed).
    fn replace_jobs(&self, jobs: fleet::Jobs) {
        let known: HashMap<JobName, (JobConfig, u64)> = jobs
            .configs
            .into_iter()
            .map(|(job, config, epoch)| (job, (config, epoch)))
            .collect();
        let gone: Vec<JobName> = self
            .inner
            .jobs
            .read()
            .keys()
            .filter(|j| !known.contains_key(*j))
            .cloned()
            .collect();
        for job in gone {
            self.forget_job(&job);
        }
        for (job, (config, epoch)) in known {
            let mark = jobs.job_marks.get(&job).copied();
            self.adopt_job(&job, config, epoch, mark);
        }
        *self.inner.tag_marks.write() = jobs.tag_marks;
    }
}
