//! The worker runtime: cacheback's Celery/RQ workers, inside the app server.
//!
//! One `RegisterJob` stream per served job. Each stream's session registers, then
//! answers the daemon's fetch requests, at most `max_in_flight` at a time, each in its
//! own task so that an error or a panic becomes a `FetchError` and nothing more. A lost
//! stream is reopened with exponential backoff and jitter; a stop finishes the fetches
//! in flight, sends their results, then closes the streams.

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

use crate::{
    decode_args,
    time::{from_proto_timestamp, to_proto_duration},
    BoxError, Client, Error, Job, JobConfig, Result,
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
}

struct Served {
    job: Arc<dyn ErasedJob>,
    max_in_flight: Option<u32>,
}

/// What the handles watch.
#[derive(Debug, Default)]
struct Status {
    /// Per served job: registered on a live stream right now.
    live: Vec<bool>,
    /// `Registered` answers received so far, over all jobs.
    registrations: u64,
    /// `run` has returned.
    finished: bool,
}

impl Worker {
    /// A worker with no jobs yet, talking to the daemon through `client`.
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
        }
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
        self.status.send_modify(|status| status.live.push(false));
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
        let context = Arc::new(Context {
            client: self.client,
            worker_name: self.name,
            default_max_in_flight: self.max_in_flight,
            backoff: self.backoff,
            stop: self.stop,
            status: self.status,
        });
        let mut jobs = JoinSet::new();
        for (index, served) in self.jobs.into_iter().enumerate() {
            jobs.spawn(serve_job(context.clone(), index, served));
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

    /// Waits until every served job is registered on a live stream; fails if the worker
    /// stops first.
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
    client: Client,
    worker_name: String,
    default_max_in_flight: u32,
    backoff: ExponentialBuilder,
    stop: CancellationToken,
    status: watch::Sender<Status>,
}

impl Context {
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

/// Keeps one job registered until the worker stops: session after session.
async fn serve_job(context: Arc<Context>, index: usize, served: Served) -> Result<()> {
    let job_name = served.job.name().to_owned();
    let mut backoff = context.backoff.build();
    loop {
        let end = session(&context, index, &served).await;
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
        warn!(job = %job_name, %reason, ?delay, "stream to cachebackd lost; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = context.stop.cancelled() => return Ok(()),
        }
    }
}

/// One `RegisterJob` stream: register, then serve fetches until the stream is lost or
/// the worker stops. `Err` only for a refusal that retrying cannot fix.
async fn session(context: &Context, index: usize, served: &Served) -> Result<SessionEnd> {
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
        ..Default::default()
    };
    results
        .try_send(WorkerMessage {
            kind: Some(worker_message::Kind::Register(register)),
        })
        .expect("a new channel has room for the first message");

    let mut raw = context.client.raw();
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
            info!(job = job.name(), worker_id = %registered.worker_id, ?config, "registered");
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
        let left = request
            .deadline
            .and_then(from_proto_timestamp)
            .map(|deadline| {
                deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
            });
        let fetch = job.fetch(request.args).in_current_span();
        let fetch = AbortOnDropHandle::new(tokio::spawn(fetch));
        let joined = match left {
            Some(left) => tokio::time::timeout(left, fetch).await,
            None => Ok(fetch.await),
        };
        let outcome = match joined {
            Ok(Ok(Ok(value))) => {
                debug!(elapsed = ?started.elapsed(), bytes = value.data.len(), "fetched");
                fetch_result::Outcome::Value(value)
            }
            Ok(Ok(Err(message))) => failed(message, started),
            Ok(Err(join_error)) if join_error.is_panic() => {
                failed(panic_message(join_error.into_panic()), started)
            }
            Ok(Err(_)) => failed("fetch cancelled".to_owned(), started),
            Err(_) => failed(
                "fetch still running at its deadline: abandoned".to_owned(),
                started,
            ),
        };
        let result = WorkerMessage {
            kind: Some(worker_message::Kind::Result(FetchResult {
                request_id: request.request_id,
                outcome: Some(outcome),
            })),
        };
        if results.send(result).await.is_err() {
            debug!("stream closed before the result could be sent");
        }
    }
    .instrument(span)
    .await
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

type FetchFuture = Pin<Box<dyn Future<Output = Result<v1::FetchedValue, String>> + Send>>;

/// A `Job` with its types erased, so that one worker serves jobs of different types.
trait ErasedJob: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn config(&self) -> JobConfig;
    fn fetch(self: Arc<Self>, args: Vec<u8>) -> FetchFuture;
}

impl<J: Job> ErasedJob for J {
    fn name(&self) -> &str {
        Job::name(self)
    }

    fn config(&self) -> JobConfig {
        Job::config(self)
    }

    fn fetch(self: Arc<Self>, args: Vec<u8>) -> FetchFuture {
        Box::pin(async move {
            let args: J::Args =
                decode_args(&args).map_err(|e| format!("cannot decode the args: {e}"))?;
            let lifetime = self.expiry(&args);
            let output = Job::fetch(&*self, args)
                .await
                .map_err(|e| error_report(e.into()))?;
            let data = serde_json::to_vec(&output)
                .map_err(|e| format!("cannot encode the fetched data: {e}"))?;
            Ok(v1::FetchedValue {
                data,
                lifetime: lifetime.map(to_proto_duration),
                ..Default::default()
            })
        })
    }
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

    #[tokio::test]
    async fn an_erased_job_decodes_args_fetches_and_encodes_data() {
        let job: Arc<dyn ErasedJob> = Arc::new(Twice);
        let value = job.clone().fetch(br#"["ab",2]"#.to_vec()).await.unwrap();
        assert_eq!(value.data, br#""abab""#);
        assert_eq!(value.lifetime, None);

        let value = job.clone().fetch(br#"["a",3]"#.to_vec()).await.unwrap();
        assert_eq!(value.data, br#""aaa""#);
        assert_eq!(
            value.lifetime,
            Some(to_proto_duration(Duration::from_secs(7)))
        );

        let error = job.clone().fetch(br#"["a",0]"#.to_vec()).await.unwrap_err();
        assert_eq!(error, r#"cannot repeat "a" zero times"#);

        let error = job.fetch(br#"["a"]"#.to_vec()).await.unwrap_err();
        assert!(error.starts_with("cannot decode the args: "), "{error}");
    }
}
