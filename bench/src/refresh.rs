//! Refresh throughput: stale items refreshed per second through 1 and 4 worker streams, next
//! to what a bidi ping-pong stream of the same messages carries on the baseline server.
//!
//! The items are Set with a lifetime of zero, so each is stale at once; Gets then read them
//! (each a stale hit that schedules one refresh) and the workers answer every FetchRequest.
//! Two ways, see [`Mode`]: driven (the clock runs from the first Get to the last answer, so a
//! refresh costs the Get that triggers it, as in production; at most `BACKLOG` refreshes
//! outstanding, below the daemon's per-job queue of 10,000) and queued (the refreshes wait in
//! that queue first, and the clock runs only while the workers drain it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cachebackd_proto::v1 as pb;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::load::process_cpu;
use crate::marks;
use crate::rpc;
use crate::worker::{self, Tally, Worker};

/// How many worker streams, and how many fetches each takes at once (its `max_in_flight`;
/// the baseline's ping-pong keeps as many exchanges in flight).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Worker streams, each on its own connection.
    pub streams: usize,
    /// Fetches in flight per stream.
    pub window: u32,
}

impl Shape {
    /// The shapes measured: 1 and 4 streams with a window of 64, and strict ping-pong.
    pub const ALL: [Shape; 3] = [
        Shape {
            streams: 1,
            window: 64,
        },
        Shape {
            streams: 4,
            window: 64,
        },
        Shape {
            streams: 1,
            window: 1,
        },
    ];

    /// As the table shows it.
    pub fn label(&self) -> String {
        let s = if self.streams == 1 { "" } else { "s" };
        format!("{} stream{s}, window {}", self.streams, self.window)
    }
}
/// Refreshes the driver lets be outstanding at once.
const BACKLOG: usize = 4096;
/// Gets in flight while triggering refreshes.
const DRIVERS: usize = 64;
/// Bytes each worker answer carries.
const DATA: usize = 100;

/// What one refresh run did (or several, merged).
#[derive(Debug, Clone)]
pub struct Refresh {
    /// Streams and window.
    pub shape: Shape,
    /// How the daemon's refreshes were asked for (`None`: the ping-pong baseline).
    pub mode: Option<Mode>,
    /// Items made stale and read.
    pub items: u64,
    /// Worker answers sent.
    pub answered: u64,
    /// FetchRequests received (more than `items` would be duplicate fetches).
    pub fetches: u64,
    /// Gets that did not report a scheduled refresh.
    pub not_scheduled: u64,
    /// Seconds timed (see [`Mode`]).
    pub secs: f64,
    /// CPU seconds the server process spent in that time.
    pub server_cpu: Option<f64>,
    /// Driven mode: the same Gets of the same items once they are fresh again (Gets, seconds):
    /// the Get-hit rate the refreshes are measured against (the "≥ 0.9×").
    pub fresh_gets: Option<(u64, f64)>,
}

impl Refresh {
    /// Refreshes per second.
    pub fn per_sec(&self) -> f64 {
        self.answered as f64 / self.secs.max(f64::MIN_POSITIVE)
    }

    /// Server CPU per refresh (or per ping-pong exchange), in microseconds.
    pub fn cpu_per_answer_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.answered > 0).then(|| cpu * 1e6 / self.answered as f64)
    }

    /// Driven mode: Gets per second of the same items once fresh.
    pub fn fresh_gets_per_sec(&self) -> Option<f64> {
        self.fresh_gets
            .map(|(gets, secs)| gets as f64 / secs.max(f64::MIN_POSITIVE))
    }

    /// Adds another round of the same run.
    pub fn merge(&mut self, other: &Refresh) {
        self.fresh_gets = self
            .fresh_gets
            .zip(other.fresh_gets)
            .map(|(a, b)| (a.0 + b.0, a.1 + b.1));
        self.server_cpu = self.server_cpu.zip(other.server_cpu).map(|(a, b)| a + b);
        self.items += other.items;
        self.answered += other.answered;
        self.fetches += other.fetches;
        self.not_scheduled += other.not_scheduled;
        self.secs += other.secs;
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "streams": self.shape.streams,
            "window": self.shape.window,
            "mode": self.mode.map(Mode::label),
            "items": self.items,
            "answered": self.answered,
            "fetches": self.fetches,
            "gets_not_scheduling": self.not_scheduled,
            "secs": self.secs,
            "per_sec": self.per_sec(),
            "server_cpu_secs": self.server_cpu,
            "server_cpu_per_answer_us": self.cpu_per_answer_us(),
            "fresh_gets_per_sec": self.fresh_gets_per_sec(),
        })
    }
}

/// How the refreshes reach the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The workers are connected; Gets of stale items trigger the refreshes while the clock
    /// runs. What production sees: each refresh costs the Get that asked for it.
    Driven,
    /// The Gets come first, with no worker connected, so the refreshes wait in the job's
    /// queue; the clock runs from the workers' first answer to their last. The daemon's
    /// refresh path alone (dispatch, the stream, storing the answer), as ping-pong is the
    /// stream alone.
    Queued,
}

impl Mode {
    /// As the table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Driven => "driven by Gets",
            Mode::Queued => "queued, drained",
        }
    }
}

/// Refreshes the queued mode lines up: just below the daemon's per-job queue of 10,000.
pub const MAX_QUEUED: u64 = 9_000;

/// The daemon: `items` stale items refreshed through `streams` workers (each on its own
/// connection, as separate app servers would be). `clients` carry the Sets and Gets.
pub async fn against_daemon(
    pid: u32,
    workers_at: std::net::SocketAddr,
    clients: &[Channel],
    shape: Shape,
    items: u64,
    mode: Mode,
    round: usize,
) -> Result<Refresh, String> {
    let streams = shape.streams;
    let job = format!("bench.refresh.{mode:?}.{streams}x{}.{round}", shape.window).to_lowercase();
    let items = match mode {
        Mode::Driven => items,
        Mode::Queued => MAX_QUEUED,
    };
    let permits = Arc::new(Semaphore::new(BACKLOG));
    let tally = Arc::new(Tally {
        permits: (mode == Mode::Driven).then(|| permits.clone()),
        ..Tally::default()
    });
    let (open, gate) = watch::channel(mode == Mode::Driven);
    let worker_channels = rpc::channels(workers_at, streams).await?;
    let mut workers = Vec::new();
    match mode {
        Mode::Driven => {
            workers = start_workers(&worker_channels, &job, shape.window, &gate, &tally).await?
        }
        Mode::Queued => {
            rpc::register(clients[0].clone(), &job, rpc::job_config(24.0 * 3600.0)).await?
        }
    }
    rpc::set_items(clients, 64, &job, items, Some(rpc::dur(0.0)), |_| {
        vec![b'o'; DATA]
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2)).await;

    let mut start = Instant::now();
    let mut mark_start = marks::now();
    let mut cpu_start = process_cpu(pid);
    let not_scheduled = trigger(clients, &job, items, mode == Mode::Driven, &permits).await?;
    if mode == Mode::Queued {
        workers = start_workers(&worker_channels, &job, shape.window, &gate, &tally).await?;
        start = Instant::now();
        mark_start = marks::now();
        cpu_start = process_cpu(pid);
        let _ = open.send(true);
    }
    let expected = items - not_scheduled;
    tally
        .wait_answered(expected, Duration::from_secs(120))
        .await;
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu_start.zip(process_cpu(pid)).map(|(a, b)| b - a);
    let label = format!("refresh {} {} cachebackd", mode.label(), shape.label());
    marks::mark(&label, mark_start, marks::now());
    // The same Gets again, now that every item is fresh: what the refreshes cost on top of
    // the Gets that asked for them is the ratio of the two rates.
    let fresh_gets = match mode {
        Mode::Driven => {
            let start = Instant::now();
            let mark_start = marks::now();
            trigger(clients, &job, items, false, &permits).await?;
            let label = format!("refresh {} {} fresh Gets", mode.label(), shape.label());
            marks::mark(&label, mark_start, marks::now());
            Some((items, start.elapsed().as_secs_f64()))
        }
        Mode::Queued => None,
    };
    drop(workers);
    Ok(Refresh {
        shape,
        mode: Some(mode),
        items,
        answered: tally.answered.load(Ordering::Relaxed),
        fetches: tally.fetches.load(Ordering::Relaxed),
        not_scheduled,
        secs,
        server_cpu,
        fresh_gets,
    })
}

/// Gets every item once, `DRIVERS` at a time; with `bounded`, no more than `BACKLOG` ahead
/// of the answers. How many Gets did not schedule a refresh.
pub async fn trigger(
    clients: &[Channel],
    job: &str,
    items: u64,
    bounded: bool,
    permits: &Arc<Semaphore>,
) -> Result<u64, String> {
    let next = Arc::new(AtomicU64::new(0));
    let not_scheduled = Arc::new(AtomicU64::new(0));
    let mut drivers = Vec::new();
    for d in 0..DRIVERS {
        let mut client = rpc::client(clients[d % clients.len()].clone());
        let (next, permits, not_scheduled, job) = (
            next.clone(),
            permits.clone(),
            not_scheduled.clone(),
            job.to_owned(),
        );
        drivers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items {
                    return Ok::<(), String>(());
                }
                if bounded {
                    permits.acquire().await.map_err(|e| e.to_string())?.forget();
                }
                let r = client
                    .get(pb::GetRequest {
                        job: job.clone(),
                        args: rpc::args(i),
                        fetch_on_miss: None,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("Get {job} [{i}]: {s}"))?
                    .into_inner();
                if !(r.state == pb::ItemState::Stale as i32 && r.refresh_scheduled) {
                    not_scheduled.fetch_add(1, Ordering::Relaxed);
                    if bounded {
                        // No refresh will answer for it: give its permit back.
                        permits.add_permits(1);
                    }
                }
            }
        }));
    }
    for d in drivers {
        d.await.map_err(|e| e.to_string())??;
    }
    Ok(not_scheduled.load(Ordering::Relaxed))
}

/// The baseline: `streams` ping-pong streams carrying `messages` FetchRequest/FetchResult
/// pairs in all, with the same window and payload; the clock starts once every stream is
/// registered.
pub async fn ping_pong(
    pid: u32,
    baseline_at: std::net::SocketAddr,
    shape: Shape,
    messages: u64,
) -> Result<Refresh, String> {
    let tally = Arc::new(Tally {
        stop_after: messages,
        ..Tally::default()
    });
    let (open, gate) = watch::channel(false);
    let mut workers = Vec::new();
    for channel in rpc::channels(baseline_at, shape.streams).await? {
        let spec = spec("bench.pingpong", shape.window, Some(gate.clone()));
        workers.push(Worker::start(channel, spec, tally.clone()).await?);
    }
    let start = Instant::now();
    let mark_start = marks::now();
    let cpu_start = process_cpu(pid);
    let _ = open.send(true);
    tally
        .wait_answered(messages, Duration::from_secs(120))
        .await;
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu_start.zip(process_cpu(pid)).map(|(a, b)| b - a);
    let label = format!("refresh ping-pong {} baseline", shape.label());
    marks::mark(&label, mark_start, marks::now());
    drop(workers);
    Ok(Refresh {
        shape,
        mode: None,
        items: messages,
        answered: tally.answered.load(Ordering::Relaxed),
        fetches: tally.fetches.load(Ordering::Relaxed),
        not_scheduled: 0,
        secs,
        server_cpu,
        fresh_gets: None,
    })
}

async fn start_workers(
    channels: &[Channel],
    job: &str,
    window: u32,
    gate: &watch::Receiver<bool>,
    tally: &Arc<Tally>,
) -> Result<Vec<Worker>, String> {
    let mut workers = Vec::new();
    for channel in channels {
        let spec = spec(job, window, Some(gate.clone()));
        workers.push(Worker::start(channel.clone(), spec, tally.clone()).await?);
    }
    Ok(workers)
}

fn spec(job: &str, window: u32, gate: Option<watch::Receiver<bool>>) -> worker::Spec {
    worker::Spec {
        job: job.to_owned(),
        config: rpc::job_config(24.0 * 3600.0),
        max_in_flight: window,
        delay: Duration::ZERO,
        data: Arc::new(vec![b'r'; DATA]),
        gate,
        max_batch: 0,
    }
}
