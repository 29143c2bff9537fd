//! The near cache's hit: reads of one hot item per second by one task (one core) through
//! the Rust client with a near cache, beside the same client's plain Get and Redis GET (when
//! redis-server is on PATH), each read issued one after the other by one task. The near
//! cache answers in the reader's process; the other two pay a round trip each.

use std::time::{Duration, Instant};

use cacheback::{Client, Job};
use serde_json::{json, Value};

use crate::marks;
use crate::redis_bench::RedisTarget;

/// The job the near-cache rows read.
const JOB: &str = "bench.near";

/// The item's data: a JSON string of this many bytes, as a client stores it.
pub const PAYLOAD: usize = 100;

struct Hot;

impl Job for Hot {
    type Args = (u32,);
    type Output = String;
    type Error = std::convert::Infallible;

    const NAME: &'static str = JOB;

    async fn fetch(&self, _: (u32,)) -> Result<String, Self::Error> {
        Ok("x".repeat(PAYLOAD - 2))
    }
}

/// Reads per second of each way to read the hot item.
pub struct NearRow {
    /// Near-cache hits.
    pub near: f64,
    /// Plain Gets by a client without a near cache.
    pub get: f64,
    /// Redis GETs of the same bytes, one at a time.
    pub redis: Option<f64>,
    /// The near cache's own counters after its run (hits, misses).
    pub counted: (u64, u64),
}

impl NearRow {
    /// The figures as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "payload_bytes": PAYLOAD,
            "near_cache_reads_per_sec": self.near,
            "plain_get_reads_per_sec": self.get,
            "redis_get_reads_per_sec": self.redis,
            "near_cache_hits": self.counted.0,
            "near_cache_misses": self.counted.1,
        })
    }
}

/// Runs the three for `measure` each, against the daemon at `url` (and `redis`).
pub async fn run(
    url: &str,
    channel: tonic::transport::Channel,
    redis: Option<&RedisTarget>,
    measure: Duration,
) -> Result<NearRow, String> {
    crate::rpc::register(channel, JOB, crate::rpc::job_config(24.0 * 3600.0)).await?;
    let plain = Client::connect(url).await.map_err(|e| e.to_string())?;
    let near = Client::builder(url)
        .near_cache(1_000)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let args = (7,);
    plain
        .job(&Hot)
        .set(&args, &"x".repeat(PAYLOAD - 2))
        .await
        .map_err(|e| e.to_string())?;

    let near_rate = rate("near-cache hit", measure, || async {
        near.job(&Hot)
            .get(&args)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await?;
    let counted = near
        .near_cache_stats()
        .map_or((0, 0), |s| (s.hits, s.misses));
    let get_rate = rate("plain Get, one at a time", measure, || async {
        plain
            .job(&Hot)
            .get(&args)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await?;
    let redis_rate = match redis {
        Some(target) => {
            let mut conn = target.connection();
            redis::cmd("SET")
                .arg("bench.near")
                .arg(vec![b'x'; PAYLOAD])
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| format!("redis SET: {e}"))?;
            Some(
                rate("Redis GET, one at a time", measure, || {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("GET")
                            .arg("bench.near")
                            .query_async::<Vec<u8>>(&mut conn)
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("redis GET: {e}"))
                    }
                })
                .await?,
            )
        }
        None => None,
    };
    Ok(NearRow {
        near: near_rate,
        get: get_rate,
        redis: redis_rate,
        counted,
    })
}

/// Reads per second of `read`, called one after the other for `measure` (after a tenth of
/// it as warm-up).
async fn rate<F, Fut>(label: &str, measure: Duration, mut read: F) -> Result<f64, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let warm = Instant::now();
    while warm.elapsed() < measure / 10 {
        read().await?;
    }
    let start = marks::now();
    let started = Instant::now();
    let mut n: u64 = 0;
    loop {
        for _ in 0..256 {
            read().await?;
        }
        n += 256;
        if started.elapsed() >= measure {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    marks::mark(label, start, marks::now());
    Ok(n as f64 / secs)
}
