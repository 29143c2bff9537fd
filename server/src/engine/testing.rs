//! Test doubles for the in-process tests of the engine (`engine/tests.rs`): an in-memory
//! [`Store`], an engine on tokio's paused clock, and a worker that is a channel the test
//! reads fetch orders from and answers by hand. Nothing here runs in the daemon.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Engine, EngineSettings};
use crate::clock::Clock;
use crate::counters::Metrics;
use crate::error::Error;
use crate::model::{ItemKey, JobConfig, JobName, Limits, Tag};
use crate::policy;
use crate::shutdown::Shutdown;
use crate::store::{Item, Store, Usage};
use crate::workers::{Answered, FetchOrder, Fetched, Outbound, WorkerId};

/// The [`Store`] contract kept in memory. `panic_on_put` makes every item write panic,
/// standing for a bug or a failing disk in the middle of a flight.
#[derive(Default)]
pub(crate) struct MemStore {
    items: Mutex<BTreeMap<Vec<u8>, Item>>,
    jobs: Mutex<HashMap<JobName, JobConfig>>,
    marks: Mutex<HashMap<JobName, SystemTime>>,
    tag_marks: Mutex<HashMap<Tag, SystemTime>>,
    pub(crate) panic_on_put: AtomicBool,
    pub(crate) puts: AtomicUsize,
}

impl MemStore {
    /// The item stored at `(job, args)`, read without the engine.
    pub(crate) fn item(&self, job: &JobName, args: &[u8]) -> Option<Item> {
        self.items
            .lock()
            .get(ItemKey::new(job, args).as_bytes())
            .cloned()
    }

    /// How many items of `job` are stored.
    pub(crate) fn count(&self, job: &JobName) -> usize {
        let prefix = ItemKey::job_prefix(job);
        let items = self.items.lock();
        items.keys().filter(|k| k.starts_with(&prefix)).count()
    }
}

impl Store for MemStore {
    fn put_tag_marks(&self, tags: &[Tag], at: SystemTime) -> Result<(), Error> {
        let mut marks = self.tag_marks.lock();
        for tag in tags {
            marks.insert(tag.clone(), at);
        }
        Ok(())
    }

    fn tag_marks(&self) -> Result<Vec<(Tag, SystemTime)>, Error> {
        Ok(self
            .tag_marks
            .lock()
            .iter()
            .map(|(t, at)| (t.clone(), *at))
            .collect())
    }

    fn get(&self, key: &ItemKey) -> Result<Option<Item>, Error> {
        Ok(self.items.lock().get(key.as_bytes()).cloned())
    }

    fn put(&self, key: &ItemKey, item: &Item) -> Result<(), Error> {
        assert!(
            !self.panic_on_put.load(Ordering::Relaxed),
            "MemStore: panic_on_put"
        );
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.items
            .lock()
            .insert(key.as_bytes().to_vec(), item.clone());
        Ok(())
    }

    fn remove(&self, key: &ItemKey) -> Result<bool, Error> {
        Ok(self.items.lock().remove(key.as_bytes()).is_some())
    }

    fn put_job(&self, job: &JobName, config: &JobConfig) -> Result<(), Error> {
        self.jobs.lock().insert(job.clone(), *config);
        Ok(())
    }

    fn jobs(&self) -> Result<Vec<(JobName, JobConfig)>, Error> {
        Ok(self
            .jobs
            .lock()
            .iter()
            .map(|(j, c)| (j.clone(), *c))
            .collect())
    }

    fn sweep(
        &self,
        config_of: &dyn Fn(&str) -> Option<JobConfig>,
        now: SystemTime,
    ) -> Result<usize, Error> {
        let mut items = self.items.lock();
        let before = items.len();
        items.retain(|key, item| {
            let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
            let job = std::str::from_utf8(&key[..end]).unwrap_or("");
            config_of(job).is_some_and(|c| !policy::is_past_ttl(item.times.stored_at, &c, now))
        });
        Ok(before - items.len())
    }

    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    fn corrupt_records(&self) -> u64 {
        0
    }

    fn put_invalidated_before(&self, job: &JobName, at: SystemTime) -> Result<(), Error> {
        self.marks.lock().insert(job.clone(), at);
        Ok(())
    }

    fn invalidated_before(&self) -> Result<Vec<(JobName, SystemTime)>, Error> {
        Ok(self
            .marks
            .lock()
            .iter()
            .map(|(j, t)| (j.clone(), *t))
            .collect())
    }

    fn remove_job(&self, job: &JobName) -> Result<u64, Error> {
        self.jobs.lock().remove(job);
        self.marks.lock().remove(job);
        let prefix = ItemKey::job_prefix(job);
        let mut items = self.items.lock();
        let before = items.len();
        items.retain(|k, _| !k.starts_with(&prefix));
        Ok((before - items.len()) as u64)
    }

    fn usage(&self, job: &JobName) -> Result<Usage, Error> {
        let prefix = ItemKey::job_prefix(job);
        let items = self.items.lock();
        let mine = items.iter().filter(|(k, _)| k.starts_with(&prefix));
        Ok(mine.fold(Usage::default(), |u, (_, i)| Usage {
            items: u.items + 1,
            bytes: u.bytes + i.data.len() as u64,
        }))
    }

    fn close(&self) -> Result<(), Error> {
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(0)
    }
}

/// An engine over a [`MemStore`], its wall clock following tokio's (paused) clock.
pub(crate) struct Rig {
    pub(crate) engine: Engine,
    pub(crate) store: Arc<MemStore>,
    pub(crate) shutdown: Shutdown,
}

impl Rig {
    /// An engine with `settings`.
    pub(crate) fn new(settings: EngineSettings) -> Rig {
        let store = Arc::new(MemStore::default());
        let shutdown = Shutdown::new();
        let engine = Engine::with_clock(
            store.clone(),
            settings,
            Metrics::new(),
            shutdown.clone(),
            Clock::following_tokio(),
        )
        .expect("an engine over an empty MemStore");
        Rig {
            engine,
            store,
            shutdown,
        }
    }

    /// Registers `name` with `config`.
    pub(crate) async fn job(&self, name: &str, config: JobConfig) -> JobName {
        let job = JobName::parse(name, &Limits::default()).expect("a valid job name");
        self.engine
            .register_job(&job, config)
            .await
            .expect("register");
        job
    }

    /// A worker of `job` that takes `max_in_flight` fetches at once.
    pub(crate) fn worker(&self, job: &JobName, max_in_flight: usize) -> FakeWorker {
        let (tx, rx) = mpsc::channel(max_in_flight + 2);
        let id = Uuid::new_v4();
        self.engine
            .add_worker(job, id, max_in_flight, 1, tx)
            .expect("the job is registered");
        FakeWorker {
            engine: self.engine.clone(),
            job: job.clone(),
            id,
            rx,
        }
    }
}

/// A registered worker, driven by the test.
pub(crate) struct FakeWorker {
    engine: Engine,
    job: JobName,
    pub(crate) id: WorkerId,
    rx: mpsc::Receiver<Outbound>,
}

impl FakeWorker {
    /// The next fetch order sent to this worker. Waits at most an hour of paused time,
    /// which tokio skips at once when nothing else can happen: a test whose order never
    /// comes fails instead of hanging.
    pub(crate) async fn order(&mut self) -> FetchOrder {
        let next = tokio::time::timeout(Duration::from_secs(3600), self.rx.recv());
        match next.await {
            Ok(Some(Outbound::Fetch(order))) => order,
            Ok(other) => panic!("expected a fetch order, got {other:?}"),
            Err(_) => panic!("no fetch order came"),
        }
    }

    /// The orders sent to this worker and not read yet, without waiting.
    pub(crate) fn pending(&mut self) -> Vec<FetchOrder> {
        let mut orders = Vec::new();
        while let Ok(out) = self.rx.try_recv() {
            match out {
                Outbound::Fetch(order) => orders.push(order),
                Outbound::Batch(batch) => orders.extend(batch),
                Outbound::Close(e) => panic!("unexpected close: {e}"),
            }
        }
        orders
    }

    /// Answers `order` with `data`.
    pub(crate) fn answer(&self, order: &FetchOrder, data: &[u8]) -> Answered {
        let fetched = Fetched::Value {
            data: data.to_vec(),
            lifetime: None,
            validator: Vec::new(),
            tags: Vec::new(),
        };
        self.reply(order, Ok(fetched))
    }

    /// Answers `order` with any outcome of a fetch (an absence, NotModified, tags...).
    pub(crate) fn answer_with(&self, order: &FetchOrder, fetched: Fetched) -> Answered {
        self.reply(order, Ok(fetched))
    }

    /// Answers `order` with an error.
    pub(crate) fn fail(&self, order: &FetchOrder, message: &str) -> Answered {
        self.reply(order, Err(message.to_owned()))
    }

    fn reply(&self, order: &FetchOrder, outcome: crate::workers::Outcome) -> Answered {
        self.engine
            .workers()
            .answer(&self.job, self.id, order.request_id, outcome)
    }

    /// The worker's stream ends: its live fetches fail over.
    pub(crate) fn leave(self) {
        self.engine.workers().unregister(&self.job, self.id);
    }
}

/// Lets the spawned tasks (flight drivers) run until `done` holds; panics if they never
/// get there. Counts scheduler turns, not time, so it neither sleeps nor moves the clock.
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// Lets every task that can run, run (a fixed number of scheduler turns): before asserting
/// that something did *not* happen.
pub(crate) async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}
