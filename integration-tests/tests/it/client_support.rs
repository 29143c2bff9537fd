//! What the Rust client's tests share: a running `cacheback::Worker`, and a `Probe` that
//! lets a test count, hold and release the fetches of the jobs it serves.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use cacheback::{Client, Job, Worker, WorkerHandle};
use tokio::{
    sync::{watch, Semaphore},
    task::JoinHandle,
};

use crate::harness::{within, Daemon};

/// A `cacheback::Client` connected to the daemon.
pub async fn connect(daemon: &Daemon) -> Client {
    Client::connect(&daemon.endpoint())
        .await
        .expect("connect the cacheback client")
}

/// A `cacheback::Worker` running in the background.
pub struct Running {
    pub handle: WorkerHandle,
    task: JoinHandle<Result<(), cacheback::Error>>,
}

impl Running {
    /// Stops the worker gracefully; what `run` returned.
    pub async fn stop(self) -> Result<(), cacheback::Error> {
        self.handle.stop();
        self.finished().await
    }

    /// What `run` returned, once it returns by itself.
    pub async fn finished(self) -> Result<(), cacheback::Error> {
        within("Worker::run to return", self.task)
            .await
            .expect("worker task")
    }
}

/// Runs `worker` and waits until every job it serves is registered.
pub async fn start(worker: Worker) -> Running {
    let running = spawn(worker);
    within("worker registration", running.handle.ready())
        .await
        .expect("worker ready");
    running
}

/// Runs `worker` without waiting for anything.
pub fn spawn(worker: Worker) -> Running {
    let handle = worker.handle();
    let task = tokio::spawn(worker.run());
    Running { handle, task }
}

/// Shared by a job and its test: counts fetches and the most running at once, tells
/// when one starts, and can hold them at a gate until the test releases them.
#[derive(Clone)]
pub struct Probe(Arc<ProbeState>);

struct ProbeState {
    fetches: AtomicUsize,
    running: AtomicUsize,
    peak: AtomicUsize,
    held: AtomicBool,
    gate: Semaphore,
    /// Fetches started so far, awaitable.
    started: watch::Sender<usize>,
}

impl Default for Probe {
    fn default() -> Self {
        Probe(Arc::new(ProbeState {
            fetches: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            gate: Semaphore::new(0),
            started: watch::Sender::new(0),
        }))
    }
}

impl Probe {
    /// Fetches started so far.
    pub fn fetches(&self) -> usize {
        self.0.fetches.load(Ordering::SeqCst)
    }

    /// The most fetches that ran at once.
    pub fn peak(&self) -> usize {
        self.0.peak.load(Ordering::SeqCst)
    }

    /// Fetches that start from now on wait at the gate.
    pub fn hold(&self) {
        self.0.held.store(true, Ordering::SeqCst);
    }

    /// Lets `n` fetches through the gate, and lets later ones run freely.
    pub fn release(&self, n: usize) {
        self.0.held.store(false, Ordering::SeqCst);
        self.0.gate.add_permits(n);
    }

    /// Waits until `n` fetches in all have started (capped at the harness's WAIT).
    pub async fn started(&self, n: usize) {
        let mut started = self.0.started.subscribe();
        within("fetches to start", started.wait_for(|&count| count >= n))
            .await
            .expect("the probe is alive");
    }

    /// Called first thing by a fetch: counts it, reports it, waits at the gate if held.
    /// The visit's number is the fetch's (1 for the first).
    pub async fn enter(&self) -> Visit {
        let state = &self.0;
        let number = state.fetches.fetch_add(1, Ordering::SeqCst) + 1;
        let running = state.running.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(running, Ordering::SeqCst);
        let visit = Visit {
            number,
            probe: self.clone(),
        };
        let held = state.held.load(Ordering::SeqCst);
        state.started.send_modify(|count| *count += 1);
        if held {
            state.gate.acquire().await.expect("gate open").forget();
        }
        visit
    }
}

/// One fetch inside a probe; counted as running until dropped (a panic included).
pub struct Visit {
    pub number: usize,
    probe: Probe,
}

impl Drop for Visit {
    fn drop(&mut self) {
        self.probe.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The seed's plain job: tweets of a user, `"{username} #{n}"` for the n-th fetch.
/// Lifetime 300 s, fetch on miss.
pub struct Tweets(pub Probe);

impl Job for Tweets {
    type Args = String;
    type Output = Vec<String>;
    type Error = String;

    const NAME: &'static str = "tweets.Tweets";

    async fn fetch(&self, username: String) -> Result<Vec<String>, String> {
        let visit = self.0.enter().await;
        Ok(vec![format!("{username} #{}", visit.number)])
    }
}
