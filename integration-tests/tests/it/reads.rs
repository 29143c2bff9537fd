//! What a Get does: on a miss, a fresh hit, a stale hit, and a stale hit past the
//! threshold (PROTOCOL.md, "Get on a miss", "Get on a fresh hit", "Get on a stale hit").

use std::time::Duration;

use cachebackd_proto::v1::{FetchReason, ItemState, JobConfig};
use tokio::task::JoinSet;

use crate::harness::*;
use crate::ops_support::scrape;

const JOB: &str = "reads";

#[tokio::test]
async fn miss_with_fetch_on_miss_waits_for_one_fetch_and_returns_fresh() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[1]");
    assert_eq!(fetch.reason(), FetchReason::Miss);
    uuid::Uuid::parse_str(&fetch.request_id).expect("request_id is a UUID");
    let left = seconds_from_now(fetch.deadline.as_ref().expect("deadline is set"));
    assert!(
        left > 0.0 && left <= 30.0,
        "deadline is within refresh_timeout from now: {left} s"
    );
    w.reply_value(&fetch.request_id, b"\"one\"".to_vec(), None)
        .await;

    let r = join_get(pending).await.expect("Get waiting on the fetch");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"one\"");
    assert!(r.fetched, "the Get waited for a fetch");
    assert!(!r.refresh_scheduled);
    let stored_at = r.stored_at.expect("stored_at on a hit");
    let expires_at = r.expires_at.expect("expires_at on a hit");
    assert_span(
        seconds_between(&stored_at, &expires_at),
        300.0,
        "job lifetime",
    );

    // The fetched data was stored: the next Get is a plain fresh hit.
    let again = get(&mut c, JOB, b"[1]").await;
    assert_eq!(again.state(), ItemState::Fresh);
    assert_eq!(again.data, b"\"one\"");
    assert!(!again.fetched);
    assert_same_instant(&again.stored_at.unwrap(), &stored_at, "stored_at");
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[1]").count(), 1);
}

#[tokio::test]
async fn concurrent_gets_of_a_missing_item_share_one_fetch() {
    // The daemon's miss counter is the signal that every Get has reached it.
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--metrics-listen", &metrics])
        .start()
        .await;
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    // Four connections, so 200 calls stay well under any per-connection stream limit.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(d.connect().await);
    }
    let mut calls = JoinSet::new();
    for i in 0..200 {
        let mut c = clients[i % 4].clone();
        calls.spawn(async move { try_get(&mut c, JOB, b"[\"hot\"]", None).await });
    }
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[\"hot\"]");
    // Hold the answer until all 200 Gets have found the item missing.
    let misses = format!("cachebackd_gets_total{{job=\"{JOB}\",outcome=\"miss\"}}");
    eventually(WAIT, || {
        let (metrics, misses) = (metrics.clone(), misses.clone());
        async move { (scrape(&metrics).await.get(&misses) == 200.0).then_some(()) }
    })
    .await;
    w.reply_value(&fetch.request_id, b"\"shared\"".to_vec(), None)
        .await;

    let mut answered = 0;
    while let Some(joined) = within("200 Gets", calls.join_next()).await {
        let r = joined.expect("Get task").expect("Get sharing the fetch");
        assert_eq!(r.state(), ItemState::Fresh);
        assert_eq!(r.data, b"\"shared\"");
        assert!(r.fetched, "every caller waited for the shared fetch");
        answered += 1;
    }
    assert_eq!(answered, 200);
    assert_eq!(w.fetch_count(), 1, "200 Gets, one fetch");
    w.assert_no_fetch(&clients[0], JOB).await;
    assert_eq!(w.fetch_count(), 2, "only the barrier fetch came after");
}

#[tokio::test]
async fn async_miss_returns_miss_and_schedules_one_fetch() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, 30.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;

    let r = get(&mut c, JOB, b"[2]").await;
    assert_eq!(r.state(), ItemState::Miss);
    assert!(r.data.is_empty());
    assert!(r.stored_at.is_none() && r.expires_at.is_none());
    assert!(r.refresh_scheduled, "the miss schedules a fetch");
    assert!(!r.fetched);

    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[2]");
    assert_eq!(fetch.reason(), FetchReason::Miss);

    // While it is in flight, more misses report it and start nothing.
    for _ in 0..5 {
        let r = get(&mut c, JOB, b"[2]").await;
        assert_eq!(r.state(), ItemState::Miss);
        assert!(r.refresh_scheduled, "a fetch is in flight");
    }
    w.assert_no_fetch(&c, JOB).await;

    w.reply_value(&fetch.request_id, b"\"filled\"".to_vec(), None)
        .await;
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[2]").await;
            (r.state() != ItemState::Miss).then_some(r)
        }
    })
    .await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"filled\"");
    assert!(!r.fetched);
    assert!(!r.refresh_scheduled);
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[2]").count(), 1);
}

#[tokio::test]
async fn per_call_fetch_on_miss_overrides_the_job() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let cfg = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, 30.0)
    };
    let mut lazy = TestWorker::register(&d, "lazy", cfg).await;

    // Job fetches on miss; the call says no.
    let r = get_no_wait(&mut c, JOB, b"[3]").await;
    assert_eq!(r.state(), ItemState::Miss);
    assert!(r.refresh_scheduled);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[3]");
    w.reply_value(&fetch.request_id, b"3".to_vec(), None).await;

    // Job does not fetch on miss; the call says yes.
    let pending = spawn_get(&c, "lazy", b"[4]", Some(true));
    let fetch = lazy.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Miss);
    lazy.reply_value(&fetch.request_id, b"4".to_vec(), None)
        .await;
    let r = join_get(pending)
        .await
        .expect("Get with fetch_on_miss=true");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"4");
    assert!(r.fetched);
}

#[tokio::test]
async fn fresh_hit_starts_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let s = set(&mut c, JOB, b"[5]", b"\"five\"".to_vec(), None).await;

    for _ in 0..3 {
        let r = get(&mut c, JOB, b"[5]").await;
        assert_eq!(r.state(), ItemState::Fresh);
        assert_eq!(r.data, b"\"five\"");
        assert!(!r.fetched);
        assert!(!r.refresh_scheduled);
        assert_same_instant(
            r.expires_at.as_ref().unwrap(),
            s.expires_at.as_ref().unwrap(),
            "expires_at",
        );
    }
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(w.fetch_count(), 1, "only the barrier was fetched");
}

#[tokio::test]
async fn stale_hit_serves_old_data_and_refreshes_once() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let s = set(&mut c, JOB, b"[6]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    let expires_at = s.expires_at.expect("SetResponse.expires_at");
    sleep_until_wall(wall(&expires_at) + Duration::from_millis(50)).await;

    let r = get(&mut c, JOB, b"[6]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert_eq!(r.data, b"\"old\"");
    assert!(r.refresh_scheduled, "a stale hit schedules a refresh");
    assert!(!r.fetched, "a stale hit does not wait");
    assert_same_instant(r.expires_at.as_ref().unwrap(), &expires_at, "expires_at");
    let old_stored_at = r.stored_at.unwrap();

    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[6]");
    assert_eq!(fetch.reason(), FetchReason::Stale);

    // More stale hits while it is in flight: same data, no second refresh.
    for _ in 0..5 {
        let r = get(&mut c, JOB, b"[6]").await;
        assert_eq!(r.state(), ItemState::Stale);
        assert_eq!(r.data, b"\"old\"");
        assert!(r.refresh_scheduled, "the refresh is in flight");
    }
    w.assert_no_fetch(&c, JOB).await;

    w.reply_value(&fetch.request_id, b"\"new\"".to_vec(), None)
        .await;
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[6]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(r.data, b"\"new\"");
    assert!(seconds_between(&old_stored_at, r.stored_at.as_ref().unwrap()) > 0.0);
    assert_span(
        seconds_between(
            r.stored_at.as_ref().unwrap(),
            r.expires_at.as_ref().unwrap(),
        ),
        300.0,
        "refreshed item takes the job lifetime",
    );
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[6]").count(), 1);
}

#[tokio::test]
async fn stale_item_older_than_threshold_since_stored_at_fetches_synchronously() {
    // A long backoff: after the failed refresh below, no asynchronous refresh starts again
    // within this test, so the next fetch can only be the synchronous one.
    let d = Daemon::builder()
        .args(["--retry-base", "30s"])
        .start()
        .await;
    let mut c = d.client();
    let cfg = JobConfig {
        fetch_on_stale_threshold: Some(dur(4.0)),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    let s = set(&mut c, JOB, b"[7]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    let expires_at = s.expires_at.expect("SetResponse.expires_at");
    let stored_at = get(&mut c, JOB, b"[7]").await.stored_at.unwrap();
    sleep_until_wall(wall(&expires_at) + Duration::from_millis(50)).await;

    // Stale, within the threshold: served, refreshed asynchronously; the refresh fails.
    let r = get(&mut c, JOB, b"[7]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert!(r.refresh_scheduled);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_error(&fetch.request_id, "refresh failed").await;

    // The failure is bookkeeping only: the original fetch time and expiry stay put.
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[7]").await;
            (!r.refresh_scheduled).then_some(r)
        }
    })
    .await;
    assert_eq!(r.state(), ItemState::Stale);
    assert_eq!(r.data, b"\"old\"");
    assert_same_instant(r.stored_at.as_ref().unwrap(), &stored_at, "stored_at");
    assert_same_instant(r.expires_at.as_ref().unwrap(), &expires_at, "expires_at");

    // Older than the threshold, counted from stored_at (though stale for only 3.2 s of
    // it): the Get fetches and waits.
    sleep_until_wall(wall(&stored_at) + Duration::from_millis(4200)).await;
    let pending = spawn_get(&c, JOB, b"[7]", None);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[7]");
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_value(&fetch.request_id, b"\"new\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("synchronous stale fetch");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"new\"");
    assert!(r.fetched);
}

#[tokio::test]
async fn stale_past_threshold_fetch_failure_still_serves_stale() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        fetch_on_stale_threshold: Some(dur(1.0)),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    let s = set(&mut c, JOB, b"[8]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    let expires_at = s.expires_at.expect("SetResponse.expires_at");
    sleep_until_wall(wall(&expires_at) + Duration::from_millis(1200)).await;

    // Twice: a failed synchronous fetch is never held back by backoff either.
    for round in 0..2 {
        let pending = spawn_get(&c, JOB, b"[8]", None);
        let fetch = w.next_fetch().await;
        assert_eq!(fetch.reason(), FetchReason::Stale, "round {round}");
        w.reply_error(&fetch.request_id, "upstream down").await;
        let r = join_get(pending).await.expect("stale beats an error");
        assert_eq!(r.state(), ItemState::Stale, "round {round}");
        assert_eq!(r.data, b"\"old\"");
        assert!(!r.fetched, "the fetch failed: fetched = false");
        assert_same_instant(r.expires_at.as_ref().unwrap(), &expires_at, "expires_at");
    }
}

#[tokio::test]
async fn joining_async_fetch_waits_when_sync() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, 30.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;

    let r = get(&mut c, JOB, b"[9]").await;
    assert_eq!(r.state(), ItemState::Miss);
    assert!(r.refresh_scheduled);
    let fetch = w.next_fetch().await;

    // A Get that would fetch synchronously joins the asynchronous fetch and waits for it.
    let mut pending = spawn_get(&c, JOB, b"[9]", Some(true));
    w.assert_no_fetch(&c, JOB).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pending)
            .await
            .is_err(),
        "the synchronous Get waits for the fetch in flight"
    );
    w.reply_value(&fetch.request_id, b"\"joined\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("joined Get");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"joined\"");
    assert!(r.fetched, "it waited for a fetch it joined");
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[9]").count(), 1);
}

/// `GetRequest.peek`: what is stored, and nothing started (PROTOCOL.md, "Reading").
async fn peek(c: &mut Client, args: &[u8]) -> cachebackd_proto::v1::GetResponse {
    c.get(cachebackd_proto::v1::GetRequest {
        job: JOB.into(),
        args: args.to_vec(),
        // Ignored by a peek: it never fetches.
        fetch_on_miss: Some(true),
        peek: true,
        ..Default::default()
    })
    .await
    .expect("peek")
    .into_inner()
}

#[tokio::test]
async fn peek_reads_what_is_stored_and_starts_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    // A miss: MISS at once, no fetch although fetch_on_miss is true.
    let r = peek(&mut c, b"[\"p\"]").await;
    assert_eq!(r.state(), ItemState::Miss);
    assert!(r.data.is_empty() && r.stored_at.is_none() && r.expires_at.is_none());
    assert!(!r.refresh_scheduled && !r.fetched);

    // Fresh: the data, as a plain Get would answer it.
    let s = set(&mut c, JOB, b"[\"p\"]", b"\"v\"".to_vec(), Some(dur(1.0))).await;
    let r = peek(&mut c, b"[\"p\"]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"v\"");
    assert_same_instant(
        r.expires_at.as_ref().unwrap(),
        s.expires_at.as_ref().unwrap(),
        "expires_at",
    );

    // Stale: the stale data, and no refresh scheduled.
    sleep_until_wall(wall(s.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;
    for _ in 0..3 {
        let r = peek(&mut c, b"[\"p\"]").await;
        assert_eq!(r.state(), ItemState::Stale);
        assert_eq!(r.data, b"\"v\"");
        assert!(!r.refresh_scheduled && !r.fetched);
    }
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(
        w.fetch_count(),
        1,
        "only assert_no_fetch's barrier was fetched"
    );

    // A plain Get still refreshes the stale item: the peeks changed nothing.
    let r = get(&mut c, JOB, b"[\"p\"]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert!(r.refresh_scheduled);
    assert_eq!(w.next_fetch().await.reason(), FetchReason::Stale);
}
