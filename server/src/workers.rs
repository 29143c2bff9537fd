//! Registered workers per job: dispatch, the bounded wait queue, in-flight accounting and
//! failover. Knows nothing of gRPC: a worker is a channel of [`Outbound`] messages that the
//! service turns into its stream.
//!
//! Rules kept here (PROTOCOL.md): never more than `max_in_flight` unanswered fetches per
//! worker; the least loaded worker with free capacity gets the next fetch; a fetch with no
//! free worker waits in a bounded per-job queue; a fetch that outlives its deadline keeps
//! its worker's slot until that worker answers or goes away; when a worker goes away its
//! live fetches go to another worker at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::Error;
use crate::model::{FetchReason, JobName};

/// A worker's identity on its stream (sent to it in `Registered.worker_id`).
pub(crate) type WorkerId = Uuid;
/// A fetch's identity (sent in `FetchRequest.request_id`), parsed once, at the edge: an
/// answer whose id is not one is never looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RequestId(Uuid);

impl RequestId {
    /// A new, random id.
    fn new() -> RequestId {
        RequestId(Uuid::new_v4())
    }

    /// The id a worker sent back, or `None` if it is not one of ours.
    pub(crate) fn parse(text: &str) -> Option<RequestId> {
        Uuid::parse_str(text).ok().map(RequestId)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A fetch handed to a worker.
#[derive(Debug, Clone)]
pub(crate) struct FetchOrder {
    /// Matches the worker's answer to this fetch.
    pub request_id: RequestId,
    /// The item's args.
    pub args: Arc<[u8]>,
    /// Why it is fetched.
    pub reason: FetchReason,
    /// When the daemon stops waiting for the answer.
    pub deadline: SystemTime,
}

/// What the daemon sends down a worker's stream.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A fetch to run.
    Fetch(FetchOrder),
    /// End the stream with this error.
    Close(Error),
}

/// A worker's successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// The data.
    pub data: Vec<u8>,
    /// A per-item lifetime replacing the job's, if the worker gave one.
    pub lifetime: Option<Duration>,
}

/// A worker's answer: data, or its error message.
pub(crate) type Outcome = Result<Fetched, String>;

/// What became of a worker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// It answered a waiting fetch.
    Delivered,
    /// Its fetch had outlived its deadline: dropped, the slot freed.
    Late,
    /// No such fetch is in flight on that stream: dropped.
    Unknown,
}

/// Counters kept by the registry.
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    /// Answers whose request id was not in flight on their stream.
    pub unknown_answers: AtomicU64,
    /// Answers that came after their fetch's deadline.
    pub late_answers: AtomicU64,
    /// Fetches moved to another worker because theirs went away.
    pub failovers: AtomicU64,
}

/// The registry: a cheap-to-clone handle.
#[derive(Clone)]
pub(crate) struct Workers {
    shared: Arc<Shared>,
}

struct Shared {
    // A blocking mutex (parking_lot: no poisoning): no `.await` happens while it is held
    // (sends are `try_send`). Last in the lock order (engine shard, then engine jobs, then
    // this; see `engine`): nothing here calls back into the engine while holding it.
    jobs: Mutex<HashMap<JobName, JobWorkers>>,
    queue_capacity: usize,
    stats: WorkerStats,
}

#[derive(Default)]
struct JobWorkers {
    workers: Vec<Slot>,
    queue: VecDeque<Pending>,
}

struct Slot {
    id: WorkerId,
    max_in_flight: usize,
    tx: mpsc::Sender<Outbound>,
    in_flight: HashMap<RequestId, Pending>,
}

/// A fetch waiting for its answer, in the queue or on a worker.
struct Pending {
    args: Arc<[u8]>,
    reason: FetchReason,
    deadline: Instant,
    deadline_wall: SystemTime,
    dispatched: Arc<AtomicBool>,
    reply: oneshot::Sender<Outcome>,
}

impl Pending {
    /// Nobody waits for it any more (its deadline passed and the caller gave up).
    fn abandoned(&self) -> bool {
        self.reply.is_closed() || Instant::now() >= self.deadline
    }
}

impl Workers {
    /// An empty registry whose per-job queues hold at most `queue_capacity` fetches.
    pub(crate) fn new(queue_capacity: usize) -> Workers {
        Workers {
            shared: Arc::new(Shared {
                jobs: Mutex::new(HashMap::new()),
                queue_capacity,
                stats: WorkerStats::default(),
            }),
        }
    }

    /// The registry's counters.
    pub(crate) fn stats(&self) -> &WorkerStats {
        &self.shared.stats
    }

    /// How many workers serve `job` now.
    pub(crate) fn count(&self, job: &JobName) -> usize {
        let jobs = self.shared.jobs.lock();
        jobs.get(job).map_or(0, |j| j.workers.len())
    }

    /// Whether `job`'s queue of fetches waiting for a worker is full: a fetch started now
    /// would be refused.
    pub(crate) fn queue_full(&self, job: &JobName) -> bool {
        let jobs = self.shared.jobs.lock();
        jobs.get(job)
            .is_some_and(|j| j.queue.len() >= self.shared.queue_capacity)
    }

    /// Adds a worker for `job` that takes at most `max_in_flight` fetches at once; queued
    /// fetches go to it at once. `tx` is its stream.
    pub(crate) fn register(
        &self,
        job: &JobName,
        id: WorkerId,
        max_in_flight: usize,
        tx: mpsc::Sender<Outbound>,
    ) {
        let mut jobs = self.shared.jobs.lock();
        let entry = jobs.entry(job.clone()).or_default();
        entry.workers.push(Slot {
            id,
            max_in_flight: max_in_flight.max(1),
            tx,
            in_flight: HashMap::new(),
        });
        entry.drain_queue();
    }

    /// Removes a worker whose stream ended; its live fetches go to the other workers of the
    /// job at once (or back to the head of the queue).
    pub(crate) fn unregister(&self, job: &JobName, id: WorkerId) {
        let mut jobs = self.shared.jobs.lock();
        let Some(entry) = jobs.get_mut(job) else {
            return;
        };
        let Some(pos) = entry.workers.iter().position(|w| w.id == id) else {
            return;
        };
        let slot = entry.workers.swap_remove(pos);
        let mut moved = 0;
        for (_, pending) in slot.in_flight {
            if !pending.abandoned() {
                moved += 1;
                entry.queue.push_front(pending);
            }
        }
        if moved > 0 {
            self.shared
                .stats
                .failovers
                .fetch_add(moved, Ordering::Relaxed);
            tracing::info!(%job, worker = %id, fetches = moved, "worker went away; its fetches go to another worker");
        }
        entry.drain_queue();
        if entry.workers.is_empty() && entry.queue.is_empty() {
            jobs.remove(job);
        }
    }

    /// Runs one fetch of `args` for `job` on a worker: waits (queued) for a free worker,
    /// then for its answer, until `deadline`.
    pub(crate) async fn fetch(
        &self,
        job: &JobName,
        args: Arc<[u8]>,
        reason: FetchReason,
        deadline: Instant,
        deadline_wall: SystemTime,
        refresh_timeout: Duration,
    ) -> Result<Fetched, Error> {
        let (reply, rx) = oneshot::channel();
        let dispatched = Arc::new(AtomicBool::new(false));
        {
            let mut jobs = self.shared.jobs.lock();
            let entry = jobs.entry(job.clone()).or_default();
            if entry.queue.len() >= self.shared.queue_capacity {
                return Err(Error::QueueFull {
                    job: job.to_string(),
                    capacity: self.shared.queue_capacity,
                });
            }
            entry.queue.push_back(Pending {
                args,
                reason,
                deadline,
                deadline_wall,
                dispatched: dispatched.clone(),
                reply,
            });
            entry.drain_queue();
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(fetched))) => Ok(fetched),
            Ok(Ok(Err(message))) => Err(Error::FetchFailed(message)),
            // The reply was dropped: the daemon is shutting down.
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) if dispatched.load(Ordering::Relaxed) => Err(Error::FetchFailed(format!(
                "no worker of job {job:?} answered within refresh_timeout ({refresh_timeout:?})"
            ))),
            Err(_) => Err(Error::FetchFailed(format!(
                "no worker of job {job:?} was free within refresh_timeout ({refresh_timeout:?})"
            ))),
        }
    }

    /// Counts an answer whose request id is not one the daemon gives out: dropped.
    pub(crate) fn unknown_answer(&self) -> Answered {
        self.shared
            .stats
            .unknown_answers
            .fetch_add(1, Ordering::Relaxed);
        Answered::Unknown
    }

    /// Delivers a worker's answer to the fetch it belongs to and frees its slot.
    pub(crate) fn answer(
        &self,
        job: &JobName,
        worker: WorkerId,
        request_id: RequestId,
        outcome: Outcome,
    ) -> Answered {
        let mut jobs = self.shared.jobs.lock();
        let pending = (|| {
            let entry = jobs.get_mut(job)?;
            let slot = entry.workers.iter_mut().find(|w| w.id == worker)?;
            let pending = slot.in_flight.remove(&request_id)?;
            entry.drain_queue();
            Some(pending)
        })();
        drop(jobs);
        let stats = &self.shared.stats;
        let Some(pending) = pending else {
            stats.unknown_answers.fetch_add(1, Ordering::Relaxed);
            return Answered::Unknown;
        };
        if Instant::now() >= pending.deadline || pending.reply.send(outcome).is_err() {
            stats.late_answers.fetch_add(1, Ordering::Relaxed);
            return Answered::Late;
        }
        Answered::Delivered
    }
}

impl JobWorkers {
    /// Hands queued fetches to the least loaded workers with free capacity, in order.
    fn drain_queue(&mut self) {
        while let Some(pending) = self.queue.pop_front() {
            if pending.abandoned() {
                continue;
            }
            let Some(slot) = self
                .workers
                .iter_mut()
                .filter(|w| w.in_flight.len() < w.max_in_flight && !w.tx.is_closed())
                .min_by_key(|w| w.in_flight.len())
            else {
                self.queue.push_front(pending);
                return;
            };
            let request_id = RequestId::new();
            let order = FetchOrder {
                request_id,
                args: pending.args.clone(),
                reason: pending.reason,
                deadline: pending.deadline_wall,
            };
            // The channel holds at most `max_in_flight` orders, one per slot, so it is only
            // ever full or closed when the stream is going away: the fetch then waits for
            // the next worker.
            match slot.tx.try_send(Outbound::Fetch(order)) {
                Ok(()) => {
                    pending.dispatched.store(true, Ordering::Relaxed);
                    slot.in_flight.insert(request_id, pending);
                }
                Err(_) => {
                    self.queue.push_front(pending);
                    // Mark the slot unusable until its stream task unregisters it.
                    slot.max_in_flight = 0;
                }
            }
        }
    }
}
