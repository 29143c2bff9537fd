//! Set, Delete and Invalidate, on their own and racing a fetch in flight (PROTOCOL.md,
//! "Writes win over fetches in flight", "Per-item lifetime", "Invalidate").

use std::time::Duration;

use cachebackd_proto::v1::{FetchReason, ItemState, JobConfig};

use crate::harness::*;

const JOB: &str = "writes";

#[tokio::test]
async fn set_during_fetch_wins() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    // A synchronous fetch: its result answers the waiting Get, but the Set stays.
    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    set(&mut c, JOB, b"[1]", b"\"set\"".to_vec(), None).await;
    w.reply_value(&fetch.request_id, b"\"fetched\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("waiting Get");
    assert_eq!(
        r.data, b"\"fetched\"",
        "the fetch answers those waiting on it"
    );
    assert!(r.fetched);
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"set\"", "the Set is not overwritten");

    // An asynchronous refresh of a stale item.
    let s = set(&mut c, JOB, b"[2]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    sleep_until_wall(wall(s.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;
    assert!(get(&mut c, JOB, b"[2]").await.refresh_scheduled);
    let fetch = w.next_fetch().await;
    set(&mut c, JOB, b"[2]", b"\"set\"".to_vec(), None).await;
    w.reply_value(&fetch.request_id, b"\"refreshed\"".to_vec(), None)
        .await;
    // The barrier's answer follows the refresh's on the same stream.
    w.assert_no_fetch(&c, JOB).await;
    let r = get(&mut c, JOB, b"[2]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"set\"");
}

#[tokio::test]
async fn delete_during_fetch_wins() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    // A synchronous fetch of a missing item, deleted meanwhile.
    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    delete(&mut c, JOB, b"[1]").await;
    w.reply_value(&fetch.request_id, b"\"fetched\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("waiting Get");
    assert_eq!(
        r.data, b"\"fetched\"",
        "the fetch answers those waiting on it"
    );
    let r = get_no_wait(&mut c, JOB, b"[1]").await;
    assert_eq!(
        r.state(),
        ItemState::Miss,
        "a deleted item is not resurrected"
    );
    // That Get scheduled a fill of its own; answer it so it does not linger.
    let fill = w.next_fetch().await;
    w.reply_error(&fill.request_id, "not now").await;

    // A refresh of a stale item in flight when the item is deleted.
    let s = set(&mut c, JOB, b"[2]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    sleep_until_wall(wall(s.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;
    assert!(get(&mut c, JOB, b"[2]").await.refresh_scheduled);
    let fetch = w.next_fetch().await;
    assert!(delete(&mut c, JOB, b"[2]").await.found);
    w.reply_value(&fetch.request_id, b"\"refreshed\"".to_vec(), None)
        .await;
    w.assert_no_fetch(&c, JOB).await;
    let r = get_no_wait(&mut c, JOB, b"[2]").await;
    assert_eq!(
        r.state(),
        ItemState::Miss,
        "the refresh did not resurrect it"
    );
    assert!(r.data.is_empty());
}

#[tokio::test]
async fn invalidate_during_fetch_triggers_one_more_refresh() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"\"v1\"".to_vec(), None).await;

    let inv = invalidate(&mut c, JOB, b"[1]").await;
    assert!(inv.found && inv.refresh_scheduled);
    let first = w.next_fetch().await;
    assert_eq!(first.reason(), FetchReason::Invalidated);

    // Invalidated again (three times) while that fetch is in flight: it may have read the
    // old data, so exactly one more refresh follows it, and not before it is answered.
    for _ in 0..3 {
        let inv = invalidate(&mut c, JOB, b"[1]").await;
        assert!(inv.found);
        assert!(inv.refresh_scheduled);
    }
    w.assert_no_fetch(&c, JOB).await;
    w.reply_value(&first.request_id, b"\"v2\"".to_vec(), None)
        .await;
    let second = w.next_fetch().await;
    assert_eq!(second.args, b"[1]");
    assert_eq!(second.reason(), FetchReason::Invalidated);
    w.reply_value(&second.request_id, b"\"v3\"".to_vec(), None)
        .await;
    w.assert_no_fetch(&c, JOB).await;
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"v3\"");
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[1]").count(), 2);
}

#[tokio::test]
async fn per_item_lifetime_from_fetched_value() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"short\"".to_vec(), Some(dur(2.0)))
        .await;
    let r = join_get(pending).await.expect("Get");
    let expires_at = r.expires_at.unwrap();
    assert_span(
        seconds_between(r.stored_at.as_ref().unwrap(), &expires_at),
        2.0,
        "FetchedValue.lifetime",
    );

    // Another item without an override keeps the job's lifetime.
    let pending = spawn_get(&c, JOB, b"[2]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"long\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("Get");
    assert_span(
        seconds_between(
            r.stored_at.as_ref().unwrap(),
            r.expires_at.as_ref().unwrap(),
        ),
        300.0,
        "job lifetime",
    );

    sleep_until_wall(wall(&expires_at) + Duration::from_millis(50)).await;
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Stale, "the 2 s item went stale");
    assert_eq!(r.data, b"\"short\"");
    assert_eq!(get(&mut c, JOB, b"[2]").await.state(), ItemState::Fresh);
}

#[tokio::test]
async fn per_item_lifetime_from_set() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let s = set(&mut c, JOB, b"[1]", b"1".to_vec(), Some(dur(7.0))).await;
    let left = seconds_from_now(s.expires_at.as_ref().unwrap());
    assert!(left > 5.0 && left <= 7.0, "expires in ~7 s: {left}");
    let r = get(&mut c, JOB, b"[1]").await;
    assert_span(
        seconds_between(
            r.stored_at.as_ref().unwrap(),
            r.expires_at.as_ref().unwrap(),
        ),
        7.0,
        "SetRequest.lifetime",
    );
    assert_same_instant(
        r.expires_at.as_ref().unwrap(),
        s.expires_at.as_ref().unwrap(),
        "Get and Set agree",
    );

    let s = set(&mut c, JOB, b"[2]", b"2".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        300.0,
        "job lifetime by default",
    );
}

#[tokio::test]
async fn invalidate_present_item_serves_stale_and_refreshes() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"\"v1\"".to_vec(), None).await;

    let inv = invalidate(&mut c, JOB, b"[1]").await;
    assert!(inv.found);
    assert!(inv.refresh_scheduled);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[1]");
    assert_eq!(fetch.reason(), FetchReason::Invalidated);

    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert_eq!(r.data, b"\"v1\"");
    assert!(r.refresh_scheduled);
    assert!(!r.fetched);
    assert!(
        seconds_from_now(r.expires_at.as_ref().unwrap()) <= 0.0,
        "expiry set to now"
    );
    w.assert_no_fetch(&c, JOB).await;

    w.reply_value(&fetch.request_id, b"\"v2\"".to_vec(), None)
        .await;
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[1]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(r.data, b"\"v2\"");
}

#[tokio::test]
async fn invalidate_absent_item_does_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let inv = invalidate(&mut c, JOB, b"[1]").await;
    assert!(!inv.found);
    assert!(!inv.refresh_scheduled);
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(w.fetch_count(), 1, "only the barrier");

    // Nor after a Delete.
    set(&mut c, JOB, b"[2]", b"2".to_vec(), None).await;
    delete(&mut c, JOB, b"[2]").await;
    let inv = invalidate(&mut c, JOB, b"[2]").await;
    assert!(!inv.found && !inv.refresh_scheduled);
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(w.fetch_count(), 2, "only the barriers");
}

#[tokio::test]
async fn delete_makes_next_get_a_miss() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;

    assert!(delete(&mut c, JOB, b"[1]").await.found);
    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[1]");
    assert_eq!(fetch.reason(), FetchReason::Miss);
    w.reply_value(&fetch.request_id, b"\"again\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("Get");
    assert!(r.fetched);
    assert_eq!(r.data, b"\"again\"");

    assert!(delete(&mut c, JOB, b"[1]").await.found);
    assert!(!delete(&mut c, JOB, b"[1]").await.found, "already gone");
    let r = get_no_wait(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss);
}

#[tokio::test]
async fn set_overwrites_and_reports_expiry() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        lifetime: Some(dur(60.0)),
        ..JobConfig::default()
    };
    let _w = TestWorker::register(&d, JOB, cfg).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
    let s = set(&mut c, JOB, b"[1]", b"2".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        60.0,
        "expiry",
    );
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"2");
    assert!(!r.fetched);
}
