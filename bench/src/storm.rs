//! The miss storm: many concurrent Gets of one missing key while the job's only worker takes
//! 50 ms per fetch. Single-flight means exactly one fetch; the latency distribution shows what
//! the Gets waited. The same storm against the no-op baseline shows what the transport alone
//! costs to carry that many calls at once.

use std::sync::Arc;
use std::time::Duration;

use cachebackd_proto::v1 as pb;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::load::{self, Histogram};
use crate::rpc;
use crate::worker::{self, Tally, Worker};

/// What one storm did.
pub struct Storm {
    /// Gets sent at once.
    pub gets: usize,
    /// How long the worker took to fetch (zero: the baseline, which answers at once).
    pub fetch_delay: Duration,
    /// Gets answered with data.
    pub ok: usize,
    /// Gets that report they waited for a fetch (`fetched = true`).
    pub waited: usize,
    /// Gets that failed, and the first failure.
    pub errors: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// Fetches the worker was sent (single-flight: 1).
    pub fetches: Option<u64>,
    /// From the start signal to the last answer.
    pub wall_secs: f64,
    /// Latency of every answered Get.
    pub latency: Histogram,
}

impl Storm {
    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "gets": self.gets,
            "fetch_delay_ms": self.fetch_delay.as_secs_f64() * 1e3,
            "ok": self.ok,
            "fetched": self.waited,
            "errors": self.errors,
            "first_error": self.first_error,
            "fetches_issued": self.fetches,
            "wall_secs": self.wall_secs,
            "latency_us": load::latency_json(&self.latency),
        })
    }
}

/// The storm against the daemon: a fresh job whose worker answers after `fetch_delay`.
pub async fn against_daemon(
    channels: &[Channel],
    gets: usize,
    fetch_delay: Duration,
) -> Result<Storm, String> {
    let job = format!("bench.storm.{}ms", fetch_delay.as_millis());
    let tally = Tally::new();
    let spec = worker::Spec {
        job: job.clone(),
        config: rpc::job_config(3600.0),
        max_in_flight: 16,
        delay: fetch_delay,
        data: Arc::new(vec![b's'; 100]),
        gate: None,
        max_batch: 0,
    };
    let worker = Worker::start(channels[0].clone(), spec, tally.clone()).await?;
    // A key no earlier run can have stored.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let args = format!("[\"storm\",{stamp}]").into_bytes();
    let mut storm = storm(channels, gets, &job, args, 100).await;
    storm.fetch_delay = fetch_delay;
    // Any second fetch would have been sent by now; give a straggler a moment anyway.
    tokio::time::sleep(Duration::from_millis(100)).await;
    storm.fetches = Some(tally.fetches.load(std::sync::atomic::Ordering::Relaxed));
    worker.stop();
    Ok(storm)
}

/// The same storm against the baseline (which answers at once).
pub async fn against_baseline(channels: &[Channel], gets: usize) -> Storm {
    storm(channels, gets, "bench.storm", rpc::args(100), 100).await
}

/// `gets` concurrent Gets of `job`'s item `args`, task `i` on `channels[i mod n]`, released at
/// once; each answer expected to hold `len` bytes.
pub async fn storm(
    channels: &[Channel],
    gets: usize,
    job: &str,
    args: Vec<u8>,
    len: usize,
) -> Storm {
    let (go, ready) = watch::channel(false);
    let mut tasks = Vec::with_capacity(gets);
    for i in 0..gets {
        let mut client = rpc::client(channels[i % channels.len()].clone());
        let request = pb::GetRequest {
            job: job.to_owned(),
            args: args.clone(),
            fetch_on_miss: Some(true),
            ..Default::default()
        };
        let mut ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let _ = ready.wait_for(|go| *go).await;
            let t0 = Instant::now();
            let result = client.get(request).await;
            (t0.elapsed(), Instant::now(), result)
        }));
    }
    // Let every task reach its start line.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let _ = go.send(true);
    let mut out = Storm {
        gets,
        fetch_delay: Duration::ZERO,
        ok: 0,
        waited: 0,
        errors: 0,
        first_error: None,
        fetches: None,
        wall_secs: 0.0,
        latency: load::histogram(),
    };
    let mut last = start;
    for task in tasks {
        let (took, ended, result) = task.await.expect("storm task panicked");
        last = last.max(ended);
        match result {
            Ok(r) if r.get_ref().data.len() == len => {
                out.ok += 1;
                out.waited += r.get_ref().fetched as usize;
                out.latency.saturating_record(took.as_nanos() as u64);
            }
            Ok(r) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!(
                    "state {} with {} bytes",
                    r.get_ref().state,
                    r.get_ref().data.len()
                ));
            }
            Err(s) => {
                out.errors += 1;
                out.first_error.get_or_insert(s.to_string());
            }
        }
    }
    out.wall_secs = (last - start).as_secs_f64();
    out
}
