//! Talking to a server under test: channels with the same settings for the daemon and the
//! baseline, the Get caller the load generator drives, and bulk Sets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cachebackd_proto::v1::{self as pb, cacheback_client::CachebackClient};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::load::{self, Caller, Throughput};
use crate::worker::{self, Tally, Worker};

/// Largest message a benchmark client accepts.
const MAX_MESSAGE_BYTES: usize = cachebackd_proto::wire::CLIENT_MAX_MESSAGE_BYTES;

/// `n` channels (each its own HTTP/2 connection) to `addr`, all with the same settings.
pub async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?,
        );
    }
    Ok(out)
}

/// A client over `channel` with the benchmark's message limits.
pub fn client(channel: Channel) -> CachebackClient<Channel> {
    CachebackClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A protobuf Duration of `secs` seconds.
pub fn dur(secs: f64) -> prost_types::Duration {
    prost_types::Duration::try_from(Duration::from_secs_f64(secs)).expect("a small duration")
}

/// A job config with `lifetime` seconds of freshness and the other settings at their defaults.
pub fn job_config(lifetime: f64) -> pb::JobConfig {
    pb::JobConfig {
        lifetime: Some(dur(lifetime)),
        ..Default::default()
    }
}

/// Registers `job` with `config` through a worker stream that ends at once: the daemon keeps
/// a job's config (and serves its items) with no worker connected.
pub async fn register(channel: Channel, job: &str, config: pb::JobConfig) -> Result<(), String> {
    let spec = worker::Spec {
        job: job.to_owned(),
        config,
        max_in_flight: 1,
        delay: Duration::ZERO,
        data: Arc::new(Vec::new()),
        gate: None,
        max_batch: 0,
    };
    Worker::start(channel, spec, Tally::new()).await?.stop();
    Ok(())
}

/// The args of item `i`.
pub fn args(i: u64) -> Vec<u8> {
    format!("[{i}]").into_bytes()
}

/// One Get of a fixed item (or one GetMany of a fixed batch), every item expected FRESH with
/// `expect_len` bytes of data.
pub struct GetCaller {
    client: CachebackClient<Channel>,
    requests: Vec<pb::GetRequest>,
    expect_len: usize,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl GetCaller {
    /// A caller of `job`'s items `args` over `channel`: a Get for one, a GetMany for more.
    pub fn new(channel: Channel, job: &str, args: Vec<Vec<u8>>, expect_len: usize) -> GetCaller {
        GetCaller {
            client: client(channel),
            requests: args
                .into_iter()
                .map(|args| pb::GetRequest {
                    job: job.to_owned(),
                    args,
                    fetch_on_miss: None,
                    ..Default::default()
                })
                .collect(),
            expect_len,
            authorization: None,
        }
    }

    /// Sends `authorization` (a bearer token) with every call.
    pub fn with_authorization(
        mut self,
        value: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ) -> GetCaller {
        self.authorization = Some(value);
        self
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(a) = &self.authorization {
            request.metadata_mut().insert("authorization", a.clone());
        }
        request
    }

    fn check(&self, response: &pb::GetResponse) -> Result<(), String> {
        if response.state != pb::ItemState::Fresh as i32 || response.data.len() != self.expect_len {
            return Err(format!(
                "Get answered state {} with {} bytes, expected FRESH with {}",
                response.state,
                response.data.len(),
                self.expect_len
            ));
        }
        Ok(())
    }
}

impl Caller for GetCaller {
    async fn call(&mut self) -> Result<(), String> {
        if let [one] = self.requests.as_slice() {
            let response = self
                .client
                .get(self.request(one.clone()))
                .await
                .map_err(|s| format!("Get: {s}"))?
                .into_inner();
            return self.check(&response);
        }
        let many = pb::GetManyRequest {
            requests: self.requests.clone(),
        };
        let response = self
            .client
            .get_many(self.request(many))
            .await
            .map_err(|s| format!("GetMany: {s}"))?
            .into_inner();
        if response.results.len() != self.requests.len() {
            return Err(format!(
                "GetMany answered {} results for {} requests",
                response.results.len(),
                self.requests.len()
            ));
        }
        for result in &response.results {
            match &result.outcome {
                Some(pb::get_result::Outcome::Response(r)) => self.check(r)?,
                other => return Err(format!("GetMany item: {other:?}")),
            }
        }
        Ok(())
    }
}

/// Sets items `0..n` of `job` (`data(i)` each, `lifetime` if given) with `concurrency` calls
/// in flight over `channels`; the throughput and latency of those Sets.
pub async fn set_items(
    channels: &[Channel],
    concurrency: usize,
    job: &str,
    n: u64,
    lifetime: Option<prost_types::Duration>,
    data: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
) -> Result<Throughput, String> {
    let next = Arc::new(AtomicU64::new(0));
    let data = Arc::new(data);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut client = client(channels[t % channels.len()].clone());
        let (next, data, job) = (next.clone(), data.clone(), job.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut hist = load::histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(hist);
                }
                let request = pb::SetRequest {
                    job: job.clone(),
                    args: args(i),
                    data: data(i),
                    lifetime,
                    ..Default::default()
                };
                let t0 = Instant::now();
                client
                    .set(request)
                    .await
                    .map_err(|s| format!("Set {job} item {i}: {s}"))?;
                hist.saturating_record(t0.elapsed().as_nanos() as u64);
            }
        }));
    }
    let mut latency = load::histogram();
    for task in tasks {
        let hist: load::Histogram = task.await.map_err(|e| e.to_string())??;
        latency.add(&hist).expect("same bounds");
    }
    Ok(Throughput {
        calls: latency.len(),
        errors: 0,
        first_error: None,
        secs: start.elapsed().as_secs_f64(),
        latency,
        server_cpu: None,
        client_cpu: None,
    })
}
