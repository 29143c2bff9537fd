//! The Prometheus exporter: a registry of the event counters (`counters`) and of the state
//! read from the engine at each scrape, served over HTTP (`--metrics-listen ADDR`,
//! `GET /metrics`). Figures that are state rather than events (workers, items, bytes,
//! store size) are read when scraped, by `StateCollector`, so nothing has to keep them up
//! to date.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::counters::{JobLabels, Metrics};
use crate::engine::Engine;
use crate::shutdown::Shutdown;

/// A registry of every metric: the event counters of `metrics`, and the state of `engine`
/// read at scrape time. `store_moved_aside` says whether the store was found damaged at
/// start.
pub(crate) fn registry(metrics: &Metrics, engine: Engine, store_moved_aside: bool) -> Registry {
    let mut r = Registry::with_prefix("cachebackd");
    metrics.register(&mut r);
    r.register_collector(Box::new(StateCollector {
        engine,
        metrics: metrics.clone(),
        store_moved_aside,
    }));
    r
}

/// The figures that are state, read from the engine at each scrape.
struct StateCollector {
    engine: Engine,
    metrics: Metrics,
    store_moved_aside: bool,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut jobs = self.engine.jobs();
        jobs.sort_by(|a, b| a.0.cmp(&b.0));
        let store = self.engine.store();
        let usage: Vec<_> = jobs
            .iter()
            .map(|(job, _)| {
                let labels = JobLabels {
                    job: job.to_string(),
                };
                let usage = store.usage(job).unwrap_or_else(|e| {
                    tracing::warn!(%job, error = %e, "cannot read the job's usage for metrics");
                    Default::default()
                });
                (
                    labels,
                    self.engine.workers().count(job),
                    usage,
                    store.evictions(job),
                )
            })
            .collect();

        let mut family =
            |name: &str, help: &str, unit: Option<&Unit>, values: Vec<(&JobLabels, i64)>| {
                let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
                for (labels, v) in values {
                    ConstGauge::new(v).encode(m.encode_family(labels)?)?;
                }
                Ok::<_, std::fmt::Error>(())
            };
        family(
            "workers",
            "Worker streams registered for the job now",
            None,
            usage.iter().map(|(l, w, _, _)| (l, *w as i64)).collect(),
        )?;
        family(
            "stored_items",
            "Items stored for the job (stale ones included, until swept)",
            None,
            usage
                .iter()
                .map(|(l, _, u, _)| (l, u.items as i64))
                .collect(),
        )?;
        family(
            "stored_data",
            "Bytes of data stored for the job",
            Some(&Unit::Bytes),
            usage
                .iter()
                .map(|(l, _, u, _)| (l, u.bytes as i64))
                .collect(),
        )?;
        {
            let mut m = encoder.encode_descriptor(
                "evictions",
                "Items of the job evicted, least recently used first, to keep the store under max_bytes",
                None,
                MetricType::Counter,
            )?;
            for (labels, _, _, evicted) in &usage {
                ConstCounter::new(*evicted).encode(m.encode_family(labels)?)?;
            }
        }

        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     unit: Option<&Unit>,
                     v: f64| {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
        };
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
        };
        let size = store.size_on_disk().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the store's size for metrics");
            0
        });
        gauge(
            &mut encoder,
            "store_size",
            "Bytes the store takes on disk",
            Some(&Unit::Bytes),
            size as f64,
        )?;
        gauge(
            &mut encoder,
            "uptime",
            "Time since the daemon started",
            Some(&Unit::Seconds),
            self.metrics.uptime().as_secs_f64(),
        )?;
        let subscriptions = self.engine.subscriptions();
        gauge(
            &mut encoder,
            "subscribed_items",
            "Items the near caches' Subscribe streams hold, counted once per stream",
            None,
            subscriptions.count() as f64,
        )?;
        counter(
            &mut encoder,
            "subscribers_reset",
            "Subscribe streams reset for falling behind",
            subscriptions.resets(),
        )?;
        let started = self
            .metrics
            .started_at()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        gauge(
            &mut encoder,
            "start_time",
            "When the daemon started, in seconds since the Unix epoch",
            Some(&Unit::Seconds),
            started.as_secs_f64(),
        )?;
        gauge(
            &mut encoder,
            "store_counting",
            "1 while the items stored at start are still being counted (in the background): the per-job item and byte figures are what is counted so far",
            None,
            f64::from(u8::from(store.counting())),
        )?;
        counter(
            &mut encoder,
            "corrupt_records",
            "Stored records that failed to decode and were dropped",
            store.corrupt_records(),
        )?;
        counter(
            &mut encoder,
            "stores_moved_aside",
            "Stores found damaged at start and moved aside (the daemon then starts cold)",
            self.store_moved_aside as u64,
        )?;
        let stats = self.engine.workers().stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter(
            &mut encoder,
            "unknown_answers",
            "Worker answers to no fetch in flight on their stream, dropped",
            load(&stats.unknown_answers),
        )?;
        counter(
            &mut encoder,
            "late_answers",
            "Worker answers that came after their fetch's deadline, dropped",
            load(&stats.late_answers),
        )?;
        counter(
            &mut encoder,
            "failovers",
            "Fetches moved to another worker because theirs went away",
            load(&stats.failovers),
        )?;
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until the daemon closes: Prometheus text format,
/// or OpenMetrics when the scraper asks for it. Each connection is a task of `shutdown`.
pub(crate) async fn serve(listener: TcpListener, registry: Registry, shutdown: Shutdown) {
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.closing() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let closing = shutdown.clone();
        shutdown.spawn(async move {
            let service = hyper::service::service_fn(move |req| scrape(req, registry.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = closing.closing() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "metrics connection ended");
                },
            }
        });
    }
}

async fn scrape(
    req: Request<Incoming>,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, content_type: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        Ok(resp)
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "cachebackd serves its metrics at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    let openmetrics = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    // Reading the store (its size on disk) may touch the disk: off the async threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut body, &registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)
        };
        r.map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) if openmetrics => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Ok(Ok(body)) => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            body,
        ),
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "cannot encode the metrics\n".into(),
        ),
    }
}

/// Binds the metrics endpoint.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
