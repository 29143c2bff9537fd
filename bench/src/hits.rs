//! Get hits: the daemon's fresh-hit path against the no-op baseline (and Redis GET), at each
//! payload, concurrency and channel count, the servers taking turns round by round so that
//! both see the same noise on a shared machine. The same for GetMany (a batch of distinct
//! items per call) against the baseline's GetMany and Redis MGET.

use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::load::{self, Spec, Throughput};
use crate::marks;
use crate::redis_bench::{RedisGet, RedisTarget};
use crate::rpc::{self, GetCaller};

/// The job whose items the hits read.
pub const JOB: &str = "bench.hit";

/// One point of the grid.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Bytes of data in the item.
    pub payload: usize,
    /// Calls in flight.
    pub concurrency: usize,
    /// Connections they share.
    pub channels: usize,
    /// Items per call: 1 is a Get, more a GetMany (Redis: MGET) of that many distinct items.
    pub batch: usize,
}

impl Setting {
    /// The grid of issue 5 by default: payloads of 100 B and 10 KiB, concurrency 1, 16 and
    /// 64, over 1 and 4 channels (one call in flight uses one channel, so c=1 is run over one
    /// only).
    pub fn grid(payloads: &[usize], concurrency: &[usize], channels: &[usize]) -> Vec<Setting> {
        let mut out = Vec::new();
        for &payload in payloads {
            for &concurrency in concurrency {
                for &channels in channels {
                    if channels <= concurrency {
                        out.push(Setting {
                            payload,
                            concurrency,
                            channels,
                            batch: 1,
                        });
                    }
                }
            }
        }
        out
    }

    /// GetMany of `batch` items of 100 B: one call in flight, then 16 and 64 over 4 channels.
    pub fn get_many_grid(batch: usize) -> Vec<Setting> {
        [(1, 1), (16, 4), (64, 4)]
            .into_iter()
            .map(|(concurrency, channels)| Setting {
                payload: 100,
                concurrency,
                channels,
                batch,
            })
            .collect()
    }

    /// The args of the items one call reads: `[payload]` for a Get, `[payload,i]` for the
    /// items of a batch (the baseline answers the first number's worth of bytes).
    pub fn item_args(&self) -> Vec<Vec<u8>> {
        if self.batch == 1 {
            vec![rpc::args(self.payload as u64)]
        } else {
            (0..self.batch)
                .map(|i| format!("[{},{i}]", self.payload).into_bytes())
                .collect()
        }
    }

    /// As the table shows it.
    pub fn label(&self) -> String {
        let size = if self.payload >= 1024 {
            format!("{} KiB", self.payload / 1024)
        } else {
            format!("{} B", self.payload)
        };
        let base = format!("{size}, c={}, {} ch", self.concurrency, self.channels);
        if self.batch == 1 {
            base
        } else {
            format!("GetMany ×{}, {base}", self.batch)
        }
    }
}

/// The figures of one setting.
pub struct Row {
    /// The setting.
    pub setting: Setting,
    /// The daemon.
    pub daemon: Throughput,
    /// The no-op baseline.
    pub baseline: Throughput,
    /// Redis GET, if redis-server was there.
    pub redis: Option<Throughput>,
}

impl Row {
    /// Daemon throughput over the baseline's.
    pub fn ratio(&self) -> f64 {
        self.daemon.per_sec() / self.baseline.per_sec().max(f64::MIN_POSITIVE)
    }

    /// Daemon CPU per call over the baseline's: the overhead of the daemon's own work, less
    /// sensitive to a busy machine than throughput.
    pub fn cpu_ratio(&self) -> Option<f64> {
        Some(self.daemon.cpu_per_call_us()? / self.baseline.cpu_per_call_us()?)
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "payload_bytes": self.setting.payload,
            "concurrency": self.setting.concurrency,
            "channels": self.setting.channels,
            "batch": self.setting.batch,
            "items_per_sec": {
                "cachebackd": self.daemon.per_sec() * self.setting.batch as f64,
                "baseline": self.baseline.per_sec() * self.setting.batch as f64,
                "redis": self.redis.as_ref().map(|r| r.per_sec() * self.setting.batch as f64),
            },
            "cachebackd": self.daemon.to_json(),
            "baseline": self.baseline.to_json(),
            "ratio": self.ratio(),
            "cpu_per_call_ratio": self.cpu_ratio(),
            "redis": self.redis.as_ref().map(Throughput::to_json),
        })
    }
}

/// Sets the items the hits read (see [`Setting::item_args`]): each holds as many bytes as
/// its args' first number, as the baseline answers.
pub async fn prepare(daemon: &[Channel], settings: &[Setting]) -> Result<(), String> {
    rpc::register(daemon[0].clone(), JOB, rpc::job_config(24.0 * 3600.0)).await?;
    let mut client = rpc::client(daemon[0].clone());
    let mut done = std::collections::HashSet::new();
    for setting in settings {
        for args in setting.item_args() {
            if !done.insert(args.clone()) {
                continue;
            }
            client
                .set(cachebackd_proto::v1::SetRequest {
                    job: JOB.into(),
                    args,
                    data: vec![b'x'; setting.payload],
                    lifetime: None,
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("Set {JOB}: {s}"))?;
        }
    }
    Ok(())
}

/// Whether the daemon serves GetMany (an older binary answers UNIMPLEMENTED).
pub async fn serves_get_many(daemon: &[Channel]) -> bool {
    let mut client = rpc::client(daemon[0].clone());
    let r = client
        .get_many(cachebackd_proto::v1::GetManyRequest { requests: vec![] })
        .await;
    !matches!(r, Err(s) if s.code() == tonic::Code::Unimplemented)
}

/// The server processes whose CPU time the runs watch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pids {
    /// The daemon.
    pub daemon: Option<u32>,
    /// The baseline.
    pub baseline: Option<u32>,
}

/// Measures every setting: `rounds` rounds each, the servers in turn, merged.
pub async fn run(
    pids: Pids,
    settings: &[Setting],
    daemon: &[Channel],
    baseline: &[Channel],
    redis: Option<&RedisTarget>,
    spec: Spec,
    rounds: usize,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for &setting in settings {
        let spec = Spec {
            concurrency: setting.concurrency,
            ..spec
        };
        let grpc = |channels: &[Channel]| -> Vec<GetCaller> {
            (0..setting.concurrency)
                .map(|i| {
                    GetCaller::new(
                        channels[i % setting.channels].clone(),
                        JOB,
                        setting.item_args(),
                        setting.payload,
                    )
                })
                .collect()
        };
        let mut daemon_total: Option<Throughput> = None;
        let mut baseline_total: Option<Throughput> = None;
        let mut redis_total: Option<Throughput> = None;
        for round in 0..rounds {
            // Alternate who goes first, so that neither always runs on a warmer machine.
            for turn in 0..2 {
                let t0 = marks::now();
                if (round + turn) % 2 == 0 {
                    add(
                        &mut daemon_total,
                        load::closed_loop(spec, grpc(daemon), pids.daemon).await,
                    );
                    let label = format!("hits {} cachebackd", setting.label());
                    marks::mark(&label, t0, marks::now());
                } else {
                    add(
                        &mut baseline_total,
                        load::closed_loop(spec, grpc(baseline), pids.baseline).await,
                    );
                    let label = format!("hits {} baseline", setting.label());
                    marks::mark(&label, t0, marks::now());
                }
            }
            if let Some(target) = redis {
                let callers: Vec<RedisGet> = (0..setting.concurrency)
                    .map(|i| target.getter(i % setting.channels, &setting))
                    .collect();
                add(
                    &mut redis_total,
                    load::closed_loop(spec, callers, Some(target.pid())).await,
                );
            }
        }
        let row = Row {
            setting,
            daemon: daemon_total.expect("at least one round"),
            baseline: baseline_total.expect("at least one round"),
            redis: redis_total,
        };
        for (who, t) in [("cachebackd", &row.daemon), ("baseline", &row.baseline)] {
            if let Some(e) = &t.first_error {
                return Err(format!("{who} Get at {}: {e}", setting.label()));
            }
        }
        let items = setting.batch as f64;
        eprintln!(
            "  {:<38} cachebackd {:>9.0}/s  baseline {:>9.0}/s  ratio {:.2} (items/s)",
            setting.label(),
            row.daemon.per_sec() * items,
            row.baseline.per_sec() * items,
            row.ratio()
        );
        rows.push(row);
    }
    Ok(rows)
}

fn add(total: &mut Option<Throughput>, run: Throughput) {
    match total {
        Some(t) => t.merge(run),
        None => *total = Some(run),
    }
}
