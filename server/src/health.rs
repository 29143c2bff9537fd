//! The gRPC health service (`grpc.health.v1.Health`, from tonic-health): NOT_SERVING until
//! the daemon is ready, SERVING while it serves, NOT_SERVING again from the first moment
//! of the drain.
//!
//! tonic-health's `Watch` streams never end on their own, which would hold every
//! connection open past the drain; here each one ends with the daemon's worker streams,
//! and its last word is always NOT_SERVING.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::shutdown::Shutdown;

/// The names whose health is reported: the whole server (`""`) and each service.
pub(crate) const SERVICES: [&str; 3] =
    ["", "cacheback.v1.Cacheback", "cacheback.v1.CachebackAdmin"];

/// Sets every reported service to `status`.
pub(crate) async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Reports NOT_SERVING while the store refuses writes (its disk is full, or it failed; a
/// fleet's Redis cannot be reached) and SERVING again once it takes them, until `stop`;
/// `initially` is whether SERVING was reported last. Checked every 250 ms: the store's own
/// check reads free space at most that often.
pub(crate) async fn follow_store(
    store: std::sync::Arc<dyn crate::store::Store>,
    reporter: HealthReporter,
    stop: tokio_util::sync::CancellationToken,
    initially: bool,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writable = initially;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = store.writable();
        if now.is_ok() != writable {
            writable = now.is_ok();
            match now {
                Ok(()) => {
                    tracing::info!("the store takes writes again: health is SERVING");
                    set_all(&reporter, ServingStatus::Serving).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the store refuses writes, or cannot be reached: health is NOT_SERVING");
                    set_all(&reporter, ServingStatus::NotServing).await;
                }
            }
        }
    }
}

/// A reporter, NOT_SERVING for every service, and the server that reports it; the `Watch`
/// streams are tasks of `shutdown` and end when the daemon closes.
pub(crate) async fn service(shutdown: Shutdown) -> (HealthReporter, HealthServer<DrainingHealth>) {
    let reporter = HealthReporter::new();
    set_all(&reporter, ServingStatus::NotServing).await;
    let inner = HealthService::from_health_reporter(reporter.clone());
    (
        reporter,
        HealthServer::new(DrainingHealth { inner, shutdown }),
    )
}

/// tonic-health's service, with `Watch` streams that end at shutdown.
#[derive(Debug)]
pub(crate) struct DrainingHealth {
    inner: HealthService,
    shutdown: Shutdown,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut updates = self.inner.watch(request).await?.into_inner();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(4);
        self.shutdown.spawn(async move {
            let not_serving = Wire::NotServing as i32;
            let mut last = None;
            loop {
                tokio::select! {
                    biased;
                    update = updates.next() => match update {
                        Some(Ok(r)) => {
                            last = Some(r.status);
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(status)) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        None => return,
                    },
                    _ = shutdown.closing() => break,
                }
            }
            if last != Some(not_serving) {
                let _ = tx
                    .send(Ok(HealthCheckResponse {
                        status: not_serving,
                    }))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
