//! The tonic service: decode, validate, call the engine, map the result to a `Status`.
//! Nothing else lives here: the protobuf conversions are `convert`'s, a worker's stream is
//! `worker_stream`'s, and every error becomes a status in one place (`From<Error>`).

use std::time::Duration;

use cachebackd_proto::v1::{self as pb, cacheback_server::Cacheback, get_result};
use futures_util::future::join_all;
use prost::Message;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::auth::Access;
use crate::budget::{Planned, ResponseBudget};
use crate::convert::{self, get_response};
use crate::engine::{Engine, GetOptions, HitCandidate};
use crate::error::Error;
use crate::model::{ItemKey, JobName, Tag};
use crate::shutdown::Shutdown;
use crate::{subscribe_stream, worker_stream};

use cachebackd_proto::wire::MAX_GET_MANY;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let message = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(message),
            Error::UnknownJob(_) => Status::not_found(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::FetchFailed(_) | Error::ShuttingDown | Error::WorkerStuck(_) => {
                Status::unavailable(message)
            }
            Error::QueueFull { .. }
            | Error::QueuesFull { .. }
            | Error::TooManyJobs { .. }
            | Error::StoreFull(_)
            | Error::TooManySubscriptions { .. } => Status::resource_exhausted(message),
            Error::DeadlineExceeded => Status::deadline_exceeded(message),
            // An I/O error of the store: writes may succeed again without a restart.
            Error::Store(_) => Status::unavailable(message),
            Error::Internal(_) => Status::internal(message),
        }
    }
}

/// The `cacheback.v1.Cacheback` service.
#[derive(Clone)]
pub(crate) struct CachebackService {
    engine: Engine,
    shutdown: Shutdown,
}

impl CachebackService {
    /// A service over `engine`; `shutdown` owns every worker stream and counts the unary
    /// calls in flight, so that the drain can wait for them.
    pub(crate) fn new(engine: Engine, shutdown: Shutdown) -> Self {
        CachebackService { engine, shutdown }
    }

    fn job(&self, name: &str) -> Result<JobName, Status> {
        Ok(JobName::parse(name, self.engine.limits())?)
    }

    /// One Get, as the `Get` RPC and each item of `GetMany` do it.
    async fn get_one(
        &self,
        access: &Access,
        req: &pb::GetRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<pb::GetResponse, Status> {
        let job = self.item(&req.job, &req.args)?;
        access.allow(&job)?;
        if req.peek {
            return Ok(get_response(self.engine.peek(&job, &req.args).await?));
        }
        let options = GetOptions {
            fetch_on_miss: req.fetch_on_miss,
            max_age: req
                .max_age
                .map(|d| convert::span("GetRequest.max_age", d, true))
                .transpose()?,
        };
        let outcome = within(deadline, self.engine.get(&job, &req.args, options)).await?;
        Ok(get_response(outcome))
    }

    fn item(&self, job: &str, args: &[u8]) -> Result<JobName, Status> {
        let job = self.job(job)?;
        self.engine.limits().check_args(args)?;
        Ok(job)
    }
}

#[tonic::async_trait]
impl Cacheback for CachebackService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let _call = self.shutdown.call();
        let deadline = caller_deadline(&req);
        let access = Access::of(&req)?;
        let response = self.get_one(&access, &req.into_inner(), deadline).await?;
        Ok(Response::new(response))
    }

    async fn get_many(
        &self,
        req: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let _call = self.shutdown.call();
        let deadline = caller_deadline(&req);
        let access = Access::of(&req)?;
        let requests = req.into_inner().requests;
        if requests.len() > MAX_GET_MANY {
            return Err(Status::invalid_argument(format!(
                "GetMany carries {} requests, over the limit of {MAX_GET_MANY}",
                requests.len()
            )));
        }
        // Items past the response's size budget fail alone: the rest are still answered.
        // Sizes are exact encoded lengths, and room is kept for the error entry of every
        // item still to come, so the response always fits the encoding limit. Items are
        // read lazily against that budget (`budget`): one that cannot fit is never read.
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
        // Each item's job is parsed once (once for a run of items of one job, the usual
        // GetMany) and its key built once, for the plan and the first pass alike.
        let mut names: Vec<JobName> = Vec::new();
        let job_of: Vec<Option<usize>> = requests
            .iter()
            .map(|r| {
                if names.last().is_some_and(|n| n.as_str() == r.job) {
                    return Some(names.len() - 1);
                }
                let job = JobName::parse(&r.job, self.engine.limits()).ok()?;
                names.push(job);
                Some(names.len() - 1)
            })
            .collect();
        let readable: Vec<bool> = names.iter().map(|job| access.permits(job)).collect();
        let keys: Vec<Option<ItemKey>> = requests
            .iter()
            .zip(&job_of)
            .map(|(r, job)| {
                // An item the caller may not read is not planned by its size: its Get is
                // refused before anything about it is told.
                let job = job.filter(|&j| readable[j])?;
                Some(ItemKey::new(&names[job], &r.args))
            })
            .collect();
        let known: Vec<_> = keys
            .iter()
            .map(|key| key.as_ref().and_then(|k| self.engine.store().data_len(k)))
            .collect();
        let (plan, response_budget) = ResponseBudget::plan(budget, error_size, &known);
        let too_large_status = || Status::resource_exhausted(too_large_message(&too_large));
        let admit = |planned: usize, response: pb::GetResponse| {
            if response_budget.admit(planned, response.data.len()) {
                Ok(response)
            } else {
                Err(too_large_status())
            }
        };

        // The first pass: the items a plain read answers (fresh hits starting nothing), all
        // at once (`Engine::get_fresh_many`); every other item is a Get of its own.
        let mut first: Vec<usize> = Vec::new();
        let mut candidates = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let (Some(key), Some(job), Planned::Read(_)) = (&keys[i], job_of[i], plan[i]) else {
                continue;
            };
            let max_age = match r.max_age {
                Some(d) => match convert::span("GetRequest.max_age", d, true) {
                    Ok(d) => Some(d),
                    Err(_) => continue,
                },
                None => None,
            };
            if r.peek || self.engine.limits().check_args(&r.args).is_err() {
                continue;
            }
            first.push(i);
            candidates.push(HitCandidate {
                job: &names[job],
                key,
                options: GetOptions {
                    fetch_on_miss: r.fetch_on_miss,
                    max_age,
                },
            });
        }
        let mut outcomes: Vec<Option<Result<pb::GetResponse, Status>>> =
            (0..requests.len()).map(|_| None).collect();
        for (i, hit) in first
            .into_iter()
            .zip(self.engine.get_fresh_many(&candidates))
        {
            if let (Some(outcome), Planned::Read(planned)) = (hit, plan[i]) {
                outcomes[i] = Some(admit(planned, get_response(outcome)));
            }
        }
        drop(candidates);
        let rest = join_all(
            requests
                .iter()
                .zip(&plan)
                .zip(&outcomes)
                .filter(|(_, done)| done.is_none())
                .map(|((r, &planned), _)| {
                    let access = &access;
                    let admit = &admit;
                    async move {
                        let Planned::Read(planned) = planned else {
                            return Err(too_large_status());
                        };
                        admit(planned, self.get_one(access, r, deadline).await?)
                    }
                }),
        )
        .await;
        let mut rest = rest.into_iter();
        let outcomes: Vec<Result<pb::GetResponse, Status>> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| rest.next().expect("one answer per item left")))
            .collect();
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
        let _call = self.shutdown.call();
        let access = Access::of(&req)?;
        let req = req.into_inner();
        let job = self.item(&req.job, &req.args)?;
        access.allow(&job)?;
        self.engine.limits().check_data(&req.data)?;
        let lifetime = req
            .lifetime
            .map(|d| convert::span("SetRequest.lifetime", d, true))
            .transpose()?;
        let tags = Tag::parse_item_tags(&req.tags, self.engine.limits())?;
        let expires_at = self
            .engine
            .set(&job, &req.args, req.data, lifetime, tags)
            .await?;
        Ok(Response::new(pb::SetResponse {
            expires_at: Some(expires_at.into()),
        }))
    }

    async fn invalidate(
        &self,
        req: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let _call = self.shutdown.call();
        let access = Access::of(&req)?;
        let req = req.into_inner();
        let job = self.item(&req.job, &req.args)?;
        access.allow(&job)?;
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
        let _call = self.shutdown.call();
        let access = Access::of(&req)?;
        let req = req.into_inner();
        let job = self.item(&req.job, &req.args)?;
        access.allow(&job)?;
        let found = self.engine.delete(&job, &req.args).await?;
        Ok(Response::new(pb::DeleteResponse { found }))
    }

    type SubscribeStream = subscribe_stream::EventStream;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Each added item is checked as a Get of it would be: a job the caller may not read
        // ends the stream with PERMISSION_DENIED.
        let access = Access::of(&req)?;
        let may_read: subscribe_stream::ReadCheck = Box::new(move |job| access.allow(job));
        let stream = subscribe_stream::open(
            self.engine.clone(),
            self.shutdown.clone(),
            req.into_inner(),
            may_read,
        );
        Ok(Response::new(stream))
    }

    async fn invalidate_tags(
        &self,
        req: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateTagsResponse>, Status> {
        let _call = self.shutdown.call();
        let tags = convert::tags_to_invalidate(&req.into_inner().tags, self.engine.limits())?;
        let mark = self.engine.invalidate_tags(&tags).await?;
        Ok(Response::new(pb::InvalidateTagsResponse {
            invalidated_before: Some(mark.into()),
        }))
    }

    type RegisterJobStream = worker_stream::DaemonStream;

    async fn register_job(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::RegisterJobStream>, Status> {
        let access = Access::of(&req)?;
        let stream = worker_stream::open(
            self.engine.clone(),
            self.shutdown.clone(),
            access,
            crate::intake::take(&req)?,
        );
        Ok(Response::new(stream))
    }
}

fn too_large_message(entry: &pb::GetResult) -> String {
    match &entry.outcome {
        Some(get_result::Outcome::Error(e)) => e.message.clone(),
        _ => String::new(),
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
