//! The load generator: `c` closed-loop tasks, each issuing one call after the other, with
//! a warm-up that is not recorded and a measured window that bounds every run in time and
//! in count. Latencies go into HDR histograms (one per task, merged), in nanoseconds.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

/// One caller of the thing under test. Each load task owns one, so that a call may hold
/// `&mut` state (a tonic client, a Redis connection) without sharing it.
pub trait Caller: Send + 'static {
    /// One request; `Err` carries what went wrong, for the report.
    fn call(&mut self) -> impl Future<Output = Result<(), String>> + Send + '_;
}

/// How long and how hard one run loads the server.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Calls in flight at once (one task each).
    pub concurrency: usize,
    /// Calls in this window are made but not recorded.
    pub warmup: Duration,
    /// Calls that start in this window are recorded.
    pub measure: Duration,
    /// A hard bound on the calls of one run, whatever the clock says.
    pub max_calls: u64,
}

/// A latency histogram, in nanoseconds.
pub type Histogram = hdrhistogram::Histogram<u64>;

/// An empty latency histogram: 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram {
    Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// What one run (or several merged) measured.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Calls recorded.
    pub calls: u64,
    /// Calls that failed in the measured window.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Seconds from the window's start to the last recorded call's end.
    pub secs: f64,
    /// Latencies of the recorded calls.
    pub latency: Histogram,
    /// CPU seconds the server process spent over the measured window, if it was watched.
    pub server_cpu: Option<f64>,
    /// CPU seconds this process (the client) spent over the same window.
    pub client_cpu: Option<f64>,
}

impl Throughput {
    /// Calls per second.
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.calls as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Server CPU per call, in microseconds.
    pub fn cpu_per_call_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.calls > 0).then(|| cpu * 1e6 / self.calls as f64)
    }

    /// Adds another run of the same setting (rounds taken in turn with the other servers).
    pub fn merge(&mut self, other: Throughput) {
        self.calls += other.calls;
        self.errors += other.errors;
        self.secs += other.secs;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
    }

    /// The figures, for the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "calls": self.calls,
            "errors": self.errors,
            "first_error": self.first_error,
            "secs": self.secs,
            "per_sec": self.per_sec(),
            "latency_us": latency_json(&self.latency),
            "server_cpu_secs": self.server_cpu,
            "server_cpu_per_call_us": self.cpu_per_call_us(),
            "client_cpu_secs": self.client_cpu,
        })
    }
}

/// Percentiles of a histogram in microseconds.
pub fn latency_json(h: &Histogram) -> Value {
    let us = |ns: u64| ns as f64 / 1_000.0;
    json!({
        "count": h.len(),
        "mean": h.mean() / 1_000.0,
        "p50": us(h.value_at_quantile(0.50)),
        "p90": us(h.value_at_quantile(0.90)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
    })
}

/// CPU time process `pid` has spent, in seconds: the sum of its threads' run time
/// (`/proc/PID/task/*/schedstat`, nanoseconds).
pub fn process_cpu(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok();
        ns += stat
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    }
    Some(ns as f64 / 1e9)
}

/// Runs `spec.concurrency` closed-loop tasks, task `i` calling through `callers[i]`; with
/// `server`, also the CPU time that process spends over the measured window.
pub async fn closed_loop<C: Caller>(
    spec: Spec,
    callers: Vec<C>,
    server: Option<u32>,
) -> Throughput {
    assert_eq!(callers.len(), spec.concurrency);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let until = measure_from + spec.measure;
    let budget = Arc::new(AtomicU64::new(spec.max_calls));
    let mut tasks = Vec::with_capacity(callers.len());
    for mut caller in callers {
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0;
            let mut first_error = None;
            let mut last_end = measure_from;
            loop {
                let t0 = Instant::now();
                if t0 >= until
                    || budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                {
                    break;
                }
                let result = caller.call().await;
                let t1 = Instant::now();
                if t0 < measure_from {
                    continue;
                }
                last_end = last_end.max(t1);
                match result {
                    Ok(()) => hist.saturating_record((t1 - t0).as_nanos() as u64),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, errors, first_error, last_end)
        }));
    }
    let cpu_at_start = server.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from).await;
            (process_cpu(pid), process_cpu(std::process::id()))
        })
    });
    let mut total = Throughput {
        calls: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        latency: histogram(),
        server_cpu: None,
        client_cpu: None,
    };
    let mut last_end = measure_from;
    for task in tasks {
        let (hist, errors, first_error, end) = task.await.expect("load task panicked");
        total.latency.add(&hist).expect("same histogram bounds");
        total.errors += errors;
        if total.first_error.is_none() {
            total.first_error = first_error;
        }
        last_end = last_end.max(end);
    }
    if let (Some(pid), Some(start)) = (server, cpu_at_start) {
        let (server_start, client_start) = start.await.unwrap_or((None, None));
        total.server_cpu = server_start.zip(process_cpu(pid)).map(|(a, b)| b - a);
        let me = process_cpu(std::process::id());
        total.client_cpu = client_start.zip(me).map(|(a, b)| b - a);
    }
    total.calls = total.latency.len();
    total.secs = (last_end - measure_from).as_secs_f64();
    total
}
