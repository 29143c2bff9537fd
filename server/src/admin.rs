//! The `cacheback.v1.CachebackAdmin` service: what an operator asks a running daemon
//! (`cachebackd ctl jobs`, `stats`, `invalidate-job`, `delete-job`). As thin as the main
//! service: validate, call the engine, map errors to a `Status` (through the same
//! `From<Error>`).

use std::time::SystemTime;

use cachebackd_proto::v1::{self as pb, cacheback_admin_server::CachebackAdmin};
use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::convert;
use crate::engine::{Engine, JobEntry};
use crate::error::Error;
use crate::model::JobName;
use crate::shutdown::Shutdown;
use crate::store::Usage;

/// The admin service over `engine`.
#[derive(Clone)]
pub(crate) struct AdminService {
    engine: Engine,
    store_moved_aside: bool,
    shutdown: Shutdown,
}

impl AdminService {
    /// `store_moved_aside` says whether the store was found damaged at start; `shutdown`
    /// counts calls in flight, as the main service's, so the drain waits for them.
    pub(crate) fn new(engine: Engine, store_moved_aside: bool, shutdown: Shutdown) -> Self {
        AdminService {
            engine,
            store_moved_aside,
            shutdown,
        }
    }

    fn job(&self, name: &str) -> Result<JobName, Status> {
        Ok(JobName::parse(name, self.engine.limits())?)
    }

    /// Every job with its workers and usage (read from the store: off the async threads).
    async fn jobs(&self) -> Result<Vec<pb::JobInfo>, Status> {
        let engine = self.engine.clone();
        let infos = tokio::task::spawn_blocking(move || {
            let mut entries = engine.job_entries();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries
                .into_iter()
                .map(|(name, entry)| {
                    let usage = engine.store().usage(&name)?;
                    Ok(job_info(&engine, &name, &entry, usage))
                })
                .collect::<Result<Vec<_>, Error>>()
        })
        .await
        .map_err(|e| Status::internal(format!("list task failed: {e}")))?;
        Ok(infos?)
    }
}

fn job_info(engine: &Engine, name: &JobName, entry: &JobEntry, usage: Usage) -> pb::JobInfo {
    pb::JobInfo {
        name: name.to_string(),
        config: Some(convert::job_config_to_proto(&entry.config)),
        workers: engine.workers().count(name) as u32,
        items: usage.items,
        bytes: usage.bytes,
        invalidated_before: entry.invalidated_before.map(Into::into),
        counters: Some(convert::job_counters(&entry.metrics)),
        counting: engine.store().counting(),
    }
}

fn add(total: &mut pb::JobCounters, c: &pb::JobCounters) {
    total.gets_fresh += c.gets_fresh;
    total.gets_stale += c.gets_stale;
    total.gets_miss += c.gets_miss;
    total.sync_fetches += c.sync_fetches;
    total.refreshes_scheduled += c.refreshes_scheduled;
    total.fetches_succeeded += c.fetches_succeeded;
    total.fetches_failed += c.fetches_failed;
    total.fetches_retried += c.fetches_retried;
    total.fetches_in_flight += c.fetches_in_flight;
}

#[tonic::async_trait]
impl CachebackAdmin for AdminService {
    async fn list_jobs(
        &self,
        _req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let _call = self.shutdown.call();
        Ok(Response::new(pb::ListJobsResponse {
            jobs: self.jobs().await?,
        }))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let _call = self.shutdown.call();
        let jobs = self.jobs().await?;
        let mut totals = pb::JobCounters::default();
        for job in &jobs {
            if let Some(c) = &job.counters {
                add(&mut totals, c);
            }
        }
        let store = self.engine.store().clone();
        let store_bytes = tokio::task::spawn_blocking(move || store.size_on_disk())
            .await
            .map_err(|e| Status::internal(format!("stats task failed: {e}")))??;
        let metrics = self.engine.metrics();
        Ok(Response::new(pb::StatsResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            started_at: Some(metrics.started_at().into()),
            uptime: prost_types::Duration::try_from(metrics.uptime()).ok(),
            store_bytes,
            jobs: jobs.len() as u32,
            workers: jobs.iter().map(|j| j.workers).sum(),
            items: jobs.iter().map(|j| j.items).sum(),
            corrupt_records: self.engine.store().corrupt_records(),
            store_moved_aside: self.store_moved_aside,
            totals: Some(totals),
            counting: self.engine.store().counting(),
        }))
    }

    async fn invalidate_job(
        &self,
        req: Request<pb::InvalidateJobRequest>,
    ) -> Result<Response<pb::InvalidateJobResponse>, Status> {
        let _call = self.shutdown.call();
        let access = Access::of(&req)?;
        let job = self.job(&req.into_inner().job)?;
        access.allow(&job)?;
        let mark: SystemTime = self.engine.invalidate_job(&job).await?;
        tracing::info!(%job, "job invalidated: its items refresh on their next Get");
        Ok(Response::new(pb::InvalidateJobResponse {
            invalidated_before: Some(mark.into()),
        }))
    }

    async fn delete_job(
        &self,
        req: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let _call = self.shutdown.call();
        let access = Access::of(&req)?;
        let job = self.job(&req.into_inner().job)?;
        access.allow(&job)?;
        let removed = self.engine.delete_job(&job).await?;
        if let Some(items) = removed {
            tracing::info!(%job, items, "job deleted");
        }
        Ok(Response::new(pb::DeleteJobResponse {
            found: removed.is_some(),
            items_removed: removed.unwrap_or(0),
        }))
    }
}
