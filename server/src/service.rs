//! The tonic service: decode, validate, call the engine, map the result to a `Status`.
//! Nothing else lives here; every error becomes a status in one place (`From<Error>`).

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use cachebackd_proto::v1::{
    self as pb, cacheback_server::Cacheback, daemon_message, fetch_result, get_result,
    worker_message,
};
use futures_util::future::join_all;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::engine::{Engine, GetOutcome};
use crate::error::Error;
use crate::model::{FetchReason, ItemState, JobConfig, JobName, MAX_SPAN};
use crate::workers::{Answered, Fetched, Outbound, WorkerId};

/// Fetches a worker takes at once when its Register says 0.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 16;
/// Most Gets one GetMany may carry.
pub const MAX_GET_MANY: usize = 1000;
/// The most a worker may ask for: bounds the memory of its stream.
pub const MAX_MAX_IN_FLIGHT: u32 = 65_536;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::UnknownJob(_) => Status::not_found(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::FetchFailed(_) | Error::ShuttingDown => Status::unavailable(message),
            Error::QueueFull { .. } => Status::resource_exhausted(message),
            Error::DeadlineExceeded => Status::deadline_exceeded(message),
            Error::Store(_) => Status::internal(message),
        }
    }
}

/// The `cacheback.v1.Cacheback` service.
#[derive(Clone)]
pub struct CachebackService {
    engine: Engine,
    shutdown: CancellationToken,
    calls: TaskTracker,
}

impl CachebackService {
    /// A service over `engine`; `shutdown` ends every worker stream; `calls` tracks the
    /// unary calls in flight so that shutdown can wait for them.
    pub fn new(engine: Engine, shutdown: CancellationToken, calls: TaskTracker) -> Self {
        CachebackService {
            engine,
            shutdown,
            calls,
        }
    }

    fn job(&self, name: &str) -> Result<JobName, Status> {
        Ok(JobName::parse(name, self.engine.limits())?)
    }

    /// One Get, as the `Get` RPC and each item of `GetMany` do it.
    async fn get_one(
        &self,
        req: &pb::GetRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<pb::GetResponse, Status> {
        let job = self.item(&req.job, &req.args)?;
        if req.peek {
            return Ok(get_response(self.engine.peek(&job, &req.args)?));
        }
        let outcome = within(
            deadline,
            self.engine.get(&job, &req.args, req.fetch_on_miss),
        )
        .await?;
        Ok(get_response(outcome))
    }

    fn item(&self, job: &str, args: &[u8]) -> Result<JobName, Status> {
        let job = self.job(job)?;
        self.engine.limits().check_args(args)?;
        Ok(job)
    }
}

type DaemonStream = Pin<Box<dyn Stream<Item = Result<pb::DaemonMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Cacheback for CachebackService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let _call = self.calls.token();
        let deadline = caller_deadline(&req);
        let response = self.get_one(&req.into_inner(), deadline).await?;
        Ok(Response::new(response))
    }

    async fn get_many(
        &self,
        req: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let _call = self.calls.token();
        let deadline = caller_deadline(&req);
        let requests = req.into_inner().requests;
        if requests.len() > MAX_GET_MANY {
            return Err(Status::invalid_argument(format!(
                "GetMany carries {} requests, over the limit of {MAX_GET_MANY}",
                requests.len()
            )));
        }
        let outcomes = join_all(requests.iter().map(|r| self.get_one(r, deadline))).await;
        // Items past the response's size budget fail alone: the rest are still answered.
        // Sizes are exact encoded lengths, and room is kept for the error entry of every
        // item still to come, so the response always fits the encoding limit.
        let entry = |r: &pb::GetResult| {
            let len = r.encoded_len();
            1 + prost::length_delimiter_len(len) + len
        };
        let too_large = pb::GetResult {
            outcome: Some(get_result::Outcome::Error(pb::ItemError {
                code: Code::ResourceExhausted as i32,
                message: "too large to fit in the GetMany response: Get it alone".into(),
            })),
        };
        let error_size = entry(&too_large);
        let budget = self.engine.limits().max_message_bytes();
        let mut used = 0;
        let count = outcomes.len();
        let results = outcomes
            .into_iter()
            .enumerate()
            .map(|(i, outcome)| {
                let result = pb::GetResult {
                    outcome: Some(match outcome {
                        Ok(r) => get_result::Outcome::Response(r),
                        Err(status) => get_result::Outcome::Error(pb::ItemError {
                            code: status.code() as i32,
                            message: status.message().to_owned(),
                        }),
                    }),
                };
                let reserve = (count - i - 1) * error_size;
                let result = if used + entry(&result) + reserve > budget {
                    too_large.clone()
                } else {
                    result
                };
                used += entry(&result);
                result
            })
            .collect();
        Ok(Response::new(pb::GetManyResponse { results }))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let _call = self.calls.token();
        let req = req.into_inner();
        let job = self.item(&req.job, &req.args)?;
        self.engine.limits().check_data(&req.data)?;
        let lifetime = req
            .lifetime
            .map(|d| span("SetRequest.lifetime", d, true))
            .transpose()?;
        let expires_at = self.engine.set(&job, &req.args, req.data, lifetime).await?;
        Ok(Response::new(pb::SetResponse {
            expires_at: Some(expires_at.into()),
        }))
    }

    async fn invalidate(
        &self,
        req: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let _call = self.calls.token();
        let req = req.into_inner();
        let job = self.item(&req.job, &req.args)?;
        let outcome = self.engine.invalidate(&job, &req.args).await?;
        Ok(Response::new(pb::InvalidateResponse {
            found: outcome.found,
            refresh_scheduled: outcome.refresh_scheduled,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let _call = self.calls.token();
        let req = req.into_inner();
        let job = self.item(&req.job, &req.args)?;
        let found = self.engine.delete(&job, &req.args).await?;
        Ok(Response::new(pb::DeleteResponse { found }))
    }

    type RegisterJobStream = DaemonStream;

    async fn register_job(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::RegisterJobStream>, Status> {
        let mut inbound = req.into_inner();
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        // Room for every fetch the worker may hold, plus Registered and a closing error.
        let (tx, rx) = mpsc::channel::<Outbound>(MAX_MAX_IN_FLIGHT as usize + 2);
        let (reg_tx, reg_rx) = mpsc::channel::<Result<pb::DaemonMessage, Status>>(1);
        tokio::spawn(async move {
            let stream = WorkerStream {
                engine,
                shutdown,
                tx,
            };
            stream.run(&mut inbound, reg_tx).await;
        });
        let fetches = ReceiverStream::new(rx).map(|out| match out {
            Outbound::Fetch(order) => Ok(pb::DaemonMessage {
                kind: Some(daemon_message::Kind::Fetch(pb::FetchRequest {
                    request_id: order.request_id.to_string(),
                    args: order.args.to_vec(),
                    reason: fetch_reason(order.reason) as i32,
                    deadline: Some(order.deadline.into()),
                    ..Default::default()
                })),
            }),
            Outbound::Close(e) => Err(Status::from(e)),
        });
        // Registered (or the registration's error) always comes first.
        let stream = ReceiverStream::new(reg_rx).chain(fetches);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One worker's stream: registration, then its answers, until it ends or the daemon stops.
struct WorkerStream {
    engine: Engine,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Outbound>,
}

impl WorkerStream {
    async fn run(
        self,
        inbound: &mut Streaming<pb::WorkerMessage>,
        reg_tx: mpsc::Sender<Result<pb::DaemonMessage, Status>>,
    ) {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            m = inbound.message() => m,
        };
        let register = match first {
            Ok(Some(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Register(r)),
            })) => r,
            Ok(Some(_)) => {
                let _ = reg_tx
                    .send(Err(Status::failed_precondition(
                        "the first message on a RegisterJob stream must be Register",
                    )))
                    .await;
                return;
            }
            Ok(None) | Err(_) => return,
        };
        let (job, config, worker_id, max_in_flight) = match self.register(register).await {
            Ok(registration) => registration,
            Err(status) => {
                let _ = reg_tx.send(Err(status)).await;
                return;
            }
        };
        // Counted as a worker of the job before it hears Registered, so that whoever sees
        // the registration also sees the worker. Its fetches cannot overtake Registered:
        // the response stream reads them only once `reg_tx` is dropped.
        self.engine
            .add_worker(&job, worker_id, max_in_flight, self.tx.clone());
        let registered = pb::DaemonMessage {
            kind: Some(daemon_message::Kind::Registered(pb::Registered {
                worker_id: worker_id.to_string(),
                config: Some(config_to_proto(&config)),
            })),
        };
        if reg_tx.send(Ok(registered)).await.is_err() {
            self.engine.workers().unregister(&job, worker_id);
            return;
        }
        drop(reg_tx);
        tracing::info!(%job, worker = %worker_id, max_in_flight, "worker registered");
        let end = self.serve(inbound, &job, worker_id).await;
        self.engine.workers().unregister(&job, worker_id);
        match end {
            Some(e) => {
                tracing::warn!(%job, worker = %worker_id, error = %e, "worker stream ended with an error");
                let _ = self.tx.send(Outbound::Close(e)).await;
            }
            None => tracing::info!(%job, worker = %worker_id, "worker stream ended"),
        }
    }

    async fn register(
        &self,
        r: pb::Register,
    ) -> Result<(JobName, JobConfig, WorkerId, usize), Status> {
        let job = JobName::parse(&r.job, self.engine.limits())?;
        let config = config_from_proto(r.config.unwrap_or_default(), self.engine.job_defaults())?;
        let max_in_flight = match r.max_in_flight {
            0 => DEFAULT_MAX_IN_FLIGHT,
            n if n > MAX_MAX_IN_FLIGHT => {
                return Err(Status::invalid_argument(format!(
                    "max_in_flight {n} is over the limit of {MAX_MAX_IN_FLIGHT}"
                )))
            }
            n => n,
        };
        self.engine.register_job(&job, config).await?;
        Ok((job, config, Uuid::new_v4(), max_in_flight as usize))
    }

    /// Takes the worker's answers until its stream ends (`None`) or misbehaves (`Some`).
    async fn serve(
        &self,
        inbound: &mut Streaming<pb::WorkerMessage>,
        job: &JobName,
        worker: WorkerId,
    ) -> Option<Error> {
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                m = inbound.message() => m,
            };
            let result = match message {
                Ok(Some(pb::WorkerMessage {
                    kind: Some(worker_message::Kind::Result(result)),
                })) => result,
                Ok(Some(pb::WorkerMessage {
                    kind: Some(worker_message::Kind::Register(_)),
                })) => {
                    return Some(Error::FailedPrecondition(
                        "this stream is registered already: a second Register is not allowed"
                            .into(),
                    ))
                }
                Ok(Some(pb::WorkerMessage { kind: None })) => {
                    return Some(Error::InvalidArgument(
                        "a WorkerMessage must hold Register or FetchResult".into(),
                    ))
                }
                Ok(None) => return None,
                Err(status) => {
                    tracing::info!(%job, %worker, %status, "worker stream broke");
                    return None;
                }
            };
            let outcome = match result.outcome {
                Some(fetch_result::Outcome::Value(v)) => match v.lifetime {
                    Some(d) => span("FetchedValue.lifetime", d, true)
                        .map(|lifetime| Fetched {
                            data: v.data,
                            lifetime: Some(lifetime),
                        })
                        .map_err(|s| s.message().to_owned()),
                    None => Ok(Fetched {
                        data: v.data,
                        lifetime: None,
                    }),
                },
                Some(fetch_result::Outcome::Error(e)) => Err(e.message),
                Some(fetch_result::Outcome::Absent(_)) => {
                    Err("this daemon does not store FetchedAbsent answers yet".into())
                }
                Some(fetch_result::Outcome::NotModified(_)) => {
                    Err("this daemon does not take NotModified answers yet".into())
                }
                None => Err("the worker answered with neither a value nor an error".into()),
            };
            match self
                .engine
                .workers()
                .answer(job, worker, &result.request_id, outcome)
            {
                Answered::Delivered => {}
                Answered::Late => {
                    tracing::info!(%job, %worker, request_id = %result.request_id, "late answer dropped")
                }
                Answered::Unknown => {
                    tracing::warn!(%job, %worker, request_id = %result.request_id, "answer to no fetch in flight on this stream dropped")
                }
            }
        }
    }
}

/// The caller's deadline, from the `grpc-timeout` header. tonic's own timer on that header
/// answers CANCELLED; a slightly earlier one here answers DEADLINE_EXCEEDED, as the
/// protocol says.
fn caller_deadline<T>(req: &Request<T>) -> Option<tokio::time::Instant> {
    let value = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let margin = (timeout / 50).min(Duration::from_millis(20));
    tokio::time::Instant::now().checked_add(timeout.saturating_sub(margin))
}

async fn within<T>(
    deadline: Option<tokio::time::Instant>,
    fut: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut)
            .await
            .unwrap_or(Err(Error::DeadlineExceeded)),
        None => fut.await,
    }
}

/// A protobuf Duration as a std one: non-negative, at most a century, and (unless
/// `zero_ok`) not zero.
fn span(field: &str, d: prost_types::Duration, zero_ok: bool) -> Result<Duration, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("{field} {why}"));
    let std = Duration::try_from(d).map_err(|_| bad("must not be negative"))?;
    if std > MAX_SPAN {
        return Err(bad("is over the limit of 100 years"));
    }
    if std.is_zero() && !zero_ok {
        return Err(bad("must be more than zero"));
    }
    Ok(std)
}

/// A registration's config with every default (the daemon's `job_defaults`) filled in.
fn config_from_proto(c: pb::JobConfig, defaults: &JobConfig) -> Result<JobConfig, Status> {
    let d = *defaults;
    Ok(JobConfig {
        lifetime: match c.lifetime {
            Some(x) => span("JobConfig.lifetime", x, true)?,
            None => d.lifetime,
        },
        refresh_timeout: match c.refresh_timeout {
            Some(x) => span("JobConfig.refresh_timeout", x, false)?,
            None => d.refresh_timeout,
        },
        fetch_on_miss: c.fetch_on_miss.unwrap_or(d.fetch_on_miss),
        fetch_on_stale_threshold: match c.fetch_on_stale_threshold {
            Some(x) => Some(span("JobConfig.fetch_on_stale_threshold", x, true)?),
            None => d.fetch_on_stale_threshold,
        },
        cache_ttl: match c.cache_ttl {
            Some(x) => span("JobConfig.cache_ttl", x, false)?,
            None => d.cache_ttl,
        },
    })
}

/// The effective config as sent in `Registered.config`.
pub fn config_to_proto(c: &JobConfig) -> pb::JobConfig {
    let d = |x: Duration| prost_types::Duration::try_from(x).unwrap_or_default();
    pb::JobConfig {
        lifetime: Some(d(c.lifetime)),
        refresh_timeout: Some(d(c.refresh_timeout)),
        fetch_on_miss: Some(c.fetch_on_miss),
        fetch_on_stale_threshold: c.fetch_on_stale_threshold.map(d),
        cache_ttl: Some(d(c.cache_ttl)),
        ..Default::default()
    }
}

fn fetch_reason(r: FetchReason) -> pb::FetchReason {
    match r {
        FetchReason::Miss => pb::FetchReason::Miss,
        FetchReason::Stale => pb::FetchReason::Stale,
        FetchReason::Invalidated => pb::FetchReason::Invalidated,
    }
}

fn get_response(o: GetOutcome) -> pb::GetResponse {
    let ts = |t: SystemTime| Some(prost_types::Timestamp::from(t));
    pb::GetResponse {
        state: match o.state {
            ItemState::Fresh => pb::ItemState::Fresh,
            ItemState::Stale => pb::ItemState::Stale,
            ItemState::Miss => pb::ItemState::Miss,
        } as i32,
        data: o.data,
        stored_at: o.times.and_then(|t| ts(t.stored_at)),
        expires_at: o.times.and_then(|t| ts(t.expires_at)),
        refresh_scheduled: o.refresh_scheduled,
        fetched: o.fetched,
        ..Default::default()
    }
}
