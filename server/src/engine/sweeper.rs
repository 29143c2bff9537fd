//! The sweeper: every `sweep_interval`, removes the items past their job's cache_ttl and
//! those of jobs that no longer exist, and forgets backoff records nobody will read.

use std::time::SystemTime;

use super::Engine;
use crate::error::Error;

impl Engine {
    /// Removes the items past their job's cache_ttl, and the items of jobs that no longer
    /// exist (the job is looked up live, item by item); how many went.
    pub(crate) fn sweep(&self, now: SystemTime) -> Result<usize, Error> {
        let config_of = |name: &str| self.inner.jobs.read().get(name).map(|e| e.config);
        self.inner.store.sweep(&config_of, now)
    }
    /// Runs the sweeper every `sweep_interval` until the daemon closes.
    pub(crate) async fn run_sweeper(self) {
        let shutdown = self.inner.shutdown.clone();
        let mut tick = tokio::time::interval(self.inner.settings.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.closing() => return,
                _ = tick.tick() => {}
            }
            self.prune_backoff();
            let engine = self.clone();
            match tokio::task::spawn_blocking(move || engine.sweep(engine.now())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(removed = n, "swept items past their cache_ttl"),
                Ok(Err(e)) => tracing::error!(error = %e, "sweep failed"),
                Err(e) => tracing::error!(error = %e, "sweep task failed"),
            }
        }
    }
}
