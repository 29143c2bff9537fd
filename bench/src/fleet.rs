//! Fleet mode (issue 13): what a shared Redis costs and what it keeps. One redis-server
//! (started by the benchmark, no persistence) and, side by side, daemons of the same
//! release binary on it (`--store redis://…`) and on sled (the default), measured in the
//! same run:
//!
//! - **Get hits** through the daemon on Redis, the daemon on sled, and a Redis GET of the
//!   same bytes, taking turns round by round; reported as ratios to the daemon on sled.
//! - **The miss storm split across two daemons on the one Redis**, a worker of the job on
//!   each: fleet-wide single-flight means exactly one fetch issued in all.
//! - **Set throughput**, the daemon on Redis against the daemon on sled.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::hits::{self, Setting};
use crate::load::{Spec, Throughput};
use crate::procs::{self, Proc};
use crate::redis_bench::RedisTarget;
use crate::rpc;
use crate::storm::{self, Storm};
use crate::worker::{self, Tally, Worker};

/// The job the Set rows write.
const SET_JOB: &str = "bench.fleet.set";

/// Connections to each daemon.
const CONNS: usize = 4;

/// Connections to each daemon in the split storm: enough that no connection carries more
/// Gets than the daemon's 1,000 concurrent streams per connection (a Get queued behind
/// that limit would reach the daemon only after the fetch landed).
const STORM_CONNS: usize = 8;

/// Everything the fleet rows measured.
pub struct Fleet {
    /// Get hits: `daemon` is the daemon on Redis, `baseline` the daemon on sled, `redis`
    /// the Redis GET.
    pub hits: Vec<hits::Row>,
    /// Miss storms split across two daemons on one Redis.
    pub storms: Vec<Storm>,
    /// Set throughput, (on Redis, on sled).
    pub sets: (Throughput, Throughput),
    /// Sets per run.
    pub set_items: u64,
    /// Set concurrency.
    pub set_concurrency: usize,
}

impl Fleet {
    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        let (redis, sled) = &self.sets;
        json!({
            "get_hits": self.hits.iter().map(|r| json!({
                "setting": r.setting.label(),
                "on_redis": r.daemon.to_json(),
                "on_sled": r.baseline.to_json(),
                "redis_get": r.redis.as_ref().map(Throughput::to_json),
                "redis_over_sled": r.ratio(),
                "redis_over_redis_get": r.redis.as_ref().map(|g| ratio(&r.daemon, g)),
            })).collect::<Vec<_>>(),
            "split_miss_storm": self.storms.iter().map(Storm::to_json).collect::<Vec<_>>(),
            "set": {
                "items": self.set_items,
                "concurrency": self.set_concurrency,
                "on_redis": redis.to_json(),
                "on_sled": sled.to_json(),
                "redis_over_sled": ratio(redis, sled),
            },
        })
    }
}

fn ratio(a: &Throughput, b: &Throughput) -> f64 {
    a.per_sec() / b.per_sec().max(f64::MIN_POSITIVE)
}

/// The Markdown table of the fleet rows.
pub fn table(fleet: &Fleet) -> String {
    let mut out = String::from(
        "\n| fleet (one Redis) | setting | daemon on Redis | daemon on sled | Redis GET | on Redis / on sled | on Redis / Redis GET |\n|---|---|---|---|---|---|---|\n",
    );
    let per_sec = |t: &Throughput| {
        let cpu = t
            .cpu_per_call_us()
            .map_or(String::new(), |c| format!(" · CPU {c:.1} µs/call"));
        format!("{:.0}/s{cpu}", t.per_sec())
    };
    for row in &fleet.hits {
        out += &format!(
            "| Get hit | {} | {} | {} | {} | **{:.2}** | {} |\n",
            row.setting.label(),
            per_sec(&row.daemon),
            per_sec(&row.baseline),
            row.redis.as_ref().map_or("—".into(), per_sec),
            row.ratio(),
            row.redis
                .as_ref()
                .map_or("—".into(), |g| format!("{:.2}", ratio(&row.daemon, g))),
        );
    }
    let (redis, sled) = &fleet.sets;
    out += &format!(
        "| Set | {} B, c={}, {} ch, {} Sets | {} | {} | — | **{:.2}** | — |\n",
        100,
        fleet.set_concurrency,
        CONNS,
        fleet.set_items,
        per_sec(redis),
        per_sec(sled),
        ratio(redis, sled),
    );
    for s in &fleet.storms {
        out += &format!(
            "| miss storm split across 2 daemons: fetches issued | {} Gets of 1 missing key, fetch {:.0} ms | **{}** (1 required) | {} ok, {} joined, {} failed · p50 {:.1} ms · max {:.1} ms | — | — | — |\n",
            s.gets,
            s.fetch_delay.as_secs_f64() * 1e3,
            s.fetches.map_or("?".into(), |f| f.to_string()),
            s.ok,
            s.waited,
            s.errors,
            s.latency.value_at_quantile(0.5) as f64 / 1e6,
            s.latency.max() as f64 / 1e6,
        );
    }
    out
}

/// A daemon under test and connections to it.
struct Target {
    proc: Proc,
    addr: SocketAddr,
    channels: Vec<Channel>,
}

async fn start(bin: &Path, dir: &Path, name: &str, store: Option<&str>) -> Result<Target, String> {
    let extra: Vec<String> = match store {
        Some(url) => vec!["--store".into(), url.into()],
        None => Vec::new(),
    };
    let (proc, addr) = procs::start_daemon(
        bin,
        &dir.join(name),
        dir.join(format!("{name}.log")),
        &extra,
    )
    .await?;
    let channels = rpc::channels(addr, CONNS).await?;
    wait_serving(addr, &channels[0]).await?;
    Ok(Target {
        proc,
        addr,
        channels,
    })
}

/// Listening is not serving: the daemon on Redis answers UNAVAILABLE until its store is
/// connected. Registers a probe job until that succeeds (cap 60 s).
async fn wait_serving(addr: SocketAddr, channel: &Channel) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match rpc::register(channel.clone(), "bench.fleet.probe", rpc::job_config(60.0)).await {
            Ok(()) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(60) => {
                return Err(format!("the daemon on {addr} does not serve: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs the fleet rows: Get hits at `settings`, `rounds` rounds each; the split storm of
/// `storm_gets` Gets; `set_items` Sets per daemon and round.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    redis_bin: &Path,
    dir: &Path,
    settings: &[Setting],
    spec: Spec,
    rounds: usize,
    storm_gets: usize,
    set_items: u64,
) -> Result<Fleet, String> {
    let redis = RedisTarget::start(redis_bin, dir, CONNS).await?;
    let url = redis.url();
    let on_redis = start(bin, dir, "fleet-redis-a", Some(&url)).await?;
    let on_sled = start(bin, dir, "fleet-sled", None).await?;

    hits::prepare(&on_redis.channels, settings).await?;
    hits::prepare(&on_sled.channels, settings).await?;
    redis.prepare(settings).await?;
    eprintln!("fleet: Get hits, daemon on Redis / on sled / Redis GET");
    let pids = hits::Pids {
        daemon: Some(on_redis.proc.pid()),
        baseline: Some(on_sled.proc.pid()),
    };
    let hit_rows = hits::run(
        pids,
        settings,
        &on_redis.channels,
        &on_sled.channels,
        Some(&redis),
        spec,
        rounds,
    )
    .await?;

    eprintln!("fleet: Set throughput ({set_items} Sets per daemon and round)");
    let set_concurrency = 16;
    for t in [&on_redis, &on_sled] {
        rpc::register(t.channels[0].clone(), SET_JOB, rpc::job_config(3600.0)).await?;
    }
    let mut sets: (Option<Throughput>, Option<Throughput>) = (None, None);
    for round in 0..rounds {
        for turn in 0..2 {
            let (target, total) = if (round + turn) % 2 == 0 {
                (&on_redis, &mut sets.0)
            } else {
                (&on_sled, &mut sets.1)
            };
            let cpu0 = crate::load::process_cpu(target.proc.pid());
            let mut run = rpc::set_items(
                &target.channels,
                set_concurrency,
                SET_JOB,
                set_items,
                None,
                |_| vec![b's'; 100],
            )
            .await?;
            run.server_cpu = cpu0
                .zip(crate::load::process_cpu(target.proc.pid()))
                .map(|(a, b)| b - a);
            if let Some(e) = &run.first_error {
                return Err(format!("Set: {e}"));
            }
            match total {
                Some(t) => t.merge(run),
                None => *total = Some(run),
            }
        }
    }
    let sets = (
        sets.0.expect("at least one round"),
        sets.1.expect("at least one round"),
    );
    eprintln!(
        "  Set on Redis {:.0}/s, on sled {:.0}/s",
        sets.0.per_sec(),
        sets.1.per_sec()
    );
    drop(on_sled.channels);
    on_sled.proc.stop(Duration::from_secs(30)).await?;

    let second = start(bin, dir, "fleet-redis-b", Some(&url)).await?;
    let storm_a = rpc::channels(on_redis.addr, STORM_CONNS).await?;
    let storm_b = rpc::channels(second.addr, STORM_CONNS).await?;
    let mut storms = Vec::new();
    for delay in [Duration::from_millis(50), Duration::from_secs(2)] {
        let s = split_storm(&storm_a, &storm_b, storm_gets, delay).await?;
        eprintln!(
            "  split storm, fetch {delay:?}: fetches issued {:?}, {} ok ({} waited), {} failed",
            s.fetches, s.ok, s.waited, s.errors
        );
        storms.push(s);
    }

    drop((storm_a, storm_b));
    for t in [on_redis, second] {
        drop(t.channels);
        t.proc.stop(Duration::from_secs(30)).await?;
    }
    redis.stop().await;
    Ok(Fleet {
        hits: hit_rows,
        storms,
        sets,
        set_items,
        set_concurrency,
    })
}

/// `gets` concurrent Gets of one missing key, alternating between daemon A and daemon B
/// (on the same Redis), a worker of the job on each, both counted in one tally.
async fn split_storm(
    a: &[Channel],
    b: &[Channel],
    gets: usize,
    fetch_delay: Duration,
) -> Result<Storm, String> {
    let job = format!("bench.fleet.storm.{}ms", fetch_delay.as_millis());
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
    let wa = Worker::start(a[0].clone(), spec.clone(), tally.clone()).await?;
    let wb = Worker::start(b[0].clone(), spec, tally.clone()).await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let args = format!("[\"fleet-storm\",{stamp}]").into_bytes();
    let channels: Vec<Channel> = a
        .iter()
        .zip(b)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let mut s = storm::storm(&channels, gets, &job, args, 100).await;
    s.fetch_delay = fetch_delay;
    // Any second fetch would have been sent by now; give a straggler a moment anyway.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.fetches = Some(tally.fetches.load(Ordering::Relaxed));
    wa.stop();
    wb.stop();
    Ok(s)
}
