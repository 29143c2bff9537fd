//! One shutdown for the whole daemon, as mini-redis's `server.rs` has it: a **drain**
//! signal (SIGTERM: stop accepting, let calls in flight finish), a **close** signal (end
//! every worker stream, watch stream and background task), the calls in flight the drain
//! waits for, and a `TaskTracker` that owns every task the daemon spawns (flight drivers,
//! worker streams, health watches, the sweeper, the metrics server and its connections,
//! the watchdog), so the daemon returns only once all of them have.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// The daemon's shutdown: a cheap-to-clone handle, one per daemon.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    close: CancellationToken,
    calls: TaskTracker,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown not yet begun.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the drain (what SIGTERM and SIGINT do).
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Resolves once the drain has begun.
    pub async fn draining(&self) {
        self.drain.cancelled().await
    }

    /// The drain signal, for what takes a token (tonic's graceful shutdown).
    pub(crate) fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Ends every stream and background task: the drain is over.
    pub(crate) fn close(&self) {
        self.close.cancel();
    }

    /// Resolves once [`close`](Shutdown::close) was called.
    pub(crate) async fn closing(&self) {
        self.close.cancelled().await
    }

    /// Marks a call in flight until the token is dropped: the drain waits for it.
    pub(crate) fn call(&self) -> TaskTrackerToken {
        self.calls.token()
    }

    /// Waits at most `grace` for the calls in flight; whether they all finished.
    pub(crate) async fn wait_for_calls(&self, grace: Duration) -> bool {
        self.calls.close();
        tokio::time::timeout(grace, self.calls.wait()).await.is_ok()
    }

    /// Spawns `task`, owned by the daemon: shutdown waits for it.
    pub(crate) fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Waits at most `grace` for every spawned task (each ends on [`close`]); whether
    /// they all ended.
    ///
    /// [`close`]: Shutdown::close
    pub(crate) async fn wait_for_tasks(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}
