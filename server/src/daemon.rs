//! The daemon's lifecycle: open the store, bind every listener, serve, and on shutdown drain
//! in order — stop accepting, let in-flight calls finish within the grace period (workers stay
//! connected so they can answer them), end every worker stream, flush the store.
//!
//! What an operator sees of it: systemd hears READY=1 only once the store is open and every
//! listener (gRPC and metrics) is bound, and STOPPING=1 when the drain starts; gRPC health
//! says SERVING in between and NOT_SERVING from the first moment of the drain.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cachebackd_proto::v1::cacheback_admin_server::CachebackAdminServer;
use cachebackd_proto::v1::cacheback_server::CachebackServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin::AdminService;
use crate::auth::Auth;
use crate::budget::ByteBudget;
use crate::config::{Config, ListenAddr};
use crate::connections::{self, Connections};
use crate::counters::Metrics;
use crate::engine::Engine;
use crate::intake::IntakeLayer;
use crate::oversize::OversizeLayer;
use crate::security::Reloader;
use crate::service::CachebackService;
use crate::shutdown::Shutdown;
use crate::store::{SledStore, Store};
use crate::systemd::{self, PassedSocket};
use crate::unsent::UnsentLayer;

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
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A socket passed by systemd is not one the daemon can serve on.
    #[error("socket {name:?} passed by systemd cannot be used: {source}")]
    Passed {
        /// Its FileDescriptorName.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The principals or the TLS files cannot be used.
    #[error("{0}")]
    Security(String),
}

/// Opens the store the config names and the engine over it; whether a damaged store was
/// moved aside at start.
fn open_engine(
    config: &Config,
    metrics: &Metrics,
    shutdown: &Shutdown,
) -> Result<(Engine, bool), DaemonError> {
    if config.store.url.is_fleet() {
        let (fleet, events) = crate::fleet::Fleet::start(&config.store.url, shutdown)?;
        tracing::info!(store = %fleet.name(), "fleet mode: items, jobs and marks live in Redis (max_bytes is Redis' maxmemory there)");
        let engine = Engine::with_fleet(
            fleet,
            events,
            config.engine_settings(),
            metrics.clone(),
            shutdown.clone(),
        )?;
        return Ok((engine, false));
    }
    let (store, report) =
        SledStore::open_bounded(&config.data_dir, config.flush_interval, config.max_bytes)?;
    if let Some(aside) = &report.moved_aside {
        let kept = report.salvaged.clone().unwrap_or_default();
        tracing::error!(
            moved_to = %aside.display(),
            reason = report.reason.as_deref().unwrap_or(""),
            kept_items = kept.items,
            kept_jobs = kept.jobs,
            lost_records = kept.lost_records,
            unread_log_bytes = kept.unread_log_bytes,
            "THE STORE WAS DAMAGED: it was moved aside, and what could be read of it was salvaged into a fresh store"
        );
    }
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(store);
    let engine = Engine::new(
        store,
        config.engine_settings(),
        metrics.clone(),
        shutdown.clone(),
    )?;
    Ok((engine, report.moved_aside.is_some()))
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Runs the daemon on the sockets systemd passed (socket activation) when there are any,
/// else on the configured listen addresses, until `shutdown`'s drain begins; then shuts
/// down gracefully and returns once every task it spawned has ended.
pub async fn run_with_sockets(
    config: Config,
    passed: Vec<PassedSocket>,
    shutdown: Shutdown,
) -> Result<(), DaemonError> {
    run_with_reload(config, passed, shutdown, None).await
}

/// [`run_with_sockets`], reloading the principals and TLS files from `reload` on SIGHUP.
pub async fn run_with_reload(
    config: Config,
    passed: Vec<PassedSocket>,
    shutdown: Shutdown,
    reload: Option<crate::security::ReloadSource>,
) -> Result<(), DaemonError> {
    let security = crate::security::load(&config, None).map_err(DaemonError::Security)?;
    crate::security::warn_if_tokens_in_plaintext(&config);
    let auth = Auth::new(security.principals);
    let tls = security
        .tls
        .map(|c| std::sync::Arc::new(arc_swap::ArcSwap::new(c)));
    if let Some(source) = reload {
        Reloader {
            source,
            auth: auth.clone(),
            tls: tls.clone(),
        }
        .spawn(&shutdown);
    }
    let metrics = Metrics::new();
    let (engine, store_moved_aside) = open_engine(&config, &metrics, &shutdown)?;
    // The daemon serves at once; what a start counts of the items is counted meanwhile.
    engine.store().clone().count_in_background();

    let (bound, metrics_listener, serving_on) = bind_all(&config, passed).await?;

    let max = config.max_message_bytes();
    let service = CachebackServer::new(CachebackService::new(engine.clone(), shutdown.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let admin = CachebackAdminServer::new(AdminService::new(
        engine.clone(),
        store_moved_aside,
        shutdown.clone(),
    ));
    let (health, health_service) = crate::health::service(shutdown.clone()).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cachebackd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cachebackd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // Everything is ready: the store is open and every listener bound. Health says so before
    // the first call can be accepted, so no caller ever sees a ready daemon report otherwise.
    // A fleet whose Redis is not reachable yet starts NOT_SERVING, and turns SERVING by
    // itself once it is (`follow_store`).
    let writable = engine.store().writable().is_ok();
    let ready = match writable {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    crate::health::set_all(&health, ready).await;
    let connections = Connections::new(config.max_connections, config.idle_timeout);
    let unsent = ByteBudget::new(config.max_unsent_bytes);
    let intake = IntakeLayer {
        budget: ByteBudget::new(config.max_answer_bytes),
        max_message: max,
        notices_dropped: Default::default(),
    };
    let mut servers = JoinSet::new();
    for listener in bound {
        let router = Server::builder()
            .max_concurrent_streams(connections::MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(connections::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(connections::KEEPALIVE_TIMEOUT))
            .layer(connections.layer())
            .layer(UnsentLayer {
                budget: unsent.clone(),
                connections: connections.clone(),
            })
            .layer(OversizeLayer {
                max_data_bytes: config.max_data_bytes,
            })
            .layer(auth.layer())
            .layer(intake.clone())
            .add_service(service.clone())
            .add_service(admin.clone())
            .add_service(health_service.clone())
            .add_service(reflection_v1.clone())
            .add_service(reflection_v1alpha.clone());
        let signal = shutdown.drain_token().cancelled_owned();
        match listener {
            Bound::Tcp(l) if tls.is_some() => {
                let incoming =
                    crate::tls::incoming(connections.tcp(l), tls.clone().expect("TLS is on"));
                servers.spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                });
            }
            Bound::Tcp(l) => {
                let incoming = connections.tcp(l);
                servers.spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                });
            }
            Bound::Unix(l) => {
                let incoming = connections.unix(l);
                servers.spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                });
            }
        }
    }
    if let Some(l) = metrics_listener {
        let mut registry = crate::metrics::registry(&metrics, engine.clone(), store_moved_aside);
        connections::register_metrics(&mut registry, connections.stats());
        crate::intake::register_metrics(&mut registry, &intake);
        crate::unsent::register_metrics(&mut registry, &unsent);
        auth.register_metrics(&mut registry);
        shutdown.spawn(crate::metrics::serve(l, registry, shutdown.clone()));
    }
    shutdown.spawn(engine.clone().run_sweeper());
    systemd::spawn_watchdog(&shutdown);
    // Ends before the drain reports NOT_SERVING, so that it cannot report SERVING after.
    let store_watch_stop = CancellationToken::new();
    let store_watch = shutdown.spawn(crate::health::follow_store(
        engine.store().clone(),
        health.clone(),
        store_watch_stop.clone(),
        writable,
    ));

    let jobs = engine.jobs().len();
    tracing::info!(
        listen = ?serving_on,
        metrics = ?config.metrics_listen,
        store = %match config.store.url.is_fleet() {
            true => config.store.url.describe(),
            false => format!("sled in {}", config.data_dir.display()),
        },
        tls = tls.is_some(),
        auth_required = auth.required(),
        jobs,
        "cachebackd is serving"
    );
    systemd::ready(&format!(
        "serving on {}; {jobs} jobs known",
        serving_on.join(", ")
    ));

    shutdown.draining().await;
    systemd::stopping("draining in-flight calls");
    store_watch_stop.cancel();
    let _ = store_watch.await;
    crate::health::set_all(&health, ServingStatus::NotServing).await;
    tracing::info!(grace = ?config.drain_grace, "shutting down: draining in-flight calls");
    if !shutdown.wait_for_calls(config.drain_grace).await {
        tracing::warn!("drain grace period over; calls still in flight are cut off");
    }
    shutdown.close();
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
    if !shutdown.wait_for_tasks(Duration::from_secs(2)).await {
        tracing::warn!("some tasks did not end in time");
    }
    if let Err(e) = engine.close().await {
        tracing::error!(error = %e, "closing the store failed");
    }
    for addr in &config.listen {
        if let ListenAddr::Unix(path) = addr {
            if !serving_on.iter().any(|s| s == &addr.to_string()) {
                continue;
            }
            let _ = std::fs::remove_file(path);
        }
    }
    tracing::info!("cachebackd stopped");
    Ok(())
}

/// Binds the gRPC listeners (the passed sockets, else the configured addresses) and the
/// metrics listener; what it serves on, for the log.
async fn bind_all(
    config: &Config,
    passed: Vec<PassedSocket>,
) -> Result<(Vec<Bound>, Option<TcpListener>, Vec<String>), DaemonError> {
    let mut bound = Vec::new();
    let mut serving_on = Vec::new();
    let mut metrics_listener = None;
    let socket_activated = passed.iter().any(|p| p.name != "metrics");
    for socket in passed {
        let (listener, addr) = adopt(socket.fd).map_err(|source| DaemonError::Passed {
            name: socket.name.clone(),
            source,
        })?;
        if socket.name == "metrics" {
            let Bound::Tcp(l) = listener else {
                return Err(DaemonError::Passed {
                    name: socket.name,
                    source: std::io::Error::other("the metrics socket must be a TCP socket"),
                });
            };
            metrics_listener = Some(l);
            continue;
        }
        tracing::info!(socket = %socket.name, %addr, "serving on a socket passed by systemd");
        serving_on.push(addr);
        bound.push(listener);
    }
    if socket_activated {
        if !config.listen.is_empty() {
            tracing::info!(
                ignored = ?config.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "socket activation: listen addresses from flags or file are not bound"
            );
        }
    } else {
        for addr in &config.listen {
            let listener =
                bind(addr, config.socket_mode.0)
                    .await
                    .map_err(|source| DaemonError::Bind {
                        addr: addr.to_string(),
                        source,
                    })?;
            serving_on.push(match (&listener, addr) {
                (Bound::Tcp(l), _) => l.local_addr().map_or(addr.to_string(), |a| a.to_string()),
                (Bound::Unix(_), _) => addr.to_string(),
            });
            bound.push(listener);
        }
    }
    if metrics_listener.is_none() {
        if let Some(addr) = config.metrics_listen {
            metrics_listener =
                Some(
                    crate::metrics::bind(addr)
                        .await
                        .map_err(|source| DaemonError::Bind {
                            addr: format!("{addr} (metrics)"),
                            source,
                        })?,
                );
        }
    }
    Ok((bound, metrics_listener, serving_on))
}

/// Turns a socket systemd passed into a listener: TCP or Unix, whichever it is.
fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<(Bound, String)> {
    let tcp = std::net::TcpListener::from(fd);
    if let Ok(addr) = tcp.local_addr() {
        tcp.set_nonblocking(true)?;
        return Ok((Bound::Tcp(TcpListener::from_std(tcp)?), addr.to_string()));
    }
    let unix = std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(tcp));
    let addr = unix.local_addr()?;
    unix.set_nonblocking(true)?;
    let name = match addr.as_pathname() {
        Some(p) => format!("unix:{}", p.display()),
        None => "unix:(unnamed)".into(),
    };
    Ok((Bound::Unix(UnixListener::from_std(unix)?), name))
}

async fn bind(addr: &ListenAddr, socket_mode: u32) -> std::io::Result<Bound> {
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
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))?;
            Ok(Bound::Unix(listener))
        }
    }
}
