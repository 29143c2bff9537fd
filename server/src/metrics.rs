//! Prometheus metrics: what the engine counts as it works, what is measured at scrape time,
//! and the HTTP endpoint (`--metrics-listen ADDR`, `GET /metrics`).
//!
//! The Get-hit path must cost next to nothing, so nothing there looks up or hashes a label
//! set: each job's counters are resolved once, when the job becomes known, into a
//! [`JobMetrics`] kept next to its config, and a Get only increments an atomic. Figures that
//! are state rather than events (workers, items, bytes, store size) are read when scraped,
//! by `StateCollector`, so nothing has to keep them up to date.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::model::JobName;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Outcome {
    fresh,
    stale,
    miss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GetLabels {
    job: String,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum FetchResult {
    succeeded,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    job: String,
    result: FetchResult,
}

type HistogramFamily = Family<JobLabels, Histogram, fn() -> Histogram>;

fn fetch_histogram() -> Histogram {
    // 1 ms to about 65 s: the default refresh_timeout is 60 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The daemon's event counters, by job. A cheap-to-clone handle.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    started: Instant,
    started_wall: SystemTime,
    gets: Family<GetLabels, Counter>,
    sync_fetches: Family<JobLabels, Counter>,
    refreshes_scheduled: Family<JobLabels, Counter>,
    fetches: Family<FetchLabels, Counter>,
    fetches_retried: Family<JobLabels, Counter>,
    fetch_duration: HistogramFamily,
    fetches_in_flight: Family<JobLabels, Gauge>,
    early_refreshes: Family<JobLabels, Counter>,
    gets_absent: Family<JobLabels, Counter>,
    not_modified: Family<JobLabels, Counter>,
    fetch_batch_size: HistogramFamily,
    tag_invalidations: Counter,
}

fn batch_histogram() -> Histogram {
    // 1 to 1024 fetches per message.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One job's counters, resolved once: every update is a single atomic operation.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// Gets that found the item fresh.
    pub gets_fresh: Counter,
    /// Gets that found the item stale.
    pub gets_stale: Counter,
    /// Gets that found no item.
    pub gets_miss: Counter,
    /// Fetches started for a Get that waits for them.
    pub sync_fetches: Counter,
    /// Background fetches started (stale hit, asynchronous miss, Invalidate).
    pub refreshes_scheduled: Counter,
    /// Fetches a worker answered with data.
    pub fetches_succeeded: Counter,
    /// Fetches that failed (worker error, timeout, no worker).
    pub fetches_failed: Counter,
    /// Fetches started for an item whose previous fetch failed.
    pub fetches_retried: Counter,
    /// How long fetches took, queueing included.
    pub fetch_duration: Histogram,
    /// Fetches running now.
    pub fetches_in_flight: Gauge,
    /// Refreshes XFetch started on a fresh hit (reason EARLY).
    pub early_refreshes: Counter,
    /// Gets answered with a stored absence (`absent = true`).
    pub gets_absent: Counter,
    /// Fetches a worker answered NotModified (counted as succeeded too).
    pub not_modified: Counter,
    /// Fetches per message sent to a worker of the job (1 without batching).
    pub fetch_batch_size: Histogram,
}

impl JobMetrics {
    /// Counts a Get by what it found.
    pub fn count_get(&self, found: Found) {
        match found {
            Found::Fresh => self.gets_fresh.inc(),
            Found::Stale => self.gets_stale.inc(),
            Found::Miss => self.gets_miss.inc(),
        };
    }
}

/// What a Get found in the cache (not what it answered: a miss fetched synchronously
/// answers FRESH, and counts as a miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Within its lifetime.
    Fresh,
    /// Past its lifetime.
    Stale,
    /// Absent or past cache_ttl.
    Miss,
}

impl Metrics {
    /// Empty counters; uptime counts from now.
    pub fn new() -> Metrics {
        Metrics {
            inner: Arc::new(Families {
                started: Instant::now(),
                started_wall: SystemTime::now(),
                gets: Family::default(),
                sync_fetches: Family::default(),
                refreshes_scheduled: Family::default(),
                fetches: Family::default(),
                fetches_retried: Family::default(),
                fetch_duration: Family::new_with_constructor(fetch_histogram),
                fetches_in_flight: Family::default(),
                early_refreshes: Family::default(),
                gets_absent: Family::default(),
                not_modified: Family::default(),
                fetch_batch_size: Family::new_with_constructor(batch_histogram),
                tag_invalidations: Counter::default(),
            }),
        }
    }

    /// When the daemon started.
    pub fn started_at(&self) -> SystemTime {
        self.inner.started_wall
    }

    /// How long the daemon has run.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The counters of `job`, created if new. Call once per job, not per request.
    pub fn job(&self, job: &JobName) -> Arc<JobMetrics> {
        let f = &self.inner;
        let job = || JobLabels {
            job: job.to_string(),
        };
        let get = |outcome| {
            f.gets.get_or_create_owned(&GetLabels {
                job: job().job,
                outcome,
            })
        };
        let fetch = |result| {
            f.fetches.get_or_create_owned(&FetchLabels {
                job: job().job,
                result,
            })
        };
        Arc::new(JobMetrics {
            gets_fresh: get(Outcome::fresh),
            gets_stale: get(Outcome::stale),
            gets_miss: get(Outcome::miss),
            sync_fetches: f.sync_fetches.get_or_create_owned(&job()),
            refreshes_scheduled: f.refreshes_scheduled.get_or_create_owned(&job()),
            fetches_succeeded: fetch(FetchResult::succeeded),
            fetches_failed: fetch(FetchResult::failed),
            fetches_retried: f.fetches_retried.get_or_create_owned(&job()),
            fetch_duration: f.fetch_duration.get_or_create_owned(&job()),
            fetches_in_flight: f.fetches_in_flight.get_or_create_owned(&job()),
            early_refreshes: f.early_refreshes.get_or_create_owned(&job()),
            gets_absent: f.gets_absent.get_or_create_owned(&job()),
            not_modified: f.not_modified.get_or_create_owned(&job()),
            fetch_batch_size: f.fetch_batch_size.get_or_create_owned(&job()),
        })
    }

    /// Counts the tags one InvalidateTags marked.
    pub fn count_tag_invalidations(&self, tags: usize) {
        self.inner.tag_invalidations.inc_by(tags as u64);
    }

    /// Drops the series of a job that was deleted.
    pub fn forget_job(&self, job: &JobName) {
        let f = &self.inner;
        let labels = JobLabels {
            job: job.to_string(),
        };
        for outcome in [Outcome::fresh, Outcome::stale, Outcome::miss] {
            f.gets.remove(&GetLabels {
                job: labels.job.clone(),
                outcome,
            });
        }
        for result in [FetchResult::succeeded, FetchResult::failed] {
            f.fetches.remove(&FetchLabels {
                job: labels.job.clone(),
                result,
            });
        }
        f.sync_fetches.remove(&labels);
        f.refreshes_scheduled.remove(&labels);
        f.fetches_retried.remove(&labels);
        f.fetch_duration.remove(&labels);
        f.fetches_in_flight.remove(&labels);
        f.early_refreshes.remove(&labels);
        f.gets_absent.remove(&labels);
        f.not_modified.remove(&labels);
        f.fetch_batch_size.remove(&labels);
    }

    /// A registry of every metric: the event counters, and the state of `engine` read at
    /// scrape time. `store_moved_aside` says whether the store was found damaged at start.
    pub fn registry(&self, engine: Engine, store_moved_aside: bool) -> Registry {
        let f = &self.inner;
        let mut r = Registry::with_prefix("cachebackd");
        r.register(
            "gets",
            "Gets by what they found: fresh, stale or miss (a miss fetched synchronously counts as a miss)",
            f.gets.clone(),
        );
        r.register(
            "sync_fetches",
            "Fetches started for a Get that waits for them (a miss, or stale past fetch_on_stale_threshold)",
            f.sync_fetches.clone(),
        );
        r.register(
            "refreshes_scheduled",
            "Background fetches started (stale hit, asynchronous miss, Invalidate)",
            f.refreshes_scheduled.clone(),
        );
        r.register(
            "fetches",
            "Fetches finished, synchronous or background, by result",
            f.fetches.clone(),
        );
        r.register(
            "fetches_retried",
            "Fetches started for an item whose previous fetch failed",
            f.fetches_retried.clone(),
        );
        r.register_with_unit(
            "fetch_duration",
            "How long fetches took, waiting for a free worker included",
            Unit::Seconds,
            f.fetch_duration.clone(),
        );
        r.register(
            "fetches_in_flight",
            "Fetches running now",
            f.fetches_in_flight.clone(),
        );
        r.register(
            "early_refreshes",
            "Refreshes started ahead of expiry on a fresh hit (early_refresh_beta, reason EARLY)",
            f.early_refreshes.clone(),
        );
        r.register(
            "gets_absent",
            "Gets answered with a stored absence (FetchedAbsent: absent = true)",
            f.gets_absent.clone(),
        );
        r.register(
            "not_modified",
            "Fetches a worker answered NotModified (the stored data confirmed, not resent)",
            f.not_modified.clone(),
        );
        r.register(
            "fetch_batch_size",
            "Fetches per message sent to a worker (FetchBatch when max_batch > 1)",
            f.fetch_batch_size.clone(),
        );
        r.register(
            "tag_invalidations",
            "Tags marked by InvalidateTags",
            f.tag_invalidations.clone(),
        );
        r.register_collector(Box::new(StateCollector {
            engine,
            metrics: self.clone(),
            store_moved_aside,
        }));
        r
    }
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
                (labels, self.engine.workers().count(job), usage)
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
            usage.iter().map(|(l, w, _)| (l, *w as i64)).collect(),
        )?;
        family(
            "stored_items",
            "Items stored for the job (stale ones included, until swept)",
            None,
            usage.iter().map(|(l, _, u)| (l, u.items as i64)).collect(),
        )?;
        family(
            "stored_data",
            "Bytes of data stored for the job",
            Some(&Unit::Bytes),
            usage.iter().map(|(l, _, u)| (l, u.bytes as i64)).collect(),
        )?;

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

/// Serves `GET /metrics` on `listener` until `shutdown`: Prometheus text format, or
/// OpenMetrics when the scraper asks for it.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) {
    let registry = Arc::new(registry);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener cannot accept");
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| scrape(req, registry.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
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
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
