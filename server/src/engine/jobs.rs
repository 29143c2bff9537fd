//! The registry of jobs: each known job's config, invalidation mark and counters, loaded
//! from the store at start and changed by Register, InvalidateJob and DeleteJob. Job-wide
//! changes lock every shard of the single-flight table first (see the lock order in
//! `engine`), so no item write can slip between them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Engine;
use crate::counters::JobMetrics;
use crate::error::Error;
use crate::model::{ItemKey, JobConfig, JobName};
use crate::policy;
use crate::subscriptions::EventKind;

/// A known job: its config, its invalidation instant and its counters, resolved once so
/// that a Get only increments them.
#[derive(Clone)]
pub(crate) struct JobEntry {
    /// The effective config.
    pub config: JobConfig,
    /// Items stored at or before this instant count as stale (InvalidateJob).
    pub invalidated_before: Option<SystemTime>,
    /// The job's counters.
    pub metrics: Arc<JobMetrics>,
    /// In fleet mode, the job's epoch: part of its items' keys, new after a DeleteJob (0
    /// on sled).
    pub epoch: u64,
}

impl Engine {
    /// The config of `job`, or `UnknownJob`.
    pub(crate) fn job_config(&self, job: &JobName) -> Result<JobConfig, Error> {
        self.job_entry(job).map(|e| e.config)
    }
    /// Everything known of `job`, or `UnknownJob`.
    pub(crate) fn job_entry(&self, job: &JobName) -> Result<JobEntry, Error> {
        let jobs = self.inner.jobs.read();
        jobs.get(job)
            .cloned()
            .ok_or_else(|| Error::UnknownJob(job.to_string()))
    }
    /// Every known job and its config.
    pub(crate) fn jobs(&self) -> Vec<(JobName, JobConfig)> {
        let jobs = self.inner.jobs.read();
        jobs.iter().map(|(k, v)| (k.clone(), v.config)).collect()
    }
    /// Every known job and everything known of it.
    pub(crate) fn job_entries(&self) -> Vec<(JobName, JobEntry)> {
        let jobs = self.inner.jobs.read();
        jobs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    /// Makes `config` the job's config (the latest registration wins) and stores it durably.
    pub(crate) async fn register_job(&self, job: &JobName, config: JobConfig) -> Result<(), Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_register(fleet, job, config).await;
        }
        let max = self.inner.settings.max_jobs;
        {
            let jobs = self.inner.jobs.read();
            if !jobs.contains_key(job) && jobs.len() >= max {
                return Err(Error::TooManyJobs {
                    job: job.to_string(),
                    max,
                });
            }
        }
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
                    epoch: 0,
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
    pub(crate) async fn invalidate_job(&self, job: &JobName) -> Result<SystemTime, Error> {
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_invalidate_job(fleet, job).await;
        }
        self.job_entry(job)?;
        let mark = policy::times_for_new(self.now(), Duration::ZERO).stored_at;
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
            self.inner
                .subscriptions
                .emit_prefix(&prefix, EventKind::Invalidated, mark);
        }
        self.flush().await?;
        Ok(mark)
    }
    /// Removes `job`: its config, its items and its mark; how many items went, or `None` if
    /// the job was not known. Refused while workers of the job are connected, since they
    /// would register it again at once. Fetches in flight finish, unstored.
    pub(crate) async fn delete_job(&self, job: &JobName) -> Result<Option<u64>, Error> {
        let workers = self.inner.workers.count(job);
        if workers > 0 {
            return Err(Error::FailedPrecondition(format!(
                "job {job:?} has {workers} worker(s) connected: stop them before deleting it"
            )));
        }
        if let Some(fleet) = &self.inner.fleet {
            return self.fleet_delete_job(fleet, job).await;
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
            // From here its items read as NOT_FOUND: no near cache may serve them.
            self.inner
                .subscriptions
                .emit_prefix(&prefix, EventKind::Removed, self.now());
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
    /// Whether `job` still exists, asked under the item's shard lock just before a store
    /// write: `delete_job` removes the job while holding every shard, so a write that
    /// looked the job up before a DeleteJob cannot leave an item behind it.
    pub(super) fn still_known(&self, job: &JobName) -> Result<(), Error> {
        if self.inner.jobs.read().contains_key(job) {
            Ok(())
        } else {
            Err(Error::UnknownJob(job.to_string()))
        }
    }
}
