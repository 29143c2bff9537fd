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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::Error;
use crate::model::{FetchReason, JobName, Tag};
use prometheus_client::metrics::histogram::Histogram;

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
    /// The stored item's validator, for a conditional refresh; empty if none.
    pub validator: Arc<[u8]>,
}

/// What the daemon sends down a worker's stream.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A fetch to run.
    Fetch(FetchOrder),
    /// Several fetches in one message (the worker's `max_batch` > 1), each answered alone.
    Batch(Vec<FetchOrder>),
    /// End the stream with this error.
    Close(Error),
}

/// A worker's successful answer, checked at the edge (validator and tags within limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// The data, with what is stored alongside it.
    Value {
        /// The data.
        data: Vec<u8>,
        /// A per-item lifetime replacing the job's, if the worker gave one.
        lifetime: Option<Duration>,
        /// Sent back with the next refresh of the item.
        validator: Vec<u8>,
        /// The item's tags.
        tags: Vec<Tag>,
    },
    /// The origin has no such data: stored as an absence (negative caching).
    Absent {
        /// Replaces the job's `absent_lifetime`, if the worker gave one.
        lifetime: Option<Duration>,
        /// The item's tags.
        tags: Vec<Tag>,
    },
    /// The stored data is still current: extend it.
    NotModified {
        /// Replaces the job's lifetime, if the worker gave one.
        lifetime: Option<Duration>,
    },
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
    /// Most fetches queued across every job: one job's queue is bounded, but 10,000 jobs
    /// of full queues would not be.
    global_capacity: usize,
    /// Fetches queued now across every job (changed only under `jobs`' lock).
    queued: AtomicUsize,
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
    /// Most fetches per message (1: one FetchRequest each).
    max_batch: usize,
    tx: mpsc::Sender<Outbound>,
    in_flight: HashMap<RequestId, Pending>,
    /// When it last answered anything (or registered).
    last_answer: Instant,
    /// Where the size of every message of fetches sent to it is recorded.
    batch_sizes: Histogram,
}

impl Slot {
    /// Holds fetches and has answered nothing for longer than any of them may take: it
    /// gets work only when no other worker can take it.
    fn suspect(&self, now: Instant) -> bool {
        self.in_flight
            .values()
            .next()
            .is_some_and(|p| now >= p.deadline && self.last_answer < p.deadline)
    }
}

/// How a worker takes its fetches.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    /// Most unanswered fetches at once.
    pub max_in_flight: usize,
    /// Most fetches per message.
    pub max_batch: usize,
    /// Records the size of every message of fetches.
    pub batch_sizes: Histogram,
}

/// A fetch waiting for its answer, in the queue or on a worker.
struct Pending {
    args: Arc<[u8]>,
    validator: Arc<[u8]>,
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
    /// An empty registry whose per-job queues hold at most `queue_capacity` fetches, and at
    /// most `global_capacity` across all jobs.
    pub(crate) fn new(queue_capacity: usize, global_capacity: usize) -> Workers {
        Workers {
            shared: Arc::new(Shared {
                jobs: Mutex::new(HashMap::new()),
                queue_capacity,
                global_capacity,
                queued: AtomicUsize::new(0),
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
            || self.shared.queued.load(Ordering::Relaxed) >= self.shared.global_capacity
    }

    /// Adds a worker for `job` that takes fetches as `capacity` says; queued fetches go to
    /// it at once. `tx` is its stream.
    pub(crate) fn register(
        &self,
        job: &JobName,
        id: WorkerId,
        capacity: Capacity,
        tx: mpsc::Sender<Outbound>,
    ) {
        let mut jobs = self.shared.jobs.lock();
        let entry = jobs.entry(job.clone()).or_default();
        entry.workers.push(Slot {
            id,
            max_in_flight: capacity.max_in_flight.max(1),
            max_batch: capacity.max_batch.max(1),
            tx,
            in_flight: HashMap::new(),
            last_answer: Instant::now(),
            batch_sizes: capacity.batch_sizes,
        });
        entry.drain_queue(&self.shared.queued);
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
                self.shared.queued.fetch_add(1, Ordering::Relaxed);
            }
        }
        if moved > 0 {
            self.shared
                .stats
                .failovers
                .fetch_add(moved, Ordering::Relaxed);
            tracing::info!(%job, worker = %id, fetches = moved, "worker went away; its fetches go to another worker");
        }
        entry.drain_queue(&self.shared.queued);
        if entry.workers.is_empty() && entry.queue.is_empty() {
            jobs.remove(job);
        }
    }

    /// Runs one fetch of `args` for `job` on a worker: waits (queued) for a free worker,
    /// then for its answer, until `deadline`. `validator` goes with it (conditional refresh).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fetch(
        &self,
        job: &JobName,
        args: Arc<[u8]>,
        validator: Arc<[u8]>,
        reason: FetchReason,
        deadline: Instant,
        deadline_wall: SystemTime,
        refresh_timeout: Duration,
    ) -> Result<Fetched, Error> {
        let (reply, rx) = oneshot::channel();
        let dispatched = Arc::new(AtomicBool::new(false));
        {
            let mut jobs = self.shared.jobs.lock();
            if self.shared.queued.load(Ordering::Relaxed) >= self.shared.global_capacity {
                // Fetches that ran out of time stay queued until a worker drains them (a
                // job may have none): make room from those before refusing.
                for entry in jobs.values_mut() {
                    entry.prune(&self.shared.queued);
                }
            }
            let entry = jobs.entry(job.clone()).or_default();
            if entry.queue.len() >= self.shared.queue_capacity {
                entry.prune(&self.shared.queued);
            }
            if entry.queue.len() >= self.shared.queue_capacity {
                return Err(Error::QueueFull {
                    job: job.to_string(),
                    capacity: self.shared.queue_capacity,
                });
            }
            if self.shared.queued.load(Ordering::Relaxed) >= self.shared.global_capacity {
                return Err(Error::QueuesFull {
                    capacity: self.shared.global_capacity,
                });
            }
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
            entry.queue.push_back(Pending {
                args,
                validator,
                reason,
                deadline,
                deadline_wall,
                dispatched: dispatched.clone(),
                reply,
            });
            entry.drain_queue(&self.shared.queued);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(fetched))) => Ok(fetched),
            Ok(Ok(Err(message))) => Err(Error::FetchFailed(message)),
            // The reply is dropped only when the fetch ran out of time in the queue (it
            // is dropped there as abandoned, a moment before the timer below fires) or on
            // a stream that went away: a timeout either way, never a shutdown.
            Ok(Err(_)) | Err(_) => {
                let timeout = humantime::format_duration(refresh_timeout);
                Err(Error::FetchFailed(if dispatched.load(Ordering::Relaxed) {
                    format!("no worker of job {job:?} answered within refresh_timeout ({timeout})")
                } else {
                    format!("no worker of job {job:?} was free within refresh_timeout ({timeout})")
                }))
            }
        }
    }

    /// Whether the worker is stuck: every one of its slots is held by a fetch past its
    /// deadline, and it has answered nothing, not even late, for a further
    /// `refresh_timeout` since the last of them ran out. Then its stream is to be ended
    /// (its runtime reconnects with a fresh window). How many fetches it holds, if so.
    pub(crate) fn stuck(
        &self,
        job: &JobName,
        worker: WorkerId,
        refresh_timeout: Duration,
    ) -> Option<usize> {
        let jobs = self.shared.jobs.lock();
        let slot = jobs.get(job)?.workers.iter().find(|w| w.id == worker)?;
        if slot.max_in_flight == 0 || slot.in_flight.len() < slot.max_in_flight {
            return None;
        }
        let now = Instant::now();
        let last_lost = slot.in_flight.values().map(|p| p.deadline).max()?;
        let quiet_since = last_lost.max(slot.last_answer);
        (now >= last_lost && now >= quiet_since + refresh_timeout).then_some(slot.in_flight.len())
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
        if let Some(slot) = jobs
            .get_mut(job)
            .and_then(|e| e.workers.iter_mut().find(|w| w.id == worker))
        {
            slot.last_answer = Instant::now();
        }
        let pending = (|| {
            let entry = jobs.get_mut(job)?;
            let queued = entry.queue.len();
            let slot = entry.workers.iter_mut().find(|w| w.id == worker)?;
            let pending = slot.in_flight.remove(&request_id)?;
            // A batching worker answers a batch as a burst: its freed slots are refilled
            // once a batch's worth is free (or it has nothing left), so that the backlog
            // keeps going out in batches rather than one by one. New fetches are sent at
            // once regardless (`fetch` drains).
            let free = slot.max_in_flight.saturating_sub(slot.in_flight.len());
            if slot.max_batch <= 1
                || slot.in_flight.is_empty()
                || free >= slot.max_batch.min(queued)
            {
                entry.drain_queue(&self.shared.queued);
            }
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
    /// Drops the queued fetches nobody waits for any more.
    fn prune(&mut self, queued: &AtomicUsize) {
        let before = self.queue.len();
        self.queue.retain(|p| !p.abandoned());
        queued.fetch_sub(before - self.queue.len(), Ordering::Relaxed);
    }

    /// Hands queued fetches to the least loaded workers with free capacity, in order. The
    /// fetches one worker gets in one pass go to it in messages of up to its `max_batch`:
    /// what is ready is batched, nothing waits for a batch to fill. `queued` counts the
    /// fetches queued across all jobs.
    fn drain_queue(&mut self, queued: &AtomicUsize) {
        let mut orders: Vec<Vec<FetchOrder>> = vec![Vec::new(); self.workers.len()];
        while let Some(pending) = self.queue.pop_front() {
            queued.fetch_sub(1, Ordering::Relaxed);
            if pending.abandoned() {
                continue;
            }
            let now = Instant::now();
            let Some((index, slot)) = self
                .workers
                .iter_mut()
                .enumerate()
                .filter(|(_, w)| w.in_flight.len() < w.max_in_flight && !w.tx.is_closed())
                .min_by_key(|(_, w)| (w.suspect(now), w.in_flight.len()))
            else {
                self.queue.push_front(pending);
                queued.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let request_id = RequestId::new();
            orders[index].push(FetchOrder {
                request_id,
                args: pending.args.clone(),
                reason: pending.reason,
                deadline: pending.deadline_wall,
                validator: pending.validator.clone(),
            });
            slot.in_flight.insert(request_id, pending);
        }
        for (slot, orders) in self.workers.iter_mut().zip(orders) {
            let mut orders = orders.into_iter().peekable();
            while orders.peek().is_some() {
                let chunk: Vec<FetchOrder> = orders.by_ref().take(slot.max_batch).collect();
                slot.batch_sizes.observe(chunk.len() as f64);
                let ids: Vec<RequestId> = chunk.iter().map(|o| o.request_id).collect();
                // A lone fetch goes as a plain FetchRequest, so the worker answers it as
                // one (with its validator).
                let message = if chunk.len() > 1 {
                    Outbound::Batch(chunk)
                } else {
                    Outbound::Fetch(chunk.into_iter().next().expect("a chunk is never empty"))
                };
                // The channel holds at most `max_in_flight` messages, at most one per
                // slot, so it is only ever full or closed when the stream is going away:
                // the fetches then wait for the next worker.
                match slot.tx.try_send(message) {
                    Ok(()) => {
                        for id in &ids {
                            if let Some(p) = slot.in_flight.get(id) {
                                p.dispatched.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        let rest: Vec<RequestId> = ids
                            .into_iter()
                            .chain(orders.by_ref().map(|o| o.request_id))
                            .collect();
                        for id in rest.iter().rev() {
                            if let Some(pending) = slot.in_flight.remove(id) {
                                self.queue.push_front(pending);
                                queued.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Mark the slot unusable until its stream task unregisters it.
                        slot.max_in_flight = 0;
                    }
                }
            }
        }
    }
}
