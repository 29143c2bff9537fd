//! The figures of the protocol's additions: a hot key's share of STALE answers with and
//! without early refresh (XFetch), and refresh throughput with `max_batch` 1 and 32.
//!
//! Hot key: one item, lifetime 1 s, 64 readers Getting it back to back, a worker whose
//! fetch takes 50 ms. Without early refresh, every expiry opens a window (the refresh's
//! round trip) in which readers get STALE; with `early_refresh_beta = 1` a fresh hit near
//! expiry starts the refresh ahead of it, so the goal is no STALE answer at all.
//!
//! Batched refresh: as the refresh scenario's queued mode (9,000 stale items whose
//! refreshes wait in the job's queue with no worker connected; the clock runs while one
//! worker with 64 in flight drains it), once with `max_batch` 1 and once with 32.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cachebackd_proto::v1 as pb;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::load::process_cpu;
use crate::refresh;
use crate::rpc;
use crate::worker::{self, Tally, Worker};

/// Readers of the hot key.
const READERS: usize = 64;
/// How long the hot key's fetch takes.
const HOT_FETCH: Duration = Duration::from_millis(50);

/// What one hot-key run saw.
#[derive(Debug, Clone)]
pub struct HotKey {
    /// With `early_refresh_beta = 1`.
    pub early: bool,
    /// Gets answered.
    pub gets: u64,
    /// Of them, answered STALE.
    pub stale: u64,
    /// Fetches the worker ran (the first fill included).
    pub fetches: u64,
    /// Seconds the readers ran.
    pub secs: f64,
}

impl HotKey {
    /// The share of Gets answered STALE.
    pub fn stale_share(&self) -> f64 {
        self.stale as f64 / (self.gets.max(1)) as f64
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "early_refresh": self.early,
            "gets": self.gets,
            "stale": self.stale,
            "stale_share": self.stale_share(),
            "fetches": self.fetches,
            "secs": self.secs,
        })
    }
}

/// One hot-key run of `secs` seconds.
pub async fn hot_key(
    workers_at: std::net::SocketAddr,
    clients: &[Channel],
    early: bool,
    secs: f64,
    round: usize,
) -> Result<HotKey, String> {
    let job = format!(
        "bench.hot.{}.{round}",
        if early { "early" } else { "plain" }
    );
    let config = pb::JobConfig {
        early_refresh_beta: early.then_some(1.0),
        ..rpc::job_config(1.0)
    };
    let tally = Tally::new();
    let spec = worker::Spec {
        job: job.clone(),
        config,
        max_in_flight: 4,
        delay: HOT_FETCH,
        data: Arc::new(vec![b'h'; 100]),
        gate: None,
        max_batch: 0,
    };
    let channel = rpc::channels(workers_at, 1).await?.remove(0);
    let worker = Worker::start(channel, spec, tally.clone()).await?;
    // The first Get fills the item (a synchronous miss), so its fetch time is kept with it.
    let mut first = rpc::client(clients[0].clone());
    first
        .get(get(&job))
        .await
        .map_err(|s| format!("Get {job}: {s}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let (gets, stale) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut readers = Vec::new();
    for r in 0..READERS {
        let mut client = rpc::client(clients[r % clients.len()].clone());
        let (stop, gets, stale, job) = (stop.clone(), gets.clone(), stale.clone(), job.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = client
                    .get(get(&job))
                    .await
                    .map_err(|s| format!("Get {job}: {s}"))?
                    .into_inner();
                gets.fetch_add(1, Ordering::Relaxed);
                if r.state == pb::ItemState::Stale as i32 {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.map_err(|e| e.to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(worker);
    Ok(HotKey {
        early,
        gets: gets.load(Ordering::Relaxed),
        stale: stale.load(Ordering::Relaxed),
        fetches: tally.fetches.load(Ordering::Relaxed),
        secs,
    })
}

fn get(job: &str) -> pb::GetRequest {
    pb::GetRequest {
        job: job.to_owned(),
        args: rpc::args(0),
        ..Default::default()
    }
}

/// What one batched-refresh run did.
#[derive(Debug, Clone)]
pub struct Batched {
    /// The worker's `max_batch`.
    pub max_batch: u32,
    /// Refreshes answered.
    pub answered: u64,
    /// FetchBatch messages the worker received.
    pub batches: u64,
    /// Seconds the drain took.
    pub secs: f64,
    /// The daemon's CPU seconds in that time.
    pub server_cpu: Option<f64>,
}

impl Batched {
    /// Refreshes per second.
    pub fn per_sec(&self) -> f64 {
        self.answered as f64 / self.secs.max(f64::MIN_POSITIVE)
    }

    /// The daemon's CPU per refresh, in microseconds.
    pub fn cpu_per_refresh_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.answered > 0).then(|| cpu * 1e6 / self.answered as f64)
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "max_batch": self.max_batch,
            "answered": self.answered,
            "batches": self.batches,
            "secs": self.secs,
            "per_sec": self.per_sec(),
            "server_cpu_secs": self.server_cpu,
            "server_cpu_per_refresh_us": self.cpu_per_refresh_us(),
        })
    }
}

/// One queued drain through a worker with `max_batch`.
pub async fn batched(
    pid: u32,
    workers_at: std::net::SocketAddr,
    clients: &[Channel],
    max_batch: u32,
    round: usize,
) -> Result<Batched, String> {
    let job = format!("bench.batch.{max_batch}.{round}");
    let items = refresh::MAX_QUEUED;
    rpc::register(clients[0].clone(), &job, rpc::job_config(24.0 * 3600.0)).await?;
    rpc::set_items(clients, 64, &job, items, Some(rpc::dur(0.0)), |_| {
        vec![b'o'; 100]
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let permits = Arc::new(Semaphore::new(0));
    let not_scheduled = refresh::trigger(clients, &job, items, false, &permits).await?;
    let tally = Tally::new();
    let (open, gate) = watch::channel(false);
    let spec = worker::Spec {
        job: job.clone(),
        config: rpc::job_config(24.0 * 3600.0),
        max_in_flight: 64,
        delay: Duration::ZERO,
        data: Arc::new(vec![b'r'; 100]),
        gate: Some(gate),
        max_batch,
    };
    let channel = rpc::channels(workers_at, 1).await?.remove(0);
    let worker = Worker::start(channel, spec, tally.clone()).await?;
    let start = Instant::now();
    let cpu_start = process_cpu(pid);
    let _ = open.send(true);
    tally
        .wait_answered(items - not_scheduled, Duration::from_secs(120))
        .await;
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu_start.zip(process_cpu(pid)).map(|(a, b)| b - a);
    drop(worker);
    Ok(Batched {
        max_batch,
        answered: tally.answered.load(Ordering::Relaxed),
        batches: tally.batches.load(Ordering::Relaxed),
        secs,
        server_cpu,
    })
}
