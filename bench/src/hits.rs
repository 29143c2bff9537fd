//! Get hits: the daemon's fresh-hit path against the no-op baseline (and Redis GET), at each
//! payload, concurrency and channel count, the servers taking turns round by round so that
//! both see the same noise on a shared machine.

use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::load::{self, Spec, Throughput};
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
}

impl Setting {
    /// The grid of issue 5: payloads of 100 B and 10 KiB, concurrency 1, 16 and 64, over 1
    /// and 4 channels (one call in flight uses one channel, so c=1 is run over one only).
    pub fn grid() -> Vec<Setting> {
        let mut out = Vec::new();
        for payload in [100, 10 * 1024] {
            for concurrency in [1, 16, 64] {
                for channels in [1, 4] {
                    if channels <= concurrency {
                        out.push(Setting {
                            payload,
                            concurrency,
                            channels,
                        });
                    }
                }
            }
        }
        out
    }

    /// As the table shows it.
    pub fn label(&self) -> String {
        let size = if self.payload >= 1024 {
            format!("{} KiB", self.payload / 1024)
        } else {
            format!("{} B", self.payload)
        };
        format!("{size}, c={}, {} ch", self.concurrency, self.channels)
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

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "payload_bytes": self.setting.payload,
            "concurrency": self.setting.concurrency,
            "channels": self.setting.channels,
            "cachebackd": self.daemon.to_json(),
            "baseline": self.baseline.to_json(),
            "ratio": self.ratio(),
            "redis": self.redis.as_ref().map(Throughput::to_json),
        })
    }
}

/// Sets the items the hits read: item `[n]` of [`JOB`] holds `n` bytes, as the baseline's
/// Get answers `n` bytes for args `[n]`.
pub async fn prepare(daemon: &[Channel], payloads: &[usize]) -> Result<(), String> {
    rpc::register(daemon[0].clone(), JOB, rpc::job_config(24.0 * 3600.0)).await?;
    let mut client = rpc::client(daemon[0].clone());
    for &n in payloads {
        client
            .set(cachebackd_proto::v1::SetRequest {
                job: JOB.into(),
                args: rpc::args(n as u64),
                data: vec![b'x'; n],
                lifetime: None,
            })
            .await
            .map_err(|s| format!("Set {JOB} [{n}]: {s}"))?;
    }
    Ok(())
}

/// Measures every setting: `rounds` rounds each, the servers in turn, merged.
pub async fn run(
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
                        rpc::args(setting.payload as u64),
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
                if (round + turn) % 2 == 0 {
                    add(
                        &mut daemon_total,
                        load::closed_loop(spec, grpc(daemon)).await,
                    );
                } else {
                    add(
                        &mut baseline_total,
                        load::closed_loop(spec, grpc(baseline)).await,
                    );
                }
            }
            if let Some(target) = redis {
                let callers: Vec<RedisGet> = (0..setting.concurrency)
                    .map(|i| target.getter(i % setting.channels, setting.payload))
                    .collect();
                add(&mut redis_total, load::closed_loop(spec, callers).await);
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
        eprintln!(
            "  Get hit {:<22} cachebackd {:>9.0}/s  baseline {:>9.0}/s  ratio {:.2}",
            setting.label(),
            row.daemon.per_sec(),
            row.baseline.per_sec(),
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
