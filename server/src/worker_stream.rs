//! One worker's `RegisterJob` stream, as a state machine: it waits for `Register`, then
//! (registered) takes `FetchResult`s until the stream ends, the worker misbehaves or the
//! daemon stops; then its worker is unregistered, so its fetches fail over. The service
//! only hands the stream over ([`open`]); the registry (`workers`) keeps the fetches.
//!
//! An answer the daemon refuses while the stream stays open (past the budget of answer
//! bytes, or a field out of bounds) fails its fetch and is told to the worker in an
//! `AnswerRefused` (`DaemonMessage.refused`, an extension of ours beyond PROTOCOL.md).

use std::pin::Pin;
use std::time::Duration;

use cachebackd_proto::v1::{self as pb, daemon_message, fetch_result, worker_message};
use cachebackd_proto::wire::{DEFAULT_MAX_IN_FLIGHT, MAX_MAX_IN_FLIGHT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};
use uuid::Uuid;

use crate::auth::Access;
use crate::convert;
use crate::engine::Engine;
use crate::error::Error;
use crate::intake::{Inbound, IntakeError, Received, Refusal};
use crate::logs::{clip, RateLimit};
use crate::model::{JobConfig, JobName};
use crate::shutdown::Shutdown;
use crate::workers::{Answered, Outbound, RequestId, WorkerId};

/// How many notices of refused answers a stream holds unsent. They have a channel of their
/// own, not the fetches' one: the registry takes a full fetch channel for a stream going
/// away, so notices there could cost the worker its fetches.
const NOTICES: usize = 64;

/// What the daemon sends down a worker's stream.
pub(crate) type DaemonStream =
    Pin<Box<dyn Stream<Item = Result<pb::DaemonMessage, Status>> + Send>>;

/// Serves `inbound` in its own task (owned by `shutdown`) until it ends or the daemon
/// closes; the stream of what the
/// daemon sends back (`Registered` first, then fetches).
pub(crate) fn open(
    engine: Engine,
    shutdown: Shutdown,
    access: Access,
    mut inbound: Inbound,
) -> DaemonStream {
    // Room for every fetch the worker may hold, plus Registered and a closing error.
    let (tx, rx) = mpsc::channel::<Outbound>(MAX_MAX_IN_FLIGHT as usize + 2);
    let (reg_tx, reg_rx) = mpsc::channel::<Result<pb::DaemonMessage, Status>>(1);
    let (notices, notices_rx) = mpsc::channel::<pb::DaemonMessage>(NOTICES);
    shutdown.clone().spawn(async move {
        let stream = WorkerStream {
            engine,
            shutdown,
            tx,
            notices,
            access,
        };
        stream.run(&mut inbound, reg_tx).await;
    });
    let fetches = ReceiverStream::new(rx).map(|out| match out {
        Outbound::Fetch(order) => Ok(convert::fetch_request(order)),
        Outbound::Batch(orders) => Ok(convert::fetch_batch(orders)),
        Outbound::Close(e) => Err(Status::from(e)),
    });
    let notices = ReceiverStream::new(notices_rx).map(Ok);
    // Registered (or the registration's error) always comes first; notices are only ever
    // sent once registered.
    let stream = ReceiverStream::new(reg_rx).chain(fetches.merge(notices));
    Box::pin(stream)
}

/// One worker's stream: registration, then its answers, until it ends or the daemon stops.
struct WorkerStream {
    engine: Engine,
    shutdown: Shutdown,
    tx: mpsc::Sender<Outbound>,
    /// Notices of refused answers (see [`WorkerStream::tell_refused`]).
    notices: mpsc::Sender<pb::DaemonMessage>,
    /// Who opened the stream: its Register must name a job they may serve.
    access: Access,
}

impl WorkerStream {
    async fn run(
        self,
        inbound: &mut Inbound,
        reg_tx: mpsc::Sender<Result<pb::DaemonMessage, Status>>,
    ) {
        let first = tokio::select! {
            _ = self.shutdown.closing() => return,
            m = inbound.message() => m,
        };
        let register = match first {
            Ok(Some(Received::Message(
                pb::WorkerMessage {
                    kind: Some(worker_message::Kind::Register(r)),
                },
                _,
            ))) => r,
            Ok(Some(_)) => {
                let _ = reg_tx
                    .send(Err(Status::failed_precondition(
                        "the first message on a RegisterJob stream must be Register",
                    )))
                    .await;
                return;
            }
            Err(
                e @ (IntakeError::TooLarge { .. }
                | IntakeError::Compressed(_)
                | IntakeError::Truncated
                | IntakeError::Decode(_)),
            ) => {
                let _ = reg_tx
                    .send(Err(Status::invalid_argument(format!(
                        "the first message on this stream cannot be read: {}",
                        clip(&e.to_string())
                    ))))
                    .await;
                return;
            }
            Ok(None) | Err(IntakeError::Broken(_)) => return,
        };
        let max_batch = register.max_batch.clamp(1, MAX_MAX_IN_FLIGHT) as usize;
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
        if let Err(e) =
            self.engine
                .add_worker(&job, worker_id, max_in_flight, max_batch, self.tx.clone())
        {
            let _ = reg_tx.send(Err(e.into())).await;
            return;
        }
        let registered = pb::DaemonMessage {
            kind: Some(daemon_message::Kind::Registered(pb::Registered {
                worker_id: worker_id.to_string(),
                config: Some(convert::job_config_to_proto(&config)),
            })),
        };
        if reg_tx.send(Ok(registered)).await.is_err() {
            self.engine.workers().unregister(&job, worker_id);
            return;
        }
        drop(reg_tx);
        tracing::info!(%job, worker = %worker_id, max_in_flight, "worker registered");
        let end = self
            .serve(inbound, &job, worker_id, config.refresh_timeout)
            .await;
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
        self.access.allow(&job)?;
        let config = convert::job_config(r.config.unwrap_or_default(), self.engine.job_defaults())?;
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
        inbound: &mut Inbound,
        job: &JobName,
        worker: WorkerId,
        refresh_timeout: Duration,
    ) -> Option<Error> {
        static UNKNOWN: RateLimit = RateLimit::new(Duration::from_secs(10));
        static LATE: RateLimit = RateLimit::new(Duration::from_secs(10));
        // Whether every slot of the worker is held by lost fetches is looked at this often.
        let every = (refresh_timeout / 4).max(Duration::from_millis(50));
        let mut stuck_check = tokio::time::interval(every);
        stuck_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                _ = self.shutdown.closing() => return None,
                m = inbound.message() => m,
                _ = stuck_check.tick() => {
                    match self.engine.workers().stuck(job, worker, refresh_timeout) {
                        Some(lost) => return Some(Error::WorkerStuck(format!(
                            "this worker holds {lost} fetches past their deadline, every one of its slots, and has answered nothing for a further refresh_timeout ({}): its stream is ended so that it can reconnect with a fresh window",
                            humantime::format_duration(refresh_timeout)
                        ))),
                        None => continue,
                    }
                }
            };
            let (result, _held) = match message {
                Ok(Some(Received::Message(message, held))) => match message.kind {
                    Some(worker_message::Kind::Result(result)) => (result, held),
                    Some(worker_message::Kind::Register(_)) => {
                        return Some(Error::FailedPrecondition(
                            "this stream is registered already: a second Register is not allowed"
                                .into(),
                        ))
                    }
                    None => {
                        return Some(Error::InvalidArgument(
                            "a WorkerMessage must hold Register or FetchResult".into(),
                        ))
                    }
                },
                Ok(Some(Received::Refused(refusal))) => {
                    self.refuse(inbound, job, worker, refusal);
                    continue;
                }
                Ok(None) => return None,
                Err(IntakeError::Broken(status)) => {
                    tracing::info!(%job, %worker, status = %clip(&status.to_string()), "worker stream broke");
                    return None;
                }
                // A message that cannot be read (over the size limit, not protobuf): its
                // request id is unknown, so no fetch can be failed for it; the worker is
                // told, and its fetches go to another worker.
                Err(e) => {
                    return Some(Error::InvalidArgument(format!(
                        "a message from this worker cannot be read: {}",
                        clip(&e.to_string())
                    )));
                }
            };
            // A FetchError is the worker's own failure; any other failed outcome is the
            // daemon refusing the answer at the edge, which the worker is told of.
            let said_error = matches!(result.outcome, Some(fetch_result::Outcome::Error(_)));
            let outcome = convert::fetch_outcome(result.outcome, self.engine.limits());
            if let (Err(why), false) = (&outcome, said_error) {
                self.tell_refused(inbound, job, &result.request_id, why);
            }
            let workers = self.engine.workers();
            let answered = match RequestId::parse(&result.request_id) {
                Some(id) => workers.answer(job, worker, id, outcome),
                None => workers.unknown_answer(),
            };
            match answered {
                Answered::Delivered => {}
                Answered::Late => {
                    if let Some(suppressed) = LATE.allow() {
                        tracing::info!(%job, %worker, request_id = %clip(&result.request_id), more_since_last_line = suppressed, "late answer dropped")
                    }
                }
                Answered::Unknown => {
                    if let Some(suppressed) = UNKNOWN.allow() {
                        tracing::warn!(%job, %worker, request_id = %clip(&result.request_id), more_since_last_line = suppressed, "answer to no fetch in flight on this stream dropped")
                    }
                }
            }
        }
    }
    /// An answer the budget of answer bytes could not take: its fetch fails with a message
    /// saying why (callers see it), nothing is stored, and the stream stays open.
    fn refuse(&self, inbound: &Inbound, job: &JobName, worker: WorkerId, refusal: Refusal) {
        static REFUSED: RateLimit = RateLimit::new(Duration::from_secs(10));
        let why = format!(
            "the daemon refused this worker's answer of {} bytes: answers being received from workers already hold its budget of {} bytes (max_answer_bytes)",
            refusal.len, refusal.budget
        );
        if let Some(suppressed) = REFUSED.allow() {
            tracing::warn!(%job, %worker, bytes = refusal.len, budget = refusal.budget, request_id = %clip(refusal.request_id.as_deref().unwrap_or("")), more_since_last_line = suppressed, "answer refused: the budget of answer bytes is spent");
        }
        // Told before the fetch fails, so that the notice is on its way by the time the
        // callers hear of the failure.
        let request_id = refusal.request_id.unwrap_or_default();
        self.tell_refused(inbound, job, &request_id, &why);
        if let Some(id) = RequestId::parse(&request_id) {
            self.engine.workers().answer(job, worker, id, Err(why));
        }
    }

    /// Tells the worker that its answer to `request_id` was refused: its fetch failed with
    /// UNAVAILABLE and `why` (the status its callers get). Never waits: the notice goes to
    /// a channel of [`NOTICES`] that the response stream reads as HTTP/2 lets it send, so
    /// the stream's reading is never held up and a worker that reads nothing pins at most
    /// that many notices; past them the notice is dropped, counted
    /// (`cachebackd_answer_refusal_notices_dropped_total`) and logged (rate-limited). The
    /// fetch fails either way.
    fn tell_refused(&self, inbound: &Inbound, job: &JobName, request_id: &str, why: &str) {
        static DROPPED: RateLimit = RateLimit::new(Duration::from_secs(10));
        // The daemon's ids are UUIDs: a longer "id" is the worker's junk, not echoed (a
        // notice must not pin what a worker chose to send).
        let request_id = if RequestId::parse(request_id).is_some() {
            request_id
        } else {
            ""
        };
        let notice = pb::DaemonMessage {
            kind: Some(daemon_message::Kind::Refused(pb::AnswerRefused {
                request_id: request_id.to_owned(),
                code: Code::Unavailable as i32,
                reason: convert::clip_message(why.to_owned()),
            })),
        };
        match self.notices.try_send(notice) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                inbound.notices_dropped().inc();
                if let Some(suppressed) = DROPPED.allow() {
                    tracing::warn!(%job, request_id = %clip(request_id), more_since_last_line = suppressed, "notice of a refused answer dropped: the worker's stream holds {NOTICES} unsent");
                }
            }
        }
    }
}
