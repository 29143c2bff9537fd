//! The engine's rules, tested in process with the doubles of `testing`: an in-memory
//! store, a worker that is a channel the test answers by hand, and tokio's paused clock
//! (the engine's wall clock follows it), so every test is exact and takes no real time.
//! The integration suite proves the same rules through the real binary; these pin down the
//! orderings it cannot reach, such as a write landing while a fetch is in flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::advance;

use super::testing::{settle, until, Rig};
use super::{Engine, EngineSettings, GetOptions};
use crate::counters::JobMetrics;
use crate::error::Error;
use crate::model::{FetchReason, ItemState, JobConfig, JobName};
use crate::workers::{Answered, RequestId};

/// Gets `args` of `job` in a task of its own, so the test can act while it waits.
fn spawn_get(
    engine: &Engine,
    job: &JobName,
    args: &'static [u8],
    fetch_on_miss: Option<bool>,
) -> tokio::task::JoinHandle<Result<super::GetOutcome, Error>> {
    let (engine, job) = (engine.clone(), job.clone());
    tokio::spawn(async move { engine.get(&job, args, on_miss(fetch_on_miss)).await })
}

/// A Get with only `fetch_on_miss` set.
fn on_miss(fetch_on_miss: Option<bool>) -> GetOptions {
    GetOptions {
        fetch_on_miss,
        ..GetOptions::default()
    }
}

fn metrics(rig: &Rig, job: &JobName) -> Arc<JobMetrics> {
    rig.engine.job_entry(job).expect("a known job").metrics
}

/// Waits until `n` fetches of the job have finished (their results recorded: the driver
/// counts a fetch and records it in the same turn).
async fn finished(m: &JobMetrics, n: u64) {
    until("the fetches finished", || {
        m.fetches_succeeded.get() + m.fetches_failed.get() >= n
    })
    .await;
}

/// An item of `job` at `args`, stored and then left to go stale.
async fn stale_item(rig: &Rig, job: &JobName, args: &[u8], data: &[u8]) {
    let lifetime = Some(Duration::from_secs(10));
    rig.engine
        .set(job, args, data.to_vec(), lifetime, Vec::new())
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_share_one_fetch() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    let gets: Vec<_> = (0..10)
        .map(|_| spawn_get(&rig.engine, &job, b"a", None))
        .collect();
    let order = worker.order().await;
    settle().await;
    assert!(worker.pending().is_empty(), "one fetch for ten misses");
    assert_eq!(order.reason, FetchReason::Miss);
    assert_eq!(worker.answer(&order, b"data"), Answered::Delivered);
    for get in gets {
        let got = get.await.unwrap().unwrap();
        assert_eq!(
            (got.state, got.data.as_slice(), got.fetched),
            (ItemState::Fresh, &b"data"[..], true)
        );
    }
    assert_eq!(rig.store.puts.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_hits_serve_old_data_and_refresh_once() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    stale_item(&rig, &job, b"a", b"old").await;
    for _ in 0..3 {
        let got = rig
            .engine
            .get(&job, b"a", GetOptions::default())
            .await
            .unwrap();
        assert_eq!(got.state, ItemState::Stale);
        assert_eq!(got.data, b"old");
        assert!(got.refresh_scheduled);
    }
    let order = worker.order().await;
    settle().await;
    assert!(worker.pending().is_empty());
    assert_eq!(order.reason, FetchReason::Stale);
    worker.answer(&order, b"new");
    finished(&metrics(&rig, &job), 1).await;
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.state, got.data), (ItemState::Fresh, b"new".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn a_set_during_a_flight_wins_over_its_result() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    stale_item(&rig, &job, b"a", b"old").await;
    assert!(
        rig.engine
            .get(&job, b"a", GetOptions::default())
            .await
            .unwrap()
            .refresh_scheduled
    );
    let order = worker.order().await;
    rig.engine
        .set(&job, b"a", b"set".to_vec(), None, Vec::new())
        .await
        .unwrap();
    worker.answer(&order, b"fetched");
    finished(&metrics(&rig, &job), 1).await;
    assert_eq!(rig.store.item(&job, b"a").unwrap().data, b"set");
}

#[tokio::test(start_paused = true)]
async fn a_delete_during_a_flight_is_not_undone_by_its_result() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    stale_item(&rig, &job, b"a", b"old").await;
    rig.engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    let order = worker.order().await;
    assert!(rig.engine.delete(&job, b"a").await.unwrap());
    worker.answer(&order, b"fetched");
    finished(&metrics(&rig, &job), 1).await;
    assert_eq!(rig.store.item(&job, b"a"), None);
}

#[tokio::test(start_paused = true)]
async fn an_invalidate_during_a_flight_stores_its_result_stale_and_refreshes_once_more() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    stale_item(&rig, &job, b"a", b"old").await;
    rig.engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    let first = worker.order().await;
    let invalidated = rig.engine.invalidate(&job, b"a").await.unwrap();
    assert!(invalidated.found && invalidated.refresh_scheduled);
    settle().await;
    assert!(
        worker.pending().is_empty(),
        "the follow-up waits for the flight"
    );
    worker.answer(&first, b"v1");
    let second = worker.order().await;
    assert_eq!(second.reason, FetchReason::Invalidated);
    let stored = rig.store.item(&job, b"a").unwrap();
    assert_eq!(stored.data, b"v1");
    assert_eq!(
        stored.times.expires_at, stored.times.stored_at,
        "stored stale"
    );
    worker.answer(&second, b"v2");
    finished(&metrics(&rig, &job), 2).await;
    settle().await;
    assert!(worker.pending().is_empty(), "exactly one follow-up");
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.state, got.data), (ItemState::Fresh, b"v2".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_backs_the_item_off_until_its_delay_runs_out() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    let m = metrics(&rig, &job);
    stale_item(&rig, &job, b"a", b"old").await;
    rig.engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    let order = worker.order().await;
    worker.fail(&order, "origin down");
    finished(&m, 1).await;
    // The first delay is retry_base (1 s) times a jitter of 0.5 to 1.
    advance(Duration::from_millis(499)).await;
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (got.state, got.refresh_scheduled),
        (ItemState::Stale, false)
    );
    settle().await;
    assert!(worker.pending().is_empty());
    advance(Duration::from_millis(501)).await;
    assert!(
        rig.engine
            .get(&job, b"a", GetOptions::default())
            .await
            .unwrap()
            .refresh_scheduled
    );
    assert_eq!(worker.order().await.args.as_ref(), b"a");
    assert_eq!(m.fetches_retried.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_backoff_delay_doubles_with_each_failure() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    let m = metrics(&rig, &job);
    stale_item(&rig, &job, b"a", b"old").await;
    rig.engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    let order = worker.order().await;
    worker.fail(&order, "down");
    finished(&m, 1).await;
    advance(Duration::from_secs(1)).await;
    rig.engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    let order = worker.order().await;
    worker.fail(&order, "down again");
    finished(&m, 2).await;
    // Two failures: 2 s times a jitter of 0.5 to 1, so at least 1 s.
    advance(Duration::from_millis(999)).await;
    assert!(
        !rig.engine
            .get(&job, b"a", GetOptions::default())
            .await
            .unwrap()
            .refresh_scheduled
    );
    advance(Duration::from_millis(1001)).await;
    assert!(
        rig.engine
            .get(&job, b"a", GetOptions::default())
            .await
            .unwrap()
            .refresh_scheduled
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_ends_the_backoff() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    let m = metrics(&rig, &job);
    stale_item(&rig, &job, b"a", b"old").await;
    rig.engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    let order = worker.order().await;
    worker.fail(&order, "down");
    finished(&m, 1).await;
    rig.engine
        .set(&job, b"a", b"set".to_vec(), None, Vec::new())
        .await
        .unwrap();
    let invalidated = rig.engine.invalidate(&job, b"a").await.unwrap();
    assert!(invalidated.refresh_scheduled, "no backoff after a write");
    assert_eq!(worker.order().await.reason, FetchReason::Invalidated);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_waits_in_the_queue_for_a_free_worker() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 1);
    assert!(
        rig.engine
            .get(&job, b"a", on_miss(Some(false)))
            .await
            .unwrap()
            .refresh_scheduled
    );
    assert!(
        rig.engine
            .get(&job, b"b", on_miss(Some(false)))
            .await
            .unwrap()
            .refresh_scheduled
    );
    let first = worker.order().await;
    settle().await;
    assert!(worker.pending().is_empty(), "max_in_flight 1: b waits");
    worker.answer(&first, b"A");
    let second = worker.order().await;
    assert_eq!(
        (first.args.as_ref(), second.args.as_ref()),
        (&b"a"[..], &b"b"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_wait_queue_serves_stale_without_scheduling_and_refuses_a_sync_miss() {
    let settings = EngineSettings {
        queue_capacity: 1,
        ..EngineSettings::default()
    };
    let rig = Rig::new(settings);
    let job = rig.job("j", JobConfig::default()).await;
    stale_item(&rig, &job, b"old", b"x").await;
    // No worker: the first fetch fills the queue.
    assert!(
        rig.engine
            .get(&job, b"a", on_miss(Some(false)))
            .await
            .unwrap()
            .refresh_scheduled
    );
    until("the fetch is queued", || {
        rig.engine.workers().queue_full(&job)
    })
    .await;
    let got = rig
        .engine
        .get(&job, b"old", GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (got.state, got.refresh_scheduled),
        (ItemState::Stale, false)
    );
    let refused = rig
        .engine
        .get(&job, b"b", GetOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::QueueFull { capacity: 1, .. }),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_workers_fetch_fails_over_to_another_worker() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut lost = rig.worker(&job, 1);
    let mut other = rig.worker(&job, 1);
    let get = spawn_get(&rig.engine, &job, b"a", None);
    let order = lost.order().await;
    lost.leave();
    let moved = other.order().await;
    assert_eq!(moved.args, order.args);
    assert_ne!(moved.request_id, order.request_id);
    other.answer(&moved, b"data");
    assert_eq!(get.await.unwrap().unwrap().data, b"data");
    let stats = rig.engine.workers().stats();
    assert_eq!(stats.failovers.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_nobody_answers_fails_at_refresh_timeout_and_keeps_its_slot() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 1);
    let get = spawn_get(&rig.engine, &job, b"a", None);
    let order = worker.order().await;
    // Nothing answers: the paused clock runs on to the 60 s deadline.
    let failed = get.await.unwrap().unwrap_err();
    assert!(
        matches!(&failed, Error::FetchFailed(m) if m.contains("answered within refresh_timeout")),
        "{failed:?}"
    );
    // The late fetch still holds the worker's one slot.
    advance(Duration::from_secs(1)).await;
    let next = spawn_get(&rig.engine, &job, b"b", Some(false));
    assert!(next.await.unwrap().unwrap().refresh_scheduled);
    settle().await;
    assert!(worker.pending().is_empty());
    assert_eq!(worker.answer(&order, b"late"), Answered::Late);
    assert_eq!(worker.order().await.args.as_ref(), b"b");
    assert_eq!(rig.store.item(&job, b"a"), None);
}

#[tokio::test(start_paused = true)]
async fn an_answer_to_no_fetch_in_flight_is_dropped_and_counted() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 1);
    rig.engine
        .get(&job, b"a", on_miss(Some(false)))
        .await
        .unwrap();
    let mut order = worker.order().await;
    let real = order.request_id;
    order.request_id = RequestId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
    assert_eq!(worker.answer(&order, b"x"), Answered::Unknown);
    let stats = rig.engine.workers().stats();
    assert_eq!(stats.unknown_answers.load(Ordering::Relaxed), 1);
    order.request_id = real;
    assert_eq!(worker.answer(&order, b"x"), Answered::Delivered);
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_finishing_a_flight_answers_its_waiters_and_leaves_no_flight_behind() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    rig.store.panic_on_put.store(true, Ordering::Relaxed);
    let get = spawn_get(&rig.engine, &job, b"a", None);
    let order = worker.order().await;
    worker.answer(&order, b"data");
    let failed = get.await.unwrap().unwrap_err();
    assert!(matches!(failed, Error::Internal(_)), "{failed:?}");
    rig.store.panic_on_put.store(false, Ordering::Relaxed);
    // The item is not stuck: the next Get starts a fetch of its own.
    let get = spawn_get(&rig.engine, &job, b"a", None);
    let order = worker.order().await;
    worker.answer(&order, b"data");
    assert_eq!(get.await.unwrap().unwrap().data, b"data");
}

#[tokio::test(start_paused = true)]
async fn closing_answers_waiting_gets_and_ends_every_task() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    let get = spawn_get(&rig.engine, &job, b"a", None);
    let _order = worker.order().await;
    rig.shutdown.close();
    assert_eq!(get.await.unwrap(), Err(Error::ShuttingDown));
    assert!(rig.shutdown.wait_for_tasks(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_outlives_delete_job_stores_nothing_for_the_job_registered_again() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let old_metrics = metrics(&rig, &job);
    let mut first = rig.worker(&job, 1);
    rig.engine
        .get(&job, b"a", on_miss(Some(false)))
        .await
        .unwrap();
    first.order().await;
    // Its worker goes away: the fetch waits in the queue for the next one.
    first.leave();
    assert_eq!(rig.engine.delete_job(&job).await.unwrap(), Some(0));
    let job = rig.job("j", JobConfig::default()).await;
    let mut second = rig.worker(&job, 1);
    let order = second.order().await;
    second.answer(&order, b"from before the delete");
    finished(&old_metrics, 1).await;
    assert_eq!(rig.store.count(&job), 0);
    assert_eq!(
        rig.engine.peek(&job, b"a").await.unwrap().state,
        ItemState::Miss
    );
}

#[tokio::test(start_paused = true)]
async fn delete_job_is_refused_while_a_worker_is_connected() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let worker = rig.worker(&job, 1);
    let refused = rig.engine.delete_job(&job).await.unwrap_err();
    assert!(
        matches!(refused, Error::FailedPrecondition(_)),
        "{refused:?}"
    );
    worker.leave();
    rig.engine
        .set(&job, b"a", b"x".to_vec(), None, Vec::new())
        .await
        .unwrap();
    assert_eq!(rig.engine.delete_job(&job).await.unwrap(), Some(1));
    let gone = rig
        .engine
        .set(&job, b"a", b"x".to_vec(), None, Vec::new())
        .await;
    assert!(matches!(gone, Err(Error::UnknownJob(_))), "{gone:?}");
}

#[tokio::test(start_paused = true)]
async fn peek_starts_nothing_and_counts_nothing() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    stale_item(&rig, &job, b"a", b"old").await;
    let peeked = rig.engine.peek(&job, b"a").await.unwrap();
    assert_eq!(
        (peeked.state, peeked.refresh_scheduled),
        (ItemState::Stale, false)
    );
    assert_eq!(
        rig.engine.peek(&job, b"b").await.unwrap().state,
        ItemState::Miss
    );
    settle().await;
    assert!(worker.pending().is_empty());
    let m = metrics(&rig, &job);
    assert_eq!((m.gets_stale.get(), m.gets_miss.get()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn invalidate_job_makes_every_stored_item_stale_on_its_next_get() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", JobConfig::default()).await;
    let mut worker = rig.worker(&job, 16);
    for args in [&b"a"[..], b"b"] {
        rig.engine
            .set(&job, args, b"x".to_vec(), None, Vec::new())
            .await
            .unwrap();
    }
    advance(Duration::from_secs(1)).await;
    rig.engine.invalidate_job(&job).await.unwrap();
    settle().await;
    assert!(
        worker.pending().is_empty(),
        "no stampede: nothing starts at once"
    );
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.state, got.refresh_scheduled), (ItemState::Stale, true));
    assert_eq!(worker.order().await.args.as_ref(), b"a");
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_removes_items_past_cache_ttl_and_keeps_the_rest() {
    let rig = Rig::new(EngineSettings::default());
    let config = JobConfig {
        cache_ttl: Duration::from_secs(100),
        ..JobConfig::default()
    };
    let job = rig.job("j", config).await;
    rig.engine
        .set(&job, b"old", b"x".to_vec(), None, Vec::new())
        .await
        .unwrap();
    advance(Duration::from_secs(50)).await;
    rig.engine
        .set(&job, b"young", b"x".to_vec(), None, Vec::new())
        .await
        .unwrap();
    advance(Duration::from_secs(51)).await;
    assert_eq!(rig.engine.sweep(rig.engine.now()).unwrap(), 1);
    assert_eq!(rig.store.item(&job, b"old"), None);
    assert!(rig.store.item(&job, b"young").is_some());
}
