//! The worker runtime: cacheback's Celery/RQ workers, inside the app server.
//!
//! One `RegisterJob` stream per served job and daemon: given several daemons (a fleet,
//! each of which dispatches only to the workers registered with it), the worker
//! registers every job with every one of them, each stream reconnecting on its own.
//! Each stream's session registers, then
//! answers the daemon's fetch requests, at most `max_in_flight` at a time, each in its
//! own task so that an error or a panic becomes a `FetchError` and nothing more. A lost
//! stream is reopened with exponential backoff and jitter; a stop finishes the fetches
//! in flight, sends their results, then closes the streams. An answer the daemon refuses
//! (too large for its budget, a field out of bounds) is logged, counted and handed to the
//! app's [`Worker::on_refused`] callback; the stream goes on.

use std::{
    any::Any,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use backon::{BackoffBuilder, ExponentialBuilder};
use cachebackd_proto::v1::{
    self, daemon_message, fetch_result, worker_message, DaemonMessage, FetchRequest, FetchResult,
    WorkerMessage,
};
use tokio::{
    sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::daemons::Daemon;
use crate::{
    decode_args,
    time::{from_proto_timestamp, to_proto_duration},
    BoxError, Client, Error, FetchContext, Fetched, Job, JobConfig, Result,
};

use cachebackd_proto::wire::{DEFAULT_MAX_IN_FLIGHT, RECONNECT_MAX, RECONNECT_MIN};

/// How long a stopping worker waits for the daemon to close a stream after its last
/// result was sent, so that the results leave before the connection does.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves the fetches of any number of jobs from this process (cacheback's Celery or
/// RQ worker; here the daemon is the queue).
///
/// ```no_run
/// # use cacheback::{Client, Job, Worker};
/// # struct UserTweets;
/// # impl Job for UserTweets {
/// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
/// #     const NAME: &'static str = "tweets";
/// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
/// # }
/// # #[cacheback::cacheback]
/// # async fn fetch_tweets(username: &str) -> Result<Vec<String>, std::io::Error> { Ok(vec![]) }
/// # async fn demo() -> Result<(), cacheback::Error> {
/// let client = Client::connect("http://127.0.0.1:7070").await?;
/// Worker::new(client)
///     .serve(UserTweets)
///     .serve(fetch_tweets::JOB)
///     .run_until(async { tokio::signal::ctrl_c().await.ok(); })
///     .await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    client: Client,
    name: String,
    max_in_flight: u32,
    backoff: ExponentialBuilder,
    jobs: Vec<Served>,
    stop: CancellationToken,
    status: watch::Sender<Status>,
    on_refused: Option<OnRefused>,
}

/// The app's callback for refused answers.
type OnRefused = Arc<dyn Fn(&AnswerRefused) + Send + Sync>;

/// The daemon refused one of this worker's answers and said why: its fetch failed (the
/// callers waiting for it got `code` with `reason`) and nothing was stored. The stream
/// stays open. It happens when answers being received at once are past the daemon's
/// `max_answer_bytes`, or when the answer breaks a limit (data over `max_data_bytes`, a
/// validator over 256 bytes, a bad tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRefused {
    /// The job the answer was for.
    pub job: String,
    /// The `FetchRequest` the answer was for; empty if the daemon could not read it.
    pub request_id: String,
    /// The status the fetch failed with for its callers (UNAVAILABLE).
    pub code: tonic::Code,
    /// Why, in the daemon's words (naming the limit).
    pub reason: String,
}

/// The longest refusal reason written to the log, in characters.
const LOGGED_REASON: usize = 512;

#[derive(Clone)]
struct Served {
    job: Arc<dyn ErasedJob>,
    max_in_flight: Option<u32>,
}

/// What the handles watch.
#[derive(Debug, Default)]
struct Status {
    /// Per served job and daemon (job-major): registered on a live stream right now.
    live: Vec<bool>,
    /// `Registered` answers received so far, over all jobs.
    registrations: u64,
    /// Answers the daemon refused so far, over all jobs and daemons.
    refused: u64,
    /// `run` has returned.
    finished: bool,
}

impl Worker {
    /// A worker with no jobs yet, talking to the daemon through `client`; a client of
    /// several daemons has the worker register each job with every one of them.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cacheback::Error> {
    /// let client = cacheback::Client::connect("http://127.0.0.1:7070").await?;
    /// let worker = cacheback::Worker::new(client);
    /// # Ok(()) }
    /// ```
    pub fn new(client: Client) -> Self {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "cacheback".to_owned());
        Worker {
            client,
            name: format!("{exe}-{}", std::process::id()),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            backoff: ExponentialBuilder::new()
                .with_min_delay(RECONNECT_MIN)
                .with_max_delay(RECONNECT_MAX)
                .with_jitter()
                .without_max_times(),
            jobs: Vec::new(),
            stop: CancellationToken::new(),
            status: watch::Sender::new(Status::default()),
            on_refused: None,
        }
    }

    /// Calls `f` with every answer the daemon refuses (see [`AnswerRefused`]), from the
    /// task reading the stream: keep it short. Each refusal is also logged as a WARN line
    /// and counted in [`WorkerHandle::answers_refused`].
    ///
    /// ```no_run
    /// # fn demo(client: cacheback::Client) {
    /// let worker = cacheback::Worker::new(client)
    ///     .on_refused(|r| eprintln!("{}: answer to {} refused: {}", r.job, r.request_id, r.reason));
    /// # }
    /// ```
    pub fn on_refused(mut self, f: impl Fn(&AnswerRefused) + Send + Sync + 'static) -> Self {
        self.on_refused = Some(Arc::new(f));
        self
    }

    /// The name the daemon shows for this worker (default: program name and pid).
    ///
    /// ```no_run
    /// # fn demo(client: cacheback::Client) {
    /// let worker = cacheback::Worker::new(client).name("web-1");
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many fetches of one job run at once, for jobs served with [`serve`](Self::serve)
    /// (default 16, at least 1). The daemon sends no more than that.
    ///
    /// ```no_run
    /// # fn demo(client: cacheback::Client) {
    /// let worker = cacheback::Worker::new(client).max_in_flight(4);
    /// # }
    /// ```
    pub fn max_in_flight(mut self, max_in_flight: u32) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// The delays between reconnection attempts: from `min`, doubling up to `max`, each
    /// with up to as much again of random jitter so that a fleet of workers does not
    /// reconnect in step (defaults 100 ms and 10 s). Reset once a stream registers.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn demo(client: cacheback::Client) {
    /// let worker = cacheback::Worker::new(client)
    ///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// # }
    /// ```
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = self
            .backoff
            .with_min_delay(min)
            .with_max_delay(max.max(min));
        self
    }

    /// Serves `job`: registers it and answers its fetches.
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # fn demo(client: cacheback::Client) {
    /// let worker = cacheback::Worker::new(client).serve(UserTweets);
    /// # }
    /// ```
    pub fn serve<J: Job>(self, job: J) -> Self {
        self.add(Arc::new(job), None)
    }

    /// Serves `job` with its own limit of fetches at once (at least 1).
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # fn demo(client: cacheback::Client) {
    /// // The Twitter API allows two calls at a time.
    /// let worker = cacheback::Worker::new(client).serve_with(UserTweets, 2);
    /// # }
    /// ```
    pub fn serve_with<J: Job>(self, job: J, max_in_flight: u32) -> Self {
        self.add(Arc::new(job), Some(max_in_flight.max(1)))
    }

    fn add(mut self, job: Arc<dyn ErasedJob>, max_in_flight: Option<u32>) -> Self {
        self.jobs.push(Served { job, max_in_flight });
        let daemons = self.client.daemons().len();
        self.status
            .send_modify(|status| status.live.extend(std::iter::repeat_n(false, daemons)));
        self
    }

    /// A handle to stop the worker and to wait until it is registered.
    ///
    /// ```no_run
    /// # async fn demo(worker: cacheback::Worker) -> Result<(), cacheback::Error> {
    /// let handle = worker.handle();
    /// let running = tokio::spawn(worker.run());
    /// handle.ready().await?; // every job registered: fetches will be served
    /// handle.stop();         // finish the fetches in flight, then return
    /// running.await.expect("worker task")?;
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            stop: self.stop.clone(),
            status: self.status.subscribe(),
        }
    }

    /// Serves until [`WorkerHandle::stop`], then finishes the fetches in flight and
    /// returns. Lost streams are reopened; it returns an error only if the daemon
    /// refuses a registration for good (an invalid job name, say).
    ///
    /// ```no_run
    /// # async fn demo(worker: cacheback::Worker) -> Result<(), cacheback::Error> {
    /// tokio::spawn(worker.run());
    /// # Ok(()) }
    /// ```
    pub async fn run(self) -> Result<()> {
        let daemons = self.client.daemons().to_vec();
        let context = Arc::new(Context {
            worker_name: self.name,
            default_max_in_flight: self.max_in_flight,
            backoff: self.backoff,
            stop: self.stop,
            status: self.status,
            on_refused: self.on_refused,
        });
        let mut jobs = JoinSet::new();
        for (j, served) in self.jobs.into_iter().enumerate() {
            for (d, daemon) in daemons.iter().enumerate() {
                let index = j * daemons.len() + d;
                jobs.spawn(serve_job(
                    context.clone(),
                    index,
                    daemon.clone(),
                    served.clone(),
                ));
            }
        }
        let mut result = Ok(());
        while let Some(joined) = jobs.join_next().await {
            let outcome = joined
                .map_err(|e| Error::WorkerTask(e.to_string()))
                .and_then(|outcome| outcome);
            if let Err(e) = outcome {
                if result.is_ok() {
                    warn!(error = %e, "worker stopping: a job cannot be served");
                    context.stop.cancel();
                    result = Err(e);
                }
            }
        }
        context.status.send_modify(|status| status.finished = true);
        result
    }

    /// [`run`](Self::run) until `signal` completes, then stop gracefully.
    ///
    /// ```no_run
    /// # async fn demo(worker: cacheback::Worker) -> Result<(), cacheback::Error> {
    /// worker.run_until(async { tokio::signal::ctrl_c().await.ok(); }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<()> {
        let stop = self.stop.clone();
        let run = self.run();
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => return result,
            () = signal => stop.cancel(),
        }
        run.await
    }
}

/// Stops a [`Worker`] and tells when it is registered; cheap to clone.
///
/// ```no_run
/// # async fn demo(worker: cacheback::Worker) -> Result<(), cacheback::Error> {
/// let handle = worker.handle();
/// tokio::spawn(worker.run());
/// handle.ready().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    stop: CancellationToken,
    status: watch::Receiver<Status>,
}

impl WorkerHandle {
    /// Asks the worker to stop: it takes no new fetches, finishes those in flight and
    /// sends their results, closes its streams, and then `run` returns.
    ///
    /// ```no_run
    /// # fn demo(handle: cacheback::WorkerHandle) {
    /// handle.stop();
    /// # }
    /// ```
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until every served job is registered on a live stream (with several
    /// daemons: with every one of them); fails if the worker stops first.
    ///
    /// ```no_run
    /// # async fn demo(handle: cacheback::WorkerHandle) -> Result<(), cacheback::Error> {
    /// handle.ready().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ready(&self) -> Result<()> {
        let mut status = self.status.clone();
        let status = status
            .wait_for(|s| s.finished || s.live.iter().all(|live| *live))
            .await
            .map_err(|_| Error::WorkerStopped)?;
        if status.finished {
            return Err(Error::WorkerStopped);
        }
        Ok(())
    }

    /// How many times the daemon has accepted a registration of this worker's jobs,
    /// over all jobs and reconnections.
    ///
    /// ```no_run
    /// # fn demo(handle: cacheback::WorkerHandle) {
    /// println!("registered {} times", handle.registrations());
    /// # }
    /// ```
    pub fn registrations(&self) -> u64 {
        self.status.borrow().registrations
    }

    /// How many of this worker's answers the daemon has refused (see [`AnswerRefused`]),
    /// over all jobs and daemons.
    ///
    /// ```no_run
    /// # fn demo(handle: cacheback::WorkerHandle) {
    /// println!("{} answers refused", handle.answers_refused());
    /// # }
    /// ```
    pub fn answers_refused(&self) -> u64 {
        self.status.borrow().refused
    }

    /// Waits until [`registrations`](Self::registrations) reaches `count`: after a
    /// daemon restart, `registrations() + jobs` means every job is back.
    ///
    /// ```no_run
    /// # async fn demo(handle: cacheback::WorkerHandle) -> Result<(), cacheback::Error> {
    /// let before = handle.registrations();
    /// // ... the daemon restarts ...
    /// handle.wait_for_registrations(before + 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_registrations(&self, count: u64) -> Result<()> {
        let mut status = self.status.clone();
        let status = status
            .wait_for(|s| s.finished || s.registrations >= count)
            .await
            .map_err(|_| Error::WorkerStopped)?;
        if status.registrations < count {
            return Err(Error::WorkerStopped);
        }
        Ok(())
    }
}

/// What every job's loop shares.
struct Context {
    worker_name: String,
    default_max_in_flight: u32,
    backoff: ExponentialBuilder,
    stop: CancellationToken,
    status: watch::Sender<Status>,
    on_refused: Option<OnRefused>,
}

impl Context {
    /// The daemon refused an answer of `job`'s: logged, counted, handed to the app.
    fn refused(&self, job: &str, refused: v1::AnswerRefused) {
        let refused = AnswerRefused {
            job: job.to_owned(),
            request_id: refused.request_id,
            code: tonic::Code::from_i32(refused.code),
            reason: refused.reason,
        };
        let reason: String = refused.reason.chars().take(LOGGED_REASON).collect();
        warn!(job, request_id = %refused.request_id, code = ?refused.code, %reason, "the daemon refused an answer: its fetch failed");
        self.status.send_modify(|status| status.refused += 1);
        if let Some(f) = &self.on_refused {
            f(&refused);
        }
    }

    fn set_live(&self, index: usize, live: bool) {
        self.status.send_modify(|status| {
            status.live[index] = live;
            if live {
                status.registrations += 1;
            }
        });
    }
}

/// How a session (one stream) ended, when not for good.
enum SessionEnd {
    Stopped,
    Lost { registered: bool, reason: String },
}

/// Keeps one job registered with one daemon until the worker stops: session after
/// session.
async fn serve_job(
    context: Arc<Context>,
    index: usize,
    daemon: Daemon,
    served: Served,
) -> Result<()> {
    let job_name = served.job.name().to_owned();
    let mut backoff = context.backoff.build();
    loop {
        let end = session(&context, index, &daemon, &served).await;
        context
            .status
            .send_modify(|status| status.live[index] = false);
        let reason = match end? {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Lost { registered, reason } => {
                if registered {
                    backoff = context.backoff.build();
                }
                reason
            }
        };
        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
        warn!(job = %job_name, url = %daemon.url, %reason, ?delay, "stream to cachebackd lost; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = context.stop.cancelled() => return Ok(()),
        }
    }
}

/// One `RegisterJob` stream: register, then serve fetches until the stream is lost or
/// the worker stops. `Err` only for a refusal that retrying cannot fix.
async fn session(
    context: &Context,
    index: usize,
    daemon: &Daemon,
    served: &Served,
) -> Result<SessionEnd> {
    let job = &served.job;
    let max_in_flight = served
        .max_in_flight
        .unwrap_or(context.default_max_in_flight);
    let (results, outbound) = mpsc::channel(max_in_flight as usize + 1);
    let register = v1::Register {
        job: job.name().to_owned(),
        config: Some(job.config().to_proto()),
        max_in_flight,
        worker_name: context.worker_name.clone(),
        max_batch: job.max_batch(),
    };
    results
        .try_send(WorkerMessage {
            kind: Some(worker_message::Kind::Register(register)),
        })
        .expect("a new channel has room for the first message");

    let mut raw = daemon.raw.clone();
    let call = raw.register_job(ReceiverStream::new(outbound));
    let response = tokio::select! {
        response = call => response,
        () = context.stop.cancelled() => return Ok(SessionEnd::Stopped),
    };
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(status) => return lost_or_refused(job.name(), status, false),
    };
    let first = tokio::select! {
        first = inbound.message() => first,
        () = context.stop.cancelled() => return Ok(SessionEnd::Stopped),
    };
    match first {
        Ok(Some(DaemonMessage {
            kind: Some(daemon_message::Kind::Registered(registered)),
        })) => {
            let config = registered.config.map(JobConfig::from_proto);
            info!(job = job.name(), url = %daemon.url, worker_id = %registered.worker_id, ?config, "registered");
            context.set_live(index, true);
        }
        Ok(Some(other)) => {
            return Ok(SessionEnd::Lost {
                registered: false,
                reason: format!("the daemon's first message was not Registered: {other:?}"),
            })
        }
        Ok(None) => {
            return Ok(SessionEnd::Lost {
                registered: false,
                reason: "the daemon closed the stream before Registered".to_owned(),
            })
        }
        Err(status) => return lost_or_refused(job.name(), status, false),
    }

    let limit = Arc::new(Semaphore::new(max_in_flight as usize));
    let mut fetches = JoinSet::new();
    let lost = loop {
        tokio::select! {
            biased;
            () = context.stop.cancelled() => break None,
            Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
            message = inbound.message() => match message {
                Ok(Some(DaemonMessage { kind: Some(daemon_message::Kind::Fetch(request)) })) => {
                    let permit = tokio::select! {
                        permit = limit.clone().acquire_owned() => {
                            permit.expect("the semaphore is never closed")
                        }
                        () = context.stop.cancelled() => break None,
                    };
                    fetches.spawn(answer(job.clone(), request, results.clone(), permit));
                }
                Ok(Some(DaemonMessage { kind: Some(daemon_message::Kind::Batch(mut batch)) }))
                    if batch.fetches.len() == 1 =>
                {
                    let request = batch.fetches.remove(0);
                    let permit = tokio::select! {
                        permit = limit.clone().acquire_owned() => {
                            permit.expect("the semaphore is never closed")
                        }
                        () = context.stop.cancelled() => break None,
                    };
                    fetches.spawn(answer(job.clone(), request, results.clone(), permit));
                }
                Ok(Some(DaemonMessage { kind: Some(daemon_message::Kind::Batch(batch)) })) => {
                    // The daemon counts every fetch of a batch against max_in_flight.
                    let n = (batch.fetches.len() as u32).clamp(1, max_in_flight);
                    let permits = tokio::select! {
                        permits = limit.clone().acquire_many_owned(n) => {
                            permits.expect("the semaphore is never closed")
                        }
                        () = context.stop.cancelled() => break None,
                    };
                    fetches.spawn(answer_batch(job.clone(), batch.fetches, results.clone(), permits));
                }
                Ok(Some(DaemonMessage { kind: Some(daemon_message::Kind::Refused(refused)) })) => {
                    context.refused(job.name(), refused);
                }
                // A kind this worker does not know (a newer daemon's): nothing to do.
                Ok(Some(DaemonMessage { kind: None })) => {
                    debug!(job = job.name(), "a message of a kind this worker does not know ignored");
                }
                Ok(Some(other)) => warn!(job = job.name(), ?other, "unexpected message ignored"),
                Ok(None) => break Some(SessionEnd::Lost {
                    registered: true,
                    reason: "the daemon closed the stream".to_owned(),
                }),
                Err(status) => break Some(lost_or_refused(job.name(), status, true)?),
            },
        }
    };
    if let Some(lost) = lost {
        // Dropping `fetches` aborts the fetches in flight: the daemon has already handed
        // them to another worker, or queued them for this one's next stream.
        return Ok(lost);
    }

    // Stopping: no new fetches; finish those in flight, send their results, then end
    // the stream (the daemon hands anything still unanswered to another worker).
    while fetches.join_next().await.is_some() {}
    drop(results);
    let drained = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(Some(_)) = inbound.message().await {}
    });
    if drained.await.is_err() {
        debug!(
            job = job.name(),
            "the daemon kept the stream open after the worker closed it"
        );
    }
    Ok(SessionEnd::Stopped)
}

/// A status that retrying will not change is a refusal; anything else (the daemon
/// restarting, a dropped connection) is a lost stream.
fn lost_or_refused(job: &str, status: tonic::Status, registered: bool) -> Result<SessionEnd> {
    match status.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unimplemented => Err(Error::status_of("RegisterJob", job, status)),
        _ => Ok(SessionEnd::Lost {
            registered,
            reason: format!("{:?}: {}", status.code(), status.message()),
        }),
    }
}

/// Runs one fetch and sends its result. The fetch runs in its own task so that a panic
/// is caught, and is abandoned (aborted) at its deadline, when the daemon has stopped
/// waiting for it: the answer frees the worker's slot.
async fn answer(
    job: Arc<dyn ErasedJob>,
    request: FetchRequest,
    results: mpsc::Sender<WorkerMessage>,
    _permit: OwnedSemaphorePermit,
) {
    let span = info_span!(
        "fetch",
        job = job.name(),
        request_id = %request.request_id,
        reason = request.reason().as_str_name(),
    );
    async move {
        let started = Instant::now();
        let (context, left) = (FetchContext::from_request(&request), time_left(&request));
        let fetch = job.fetch(request.args, context).in_current_span();
        let outcome = match guarded(fetch, left).await {
            Ok(Ok(outcome)) => {
                debug!(elapsed = ?started.elapsed(), "fetched");
                outcome
            }
            Ok(Err(message)) | Err(message) => failed(message, started),
        };
        send_result(&results, request.request_id, outcome).await;
    }
    .instrument(span)
    .await
}

/// Runs one batch of fetches with one [`Job::fetch_many`] and sends each its result, as
/// [`answer`] does for one (a panic or the earliest deadline fails them all).
async fn answer_batch(
    job: Arc<dyn ErasedJob>,
    requests: Vec<FetchRequest>,
    results: mpsc::Sender<WorkerMessage>,
    _permits: OwnedSemaphorePermit,
) {
    let span = info_span!("fetch_many", job = job.name(), fetches = requests.len());
    async move {
        let started = Instant::now();
        let left = requests.iter().filter_map(time_left).min();
        let args = requests.iter().map(|r| r.args.clone()).collect();
        let fetch = job.fetch_many(args).in_current_span();
        let outcomes = match guarded(fetch, left).await {
            Ok(outcomes) => outcomes,
            Err(message) => vec![Err(message); requests.len()],
        };
        debug!(elapsed = ?started.elapsed(), "fetched a batch");
        for (request, outcome) in requests.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|message| failed(message, started));
            send_result(&results, request.request_id, outcome).await;
        }
    }
    .instrument(span)
    .await
}

/// How long until the daemon stops waiting for `request`.
fn time_left(request: &FetchRequest) -> Option<Duration> {
    request
        .deadline
        .and_then(from_proto_timestamp)
        .map(|deadline| {
            deadline
                .duration_since(SystemTime::now())
                .unwrap_or_default()
        })
}

/// Runs `fetch` in its own task, so that a panic is caught, abandoning it once `left`
/// has passed: `Err` with why.
async fn guarded<T: Send + 'static>(
    fetch: impl Future<Output = T> + Send + 'static,
    left: Option<Duration>,
) -> Result<T, String> {
    let fetch = AbortOnDropHandle::new(tokio::spawn(fetch));
    let joined = match left {
        Some(left) => tokio::time::timeout(left, fetch).await,
        None => Ok(fetch.await),
    };
    match joined {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join_error)) if join_error.is_panic() => Err(panic_message(join_error.into_panic())),
        Ok(Err(_)) => Err("fetch cancelled".to_owned()),
        Err(_) => Err("fetch still running at its deadline: abandoned".to_owned()),
    }
}

async fn send_result(
    results: &mpsc::Sender<WorkerMessage>,
    request_id: String,
    outcome: fetch_result::Outcome,
) {
    let result = WorkerMessage {
        kind: Some(worker_message::Kind::Result(FetchResult {
            request_id,
            outcome: Some(outcome),
        })),
    };
    if results.send(result).await.is_err() {
        debug!("stream closed before the result could be sent");
    }
}

fn failed(message: String, started: Instant) -> fetch_result::Outcome {
    warn!(elapsed = ?started.elapsed(), error = %message, "fetch failed");
    fetch_result::Outcome::Error(v1::FetchError { message })
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    format!("fetch panicked: {text}")
}

/// The message sent for a failed fetch: the error and its sources, `outer: inner`,
/// without repeating a source that the outer message already shows.
fn error_report(error: BoxError) -> String {
    let mut report = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !report.ends_with(&text) {
            report.push_str(": ");
            report.push_str(&text);
        }
        source = cause.source();
    }
    report
}

type Outcome = Result<fetch_result::Outcome, String>;
type FetchFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;
type BatchFuture = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send>>;

/// A `Job` with its types erased, so that one worker serves jobs of different types.
trait ErasedJob: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn config(&self) -> JobConfig;
    fn max_batch(&self) -> u32;
    fn fetch(self: Arc<Self>, args: Vec<u8>, context: FetchContext) -> FetchFuture;
    fn fetch_many(self: Arc<Self>, args: Vec<Vec<u8>>) -> BatchFuture;
}

impl<J: Job> ErasedJob for J {
    fn name(&self) -> &str {
        Job::name(self)
    }

    fn config(&self) -> JobConfig {
        Job::config(self)
    }

    fn max_batch(&self) -> u32 {
        J::MAX_BATCH.max(1)
    }

    fn fetch(self: Arc<Self>, args: Vec<u8>, context: FetchContext) -> FetchFuture {
        Box::pin(async move {
            let args: J::Args = decode(&args)?;
            let (lifetime, tags) = (self.expiry(&args), self.tags(&args));
            let fetched = Job::fetch_with(&*self, args, context)
                .await
                .map_err(|e| error_report(e.into()))?;
            outcome_of(fetched, lifetime, tags)
        })
    }

    fn fetch_many(self: Arc<Self>, args: Vec<Vec<u8>>) -> BatchFuture {
        Box::pin(async move {
            // Args that do not decode fail alone; the rest go to one fetch_many.
            let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(args.len());
            let mut batch = Vec::new();
            let mut extras = Vec::new();
            for raw in &args {
                match decode::<J::Args>(raw) {
                    Ok(args) => {
                        extras.push((self.expiry(&args), self.tags(&args)));
                        batch.push(args);
                        outcomes.push(None);
                    }
                    Err(message) => outcomes.push(Some(Err(message))),
                }
            }
            let asked = batch.len();
            let fetched = Job::fetch_many(&*self, batch).await;
            let mut fetched = if fetched.len() == asked {
                fetched
                    .into_iter()
                    .zip(extras)
                    .map(|(f, (lifetime, tags))| {
                        f.map_err(|e| error_report(e.into()))
                            .and_then(|f| outcome_of(f, lifetime, tags))
                    })
                    .collect::<Vec<_>>()
            } else {
                let message = format!(
                    "fetch_many answered {} results for {asked} args",
                    fetched.len()
                );
                vec![Err(message); asked]
            }
            .into_iter();
            outcomes
                .into_iter()
                .map(|o| match o {
                    Some(failed) => failed,
                    None => fetched.next().expect("one result per decoded args"),
                })
                .collect()
        })
    }
}

fn decode<A: serde::de::DeserializeOwned>(args: &[u8]) -> Result<A, String> {
    decode_args(args).map_err(|e| format!("cannot decode the args: {e}"))
}

/// A job's answer on the wire: the data encoded, the item's lifetime and tags added.
fn outcome_of<T: serde::Serialize>(
    fetched: Fetched<T>,
    lifetime: Option<Duration>,
    job_tags: Vec<String>,
) -> Outcome {
    let tags = |tags: Vec<String>| if tags.is_empty() { job_tags } else { tags };
    Ok(match fetched {
        Fetched::Value {
            data,
            validator,
            tags: own,
        } => fetch_result::Outcome::Value(v1::FetchedValue {
            data: serde_json::to_vec(&data)
                .map_err(|e| format!("cannot encode the fetched data: {e}"))?,
            lifetime: lifetime.map(to_proto_duration),
            validator: validator.unwrap_or_default(),
            tags: tags(own),
        }),
        Fetched::Absent { tags: own } => fetch_result::Outcome::Absent(v1::FetchedAbsent {
            lifetime: None,
            tags: tags(own),
        }),
        Fetched::NotModified => fetch_result::Outcome::NotModified(v1::NotModified {
            lifetime: lifetime.map(to_proto_duration),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the API said no")]
    struct ApiError(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("the API said no: {0}")]
    struct VerboseApiError(#[source] std::io::Error);

    #[test]
    fn an_error_report_shows_each_source_once() {
        let io = || std::io::Error::other("connection reset");
        assert_eq!(
            error_report(Box::new(ApiError(io()))),
            "the API said no: connection reset"
        );
        assert_eq!(
            error_report(Box::new(VerboseApiError(io()))),
            "the API said no: connection reset"
        );
        assert_eq!(error_report("plain".into()), "plain");
    }

    #[test]
    fn a_panic_message_is_kept() {
        assert_eq!(panic_message(Box::new("boom")), "fetch panicked: boom");
        assert_eq!(
            panic_message(Box::new(format!("boom {}", 2))),
            "fetch panicked: boom 2"
        );
        assert_eq!(
            panic_message(Box::new(7)),
            "fetch panicked: a non-string payload"
        );
    }

    struct Twice;

    impl Job for Twice {
        type Args = (String, u32);
        type Output = String;
        type Error = String;
        const NAME: &'static str = "test.twice";

        async fn fetch(&self, (word, n): (String, u32)) -> Result<String, String> {
            if n == 0 {
                return Err(format!("cannot repeat {word:?} zero times"));
            }
            Ok(word.repeat(n as usize))
        }

        fn expiry(&self, (_, n): &(String, u32)) -> Option<Duration> {
            (*n > 2).then_some(Duration::from_secs(7))
        }
    }

    fn value(outcome: Outcome) -> v1::FetchedValue {
        match outcome {
            Ok(fetch_result::Outcome::Value(value)) => value,
            other => panic!("not a value: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_erased_job_decodes_args_fetches_and_encodes_data() {
        let job: Arc<dyn ErasedJob> = Arc::new(Twice);
        let fetch = |args: &[u8]| job.clone().fetch(args.to_vec(), FetchContext::default());
        let v = value(fetch(br#"["ab",2]"#).await);
        assert_eq!(v.data, br#""abab""#);
        assert_eq!(v.lifetime, None);

        let v = value(fetch(br#"["a",3]"#).await);
        assert_eq!(v.data, br#""aaa""#);
        assert_eq!(v.lifetime, Some(to_proto_duration(Duration::from_secs(7))));

        let error = fetch(br#"["a",0]"#).await.unwrap_err();
        assert_eq!(error, r#"cannot repeat "a" zero times"#);

        let error = fetch(br#"["a"]"#).await.unwrap_err();
        assert!(error.starts_with("cannot decode the args: "), "{error}");
    }

    /// Looks users up by id; 0 is nobody; knows version "v1" of everyone; tags by user.
    struct Users;

    impl Job for Users {
        type Args = u64;
        type Output = String;
        type Error = String;
        const NAME: &'static str = "test.users";
        const MAX_BATCH: u32 = 8;

        async fn fetch(&self, id: u64) -> Result<String, String> {
            Ok(format!("user {id}"))
        }

        async fn fetch_with(
            &self,
            id: u64,
            context: FetchContext,
        ) -> Result<Fetched<String>, String> {
            if id == 0 {
                return Ok(Fetched::Absent { tags: vec![] });
            }
            if context.validator.as_deref() == Some(b"v1") {
                return Ok(Fetched::NotModified);
            }
            Ok(Fetched::value(self.fetch(id).await?).with_validator(b"v1".to_vec()))
        }

        fn tags(&self, id: &u64) -> Vec<String> {
            vec![format!("user:{id}")]
        }
    }

    #[tokio::test]
    async fn an_erased_job_answers_absent_not_modified_and_data_with_validator_and_tags() {
        let job: Arc<dyn ErasedJob> = Arc::new(Users);
        assert_eq!(job.max_batch(), 8);
        let v = value(
            job.clone()
                .fetch(b"[7]".to_vec(), FetchContext::default())
                .await,
        );
        assert_eq!(
            (v.data.as_slice(), v.validator.as_slice()),
            (&br#""user 7""#[..], &b"v1"[..])
        );
        assert_eq!(v.tags, vec!["user:7"]);
        let absent = job
            .clone()
            .fetch(b"[0]".to_vec(), FetchContext::default())
            .await;
        assert_eq!(
            absent,
            Ok(fetch_result::Outcome::Absent(v1::FetchedAbsent {
                lifetime: None,
                tags: vec!["user:0".into()],
            }))
        );
        let again = FetchContext {
            validator: Some(b"v1".to_vec()),
            ..Default::default()
        };
        assert!(matches!(
            job.clone().fetch(b"[7]".to_vec(), again).await,
            Ok(fetch_result::Outcome::NotModified(_))
        ));
    }

    #[tokio::test]
    async fn fetch_many_answers_each_args_in_order_and_bad_args_alone() {
        let job: Arc<dyn ErasedJob> = Arc::new(Users);
        let outcomes = job
            .fetch_many(vec![b"[1]".to_vec(), b"oops".to_vec(), b"[0]".to_vec()])
            .await;
        assert_eq!(outcomes.len(), 3);
        assert_eq!(value(outcomes[0].clone()).data, br#""user 1""#);
        assert!(outcomes[1]
            .as_ref()
            .unwrap_err()
            .starts_with("cannot decode the args"));
        assert!(matches!(outcomes[2], Ok(fetch_result::Outcome::Absent(_))));
    }
}
