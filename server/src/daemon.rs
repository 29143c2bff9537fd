//! The daemon's lifecycle: open the store, bind every listener, serve, and on shutdown drain
//! in order — stop accepting, let in-flight calls finish within the grace period (workers stay
//! connected so they can answer them), end every worker stream, flush the store.

use std::sync::Arc;
use std::time::Duration;

use cachebackd_proto::v1::cacheback_server::CachebackServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::config::{Config, ListenAddr};
use crate::engine::Engine;
use crate::service::CachebackService;
use crate::store::{SledStore, Store};

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be used at all.
    #[error(transparent)]
    Store(#[from] crate::error::Error),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: ListenAddr,
        /// Why.
        source: std::io::Error,
    },
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Runs the daemon until `stop` is cancelled, then shuts down gracefully.
pub async fn run(config: Config, stop: CancellationToken) -> Result<(), DaemonError> {
    let (store, report) = SledStore::open(&config.data_dir, config.flush_interval)?;
    if let Some(aside) = &report.moved_aside {
        tracing::error!(
            moved_to = %aside.display(),
            reason = report.reason.as_deref().unwrap_or(""),
            "THE STORE COULD NOT BE OPENED: it was moved aside and cachebackd starts with an empty cache"
        );
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let engine = Engine::new(store, config.engine_settings())?;

    let mut bound = Vec::new();
    for addr in &config.listen {
        bound.push(bind(addr).await.map_err(|source| DaemonError::Bind {
            addr: addr.clone(),
            source,
        })?);
    }

    let end_streams = CancellationToken::new();
    let calls = TaskTracker::new();
    let max = config.max_message_bytes();
    let service = CachebackServer::new(CachebackService::new(
        engine.clone(),
        end_streams.clone(),
        calls.clone(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    let mut servers = JoinSet::new();
    for listener in bound {
        let router = Server::builder().add_service(service.clone());
        let signal = stop.clone().cancelled_owned();
        match listener {
            Bound::Tcp(l) => {
                let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
                servers.spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                });
            }
            Bound::Unix(l) => {
                let incoming = UnixListenerStream::new(l);
                servers.spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                });
            }
        }
    }
    let sweeper = tokio::spawn(engine.clone().run_sweeper(end_streams.clone()));
    tracing::info!(
        listen = ?config.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        data_dir = %config.data_dir.display(),
        jobs = engine.jobs().len(),
        "cachebackd is serving"
    );

    stop.cancelled().await;
    tracing::info!(grace = ?config.drain_grace, "shutting down: draining in-flight calls");
    calls.close();
    let drained = tokio::time::timeout(config.drain_grace, calls.wait())
        .await
        .is_ok();
    if !drained {
        tracing::warn!("drain grace period over; calls still in flight are cut off");
    }
    end_streams.cancel();
    let _ = sweeper.await;
    let wait_servers = async {
        while let Some(r) = servers.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, "listener failed");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(2), wait_servers)
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    if let Err(e) = engine.flush().await {
        tracing::error!(error = %e, "final flush failed");
    }
    for addr in &config.listen {
        if let ListenAddr::Unix(path) = addr {
            let _ = std::fs::remove_file(path);
        }
    }
    tracing::info!("cachebackd stopped");
    Ok(())
}

async fn bind(addr: &ListenAddr) -> std::io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(a) => Ok(Bound::Tcp(TcpListener::bind(a).await?)),
        ListenAddr::Unix(path) => {
            // A socket file left by a previous run that did not stop cleanly: take its place,
            // but never remove anything that is not a socket.
            use std::os::unix::fs::FileTypeExt;
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
            Ok(Bound::Unix(UnixListener::bind(path)?))
        }
    }
}
