//! The protocol's additions in the engine, tested in process as `tests` does (a MemStore,
//! a worker the test answers by hand, paused time): NotModified, absences, `error_ttl`,
//! tag marks and early refresh, each exact in time.

use std::time::Duration;

use tokio::time::advance;

use super::testing::{settle, until, FakeWorker, Rig};
use super::{EngineSettings, GetOptions};
use crate::error::Error;
use crate::model::{Beta, FetchReason, ItemState, JobConfig, JobName, Tag};
use crate::workers::Fetched;

fn tag(name: &str) -> Tag {
    Tag::from_stored(name.to_owned())
}

fn value(data: &[u8], validator: &[u8], tags: &[&str]) -> Fetched {
    Fetched::Value {
        data: data.to_vec(),
        lifetime: None,
        validator: validator.to_vec(),
        tags: tags.iter().map(|t| tag(t)).collect(),
    }
}

fn ten_seconds() -> JobConfig {
    JobConfig {
        lifetime: Duration::from_secs(10),
        ..JobConfig::default()
    }
}

/// A Get of `args` (the job's own miss policy), in a task of its own.
fn spawn_get(
    rig: &Rig,
    job: &JobName,
    args: &'static [u8],
) -> tokio::task::JoinHandle<Result<super::GetOutcome, Error>> {
    let (engine, job) = (rig.engine.clone(), job.clone());
    tokio::spawn(async move { engine.get(&job, args, GetOptions::default()).await })
}

/// Fills `args` by a fetch answered with `fetched`, `took` after it was asked for.
async fn fill(
    rig: &Rig,
    worker: &mut FakeWorker,
    job: &JobName,
    args: &'static [u8],
    fetched: Fetched,
    took: Duration,
) {
    let get = spawn_get(rig, job, args);
    let order = worker.order().await;
    advance(took).await;
    worker.answer_with(&order, fetched);
    get.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn not_modified_renews_the_times_and_keeps_data_validator_and_tags() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", ten_seconds()).await;
    let mut worker = rig.worker(&job, 16);
    fill(
        &rig,
        &mut worker,
        &job,
        b"a",
        value(b"body", b"v1", &["t"]),
        Duration::ZERO,
    )
    .await;
    advance(Duration::from_secs(11)).await;
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.state, got.refresh_scheduled), (ItemState::Stale, true));
    let order = worker.order().await;
    assert_eq!(
        (order.reason, &*order.validator),
        (FetchReason::Stale, &b"v1"[..])
    );
    let confirmed_at = rig.engine.now();
    worker.answer_with(
        &order,
        Fetched::NotModified {
            lifetime: Some(Duration::from_secs(100)),
        },
    );
    until("the NotModified landed", || {
        rig.store
            .item(&job, b"a")
            .is_some_and(|i| i.times.stored_at >= confirmed_at - Duration::from_millis(1))
    })
    .await;
    let item = rig.store.item(&job, b"a").unwrap();
    assert_eq!(
        (item.data.as_slice(), item.validator.as_slice()),
        (&b"body"[..], &b"v1"[..])
    );
    assert_eq!(item.tags, vec![tag("t")]);
    assert_eq!(
        item.times
            .expires_at
            .duration_since(item.times.stored_at)
            .unwrap(),
        Duration::from_secs(100)
    );
    let m = rig.engine.job_entry(&job).unwrap().metrics;
    assert_eq!((m.not_modified.get(), m.fetches_succeeded.get()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn not_modified_with_nothing_stored_is_a_failed_fetch() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", ten_seconds()).await;
    let mut worker = rig.worker(&job, 16);
    let get = spawn_get(&rig, &job, b"a");
    let order = worker.order().await;
    assert!(order.validator.is_empty(), "a miss sends no validator");
    worker.answer_with(&order, Fetched::NotModified { lifetime: None });
    let err = get.await.unwrap().unwrap_err();
    assert_eq!(
        err,
        Error::FetchFailed("the worker answered not_modified but no stored data".into())
    );
    assert!(rig.store.item(&job, b"a").is_none());
}

#[tokio::test(start_paused = true)]
async fn an_absence_is_stored_for_absent_lifetime_and_read_back_absent() {
    let rig = Rig::new(EngineSettings::default());
    let config = JobConfig {
        absent_lifetime: Some(Duration::from_secs(5)),
        ..ten_seconds()
    };
    let job = rig.job("j", config).await;
    let mut worker = rig.worker(&job, 16);
    let absent = Fetched::Absent {
        lifetime: None,
        tags: vec![tag("t")],
    };
    fill(&rig, &mut worker, &job, b"a", absent, Duration::ZERO).await;
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (got.state, got.absent, got.data.is_empty()),
        (ItemState::Fresh, true, true)
    );
    assert_eq!(got.tags, vec![tag("t")]);
    let times = got.times.unwrap();
    assert_eq!(
        times.expires_at.duration_since(times.stored_at).unwrap(),
        Duration::from_secs(5)
    );
    advance(Duration::from_secs(5)).await;
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (got.state, got.absent, got.refresh_scheduled),
        (ItemState::Stale, true, true)
    );
    let m = rig.engine.job_entry(&job).unwrap().metrics;
    assert_eq!(
        m.gets_absent.get(),
        3,
        "the fetched Get, the fresh hit, the stale hit"
    );
}

#[tokio::test(start_paused = true)]
async fn error_ttl_answers_a_missing_items_failure_at_once_until_it_runs_out() {
    let rig = Rig::new(EngineSettings::default());
    let config = JobConfig {
        error_ttl: Some(Duration::from_secs(30)),
        ..ten_seconds()
    };
    let job = rig.job("j", config).await;
    let mut worker = rig.worker(&job, 16);
    let get = spawn_get(&rig, &job, b"a");
    let order = worker.order().await;
    worker.fail(&order, "down");
    assert_eq!(
        get.await.unwrap().unwrap_err(),
        Error::FetchFailed("down".into())
    );
    advance(Duration::from_secs(29)).await;
    let again = rig.engine.get(&job, b"a", GetOptions::default()).await;
    assert_eq!(again.unwrap_err(), Error::FetchFailed("down".into()));
    settle().await;
    assert!(worker.pending().is_empty(), "no fetch within error_ttl");
    advance(Duration::from_secs(2)).await;
    let get = spawn_get(&rig, &job, b"a");
    let order = worker.order().await;
    worker.answer(&order, b"back");
    assert_eq!(get.await.unwrap().unwrap().data, b"back");
}

#[tokio::test(start_paused = true)]
async fn a_tag_mark_makes_older_tagged_items_stale_on_read_and_a_flight_refresh_once_more() {
    let rig = Rig::new(EngineSettings::default());
    let job = rig.job("j", ten_seconds()).await;
    let mut worker = rig.worker(&job, 16);
    let set = |args: &'static [u8], tags: Vec<Tag>| {
        let (engine, job) = (rig.engine.clone(), job.clone());
        async move {
            engine
                .set(&job, args, b"x".to_vec(), None, tags)
                .await
                .unwrap()
        }
    };
    set(b"tagged", vec![tag("t")]).await;
    set(b"other", vec![tag("u")]).await;
    advance(Duration::from_secs(1)).await;
    let mark = rig.engine.invalidate_tags(&[tag("t")]).await.unwrap();
    settle().await;
    assert!(
        worker.pending().is_empty(),
        "nothing is fetched at the call"
    );
    let tagged = rig.engine.peek(&job, b"tagged").await.unwrap();
    assert_eq!(tagged.state, ItemState::Stale);
    assert_eq!(tagged.times.unwrap().expires_at, mark);
    let other = rig.engine.peek(&job, b"other").await.unwrap();
    assert_eq!(other.state, ItemState::Fresh);

    // A fetch in flight for a tagged item may have read old data: one more refresh.
    let get = rig
        .engine
        .get(&job, b"tagged", GetOptions::default())
        .await
        .unwrap();
    assert!(get.refresh_scheduled);
    let order = worker.order().await;
    rig.engine.invalidate_tags(&[tag("t")]).await.unwrap();
    worker.answer_with(&order, value(b"new", b"", &["t"]));
    let follow_up = worker.order().await;
    assert_eq!(follow_up.reason, FetchReason::Invalidated);
    let stored = rig.store.item(&job, b"tagged").unwrap();
    assert_eq!(
        stored.times.expires_at, stored.times.stored_at,
        "stored stale"
    );
}

#[tokio::test(start_paused = true)]
async fn early_refresh_starts_one_reason_early_refresh_from_a_fresh_hit() {
    let rig = Rig::new(EngineSettings::default());
    let config = JobConfig {
        early_refresh_beta: Some(Beta::new(1e9).unwrap()),
        ..ten_seconds()
    };
    let job = rig.job("j", config).await;
    let mut worker = rig.worker(&job, 16);
    // The fetch takes 1 s: delta = 1 s, so at beta 1e9 any draw but ~1 fires.
    fill(
        &rig,
        &mut worker,
        &job,
        b"a",
        value(b"v1", b"", &[]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(
        rig.store.item(&job, b"a").unwrap().fetch_took,
        Duration::from_secs(1)
    );
    advance(Duration::from_secs(5)).await;
    let got = rig
        .engine
        .get(&job, b"a", GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.state, got.refresh_scheduled), (ItemState::Fresh, true));
    let order = worker.order().await;
    assert_eq!(order.reason, FetchReason::Early);
    let m = rig.engine.job_entry(&job).unwrap().metrics;
    assert_eq!(m.early_refreshes.get(), 1);
    // An item stored by a Set has no fetch duration: never refreshed early.
    rig.engine
        .set(&job, b"b", b"s".to_vec(), None, Vec::new())
        .await
        .unwrap();
    advance(Duration::from_secs(9)).await;
    let got = rig
        .engine
        .get(&job, b"b", GetOptions::default())
        .await
        .unwrap();
    assert!(!got.refresh_scheduled);
}
