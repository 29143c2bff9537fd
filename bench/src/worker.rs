//! The benchmark's worker: registers a job on a `RegisterJob` stream and answers every
//! FetchRequest with a fixed payload, at once or after a delay. The same code answers the
//! daemon and the baseline's ping-pong stream, so both carry the same messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cachebackd_proto::v1::{
    self as pb, cacheback_client::CachebackClient, daemon_message, fetch_result, worker_message,
};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What the workers of one scenario have done, shared by all of them.
#[derive(Default)]
pub struct Tally {
    /// FetchRequests received.
    pub fetches: AtomicU64,
    /// FetchResults sent.
    pub answered: AtomicU64,
    /// FetchBatch messages received.
    pub batches: AtomicU64,
    /// Woken at every answer.
    pub progress: Notify,
    /// Given one permit per answer, if set (bounds how far a driver runs ahead).
    pub permits: Option<Arc<Semaphore>>,
    /// Stop answering after this many answers in all (0: no limit).
    pub stop_after: u64,
}

impl Tally {
    /// A tally with no limit.
    pub fn new() -> Arc<Tally> {
        Arc::new(Tally::default())
    }

    /// Waits until `n` answers have been sent or `within` has passed; whether they were.
    pub async fn wait_answered(&self, n: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.progress.notified();
            if self.answered.load(Ordering::Acquire) >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.answered.load(Ordering::Acquire) >= n;
            }
        }
    }
}

/// How a worker registers and answers.
#[derive(Clone)]
pub struct Spec {
    /// The job it serves.
    pub job: String,
    /// The job's config it registers.
    pub config: pb::JobConfig,
    /// Fetches it takes at once.
    pub max_in_flight: u32,
    /// How long each fetch takes.
    pub delay: Duration,
    /// The data it answers with.
    pub data: Arc<Vec<u8>>,
    /// If set, nothing is answered until it turns true (the fetches sent meanwhile wait).
    pub gate: Option<watch::Receiver<bool>>,
    /// `Register.max_batch`: above 1 the daemon may send FetchBatch messages, each answered
    /// as one origin call (one `delay`) of all its fetches.
    pub max_batch: u32,
}

/// A running worker; its stream ends when it is dropped or stopped.
pub struct Worker {
    task: JoinHandle<()>,
}

impl Worker {
    /// Opens the stream, registers, waits for `Registered`, and starts answering.
    pub async fn start(channel: Channel, spec: Spec, tally: Arc<Tally>) -> Result<Worker, String> {
        let window = spec.max_in_flight as usize;
        let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(window.max(16) + 2);
        tx.send(pb::WorkerMessage {
            kind: Some(worker_message::Kind::Register(pb::Register {
                job: spec.job.clone(),
                config: Some(spec.config),
                max_in_flight: spec.max_in_flight,
                worker_name: "cachebackd-bench".into(),
                max_batch: spec.max_batch,
            })),
        })
        .await
        .map_err(|_| "worker channel closed".to_string())?;
        let mut client = CachebackClient::new(channel);
        let mut inbound = client
            .register_job(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("RegisterJob {}: {s}", spec.job))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::DaemonMessage {
                kind: Some(daemon_message::Kind::Registered(_)),
            })) => {}
            other => {
                return Err(format!(
                    "RegisterJob {}: no Registered: {other:?}",
                    spec.job
                ))
            }
        }
        let task = tokio::spawn(async move {
            if let Some(mut gate) = spec.gate.clone() {
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
            }
            while let Ok(Some(message)) = inbound.message().await {
                let fetches = match message.kind {
                    Some(daemon_message::Kind::Fetch(fetch)) => vec![fetch],
                    Some(daemon_message::Kind::Batch(batch)) => {
                        tally.batches.fetch_add(1, Ordering::Relaxed);
                        batch.fetches
                    }
                    _ => continue,
                };
                tally
                    .fetches
                    .fetch_add(fetches.len() as u64, Ordering::Relaxed);
                let answers: Vec<_> = fetches
                    .into_iter()
                    .map(|fetch| pb::WorkerMessage {
                        kind: Some(worker_message::Kind::Result(pb::FetchResult {
                            request_id: fetch.request_id,
                            outcome: Some(fetch_result::Outcome::Value(pb::FetchedValue {
                                data: spec.data.to_vec(),
                                lifetime: None,
                                ..Default::default()
                            })),
                        })),
                    })
                    .collect();
                if spec.delay.is_zero() {
                    for answer in answers {
                        if !send_answer(&tx, answer, &tally).await {
                            return;
                        }
                    }
                } else {
                    let (tx, tally, delay) = (tx.clone(), tally.clone(), spec.delay);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        for answer in answers {
                            send_answer(&tx, answer, &tally).await;
                        }
                    });
                }
            }
        });
        Ok(Worker { task })
    }

    /// Ends the stream.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends one answer; false when the worker should stop (its limit reached, or the stream gone).
async fn send_answer(
    tx: &mpsc::Sender<pb::WorkerMessage>,
    answer: pb::WorkerMessage,
    tally: &Tally,
) -> bool {
    if tally.stop_after > 0 && tally.answered.load(Ordering::Acquire) >= tally.stop_after {
        return false;
    }
    if tx.send(answer).await.is_err() {
        return false;
    }
    tally.answered.fetch_add(1, Ordering::AcqRel);
    if let Some(permits) = &tally.permits {
        permits.add_permits(1);
    }
    tally.progress.notify_waiters();
    true
}
