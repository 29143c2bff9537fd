//! Negative caching (PROTOCOL.md, "Additions: Outcomes of a fetch"): a `FetchedAbsent` is
//! stored like data with its own lifetime and read back `absent`; `error_ttl` remembers a
//! failed fetch of a missing item.

use std::time::Duration;

use cachebackd_proto::v1::{FetchReason, ItemState, JobConfig};
use tonic::Code;

use crate::harness::*;
use crate::policy_support::*;

const JOB: &str = "policy-absent";

#[tokio::test]
async fn fetched_absent_is_stored_with_absent_lifetime_and_read_back_absent() {
    let mut d = Daemon::start().await;
    let c = d.client();
    let cfg = JobConfig {
        absent_lifetime: Some(dur(1.0)),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;

    let pending = spawn_get(&c, JOB, b"[\"nobody\"]", None);
    let fetch = w.next_fetch().await;
    assert!(
        w.send(absent_msg(&fetch.request_id, None, &["users"]))
            .await
    );
    let r = join_get(pending)
        .await
        .expect("an absence is a successful fetch");
    assert_eq!(
        (r.state(), r.absent, r.fetched),
        (ItemState::Fresh, true, true)
    );
    assert!(r.data.is_empty());
    assert_eq!(r.tags, vec!["users".to_string()]);
    let (stored_at, expires_at) = (r.stored_at.unwrap(), r.expires_at.unwrap());
    assert_span(
        seconds_between(&stored_at, &expires_at),
        1.0,
        "absent_lifetime",
    );

    // Read back as any item: FRESH, absent, no fetch; it survives a restart.
    drop(w);
    d.restart().await;
    let mut c2 = d.client();
    let r = get(&mut c2, JOB, b"[\"nobody\"]").await;
    assert_eq!(
        (r.state(), r.absent, r.fetched),
        (ItemState::Fresh, true, false)
    );
    let r = peek(&mut c2, JOB, b"[\"nobody\"]").await;
    assert!(r.absent);

    // Past its lifetime: STALE, still absent, and refreshed like any stale item.
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    sleep_until_wall(wall(&expires_at) + Duration::from_millis(50)).await;
    let r = get(&mut c2, JOB, b"[\"nobody\"]").await;
    assert_eq!(
        (r.state(), r.absent, r.refresh_scheduled),
        (ItemState::Stale, true, true)
    );
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_value(&fetch.request_id, b"\"found\"".to_vec(), None)
        .await;
    let r = eventually(WAIT, || {
        let mut c = c2.clone();
        async move {
            let r = get(&mut c, JOB, b"[\"nobody\"]").await;
            (!r.absent).then_some(r)
        }
    })
    .await;
    assert_eq!(
        (r.state(), r.data.as_slice()),
        (ItemState::Fresh, &b"\"found\""[..])
    );
    // Delete removes it as any item.
    assert!(delete(&mut c2, JOB, b"[\"nobody\"]").await.found);
}

#[tokio::test]
async fn fetched_absent_with_its_own_lifetime_overrides_absent_lifetime() {
    let d = Daemon::start().await;
    let c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    let pending = spawn_get(&c, JOB, b"[2]", None);
    let fetch = w.next_fetch().await;
    assert!(w.send(absent_msg(&fetch.request_id, Some(7.0), &[])).await);
    let r = join_get(pending).await.unwrap();
    assert!(r.absent && r.tags.is_empty());
    assert_span(
        seconds_between(
            r.stored_at.as_ref().unwrap(),
            r.expires_at.as_ref().unwrap(),
        ),
        7.0,
        "FetchedAbsent.lifetime",
    );
}

#[tokio::test]
async fn error_ttl_fails_a_missing_items_sync_get_at_once_until_a_set_or_delete() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        error_ttl: Some(dur(60.0)),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;

    let pending = spawn_get(&c, JOB, b"[3]", None);
    let fetch = w.next_fetch().await;
    w.reply_error(&fetch.request_id, "origin is down").await;
    let status = join_get(pending).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "origin is down")
    );

    // Within error_ttl: the same answer at once, and no fetch.
    for _ in 0..3 {
        let status = try_get(&mut c, JOB, b"[3]", None).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "origin is down")
        );
    }
    w.assert_no_fetch(&c, JOB).await;

    // A Set ends it.
    set(&mut c, JOB, b"[3]", b"\"set\"".to_vec(), None).await;
    assert_eq!(get(&mut c, JOB, b"[3]").await.data, b"\"set\"");
    // After a Delete the item is missing again, and fetched again.
    delete(&mut c, JOB, b"[3]").await;
    let pending = spawn_get(&c, JOB, b"[3]", None);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[3]");
    w.reply_error(&fetch.request_id, "still down").await;
    assert_eq!(join_get(pending).await.unwrap_err().message(), "still down");
    // A Delete ends the remembered error too.
    delete(&mut c, JOB, b"[3]").await;
    let pending = spawn_get(&c, JOB, b"[3]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"back\"".to_vec(), None)
        .await;
    assert_eq!(join_get(pending).await.unwrap().data, b"\"back\"");
}

#[tokio::test]
async fn error_ttl_runs_out_and_leaves_stale_items_served() {
    let d = Daemon::start().await;
    let c = d.client();
    let cfg = JobConfig {
        error_ttl: Some(dur(0.5)),
        fetch_on_stale_threshold: Some(dur(0.2)),
        ..job_config(0.1, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    let pending = spawn_get(&c, JOB, b"[4]", None);
    let fetch = w.next_fetch().await;
    w.reply_error(&fetch.request_id, "down").await;
    join_get(pending).await.unwrap_err();
    // Once error_ttl has run out, the next Get fetches again.
    let pending = tokio::spawn({
        let c = c.clone();
        eventually(WAIT, move || {
            let mut c = c.clone();
            async move {
                match try_get(&mut c, JOB, b"[4]", None).await {
                    Err(s) if s.message() == "down" => None,
                    other => Some(other),
                }
            }
        })
    });
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"ok\"".to_vec(), None)
        .await;
    let r = within("Get", pending).await.unwrap().unwrap();
    assert_eq!(r.data, b"\"ok\"");

    // A stale item whose synchronous refresh fails is served, and no error is remembered
    // for it: the next Get past the threshold fetches again.
    sleep_until_wall(wall(r.stored_at.as_ref().unwrap()) + Duration::from_millis(300)).await;
    for round in 0..2 {
        let pending = spawn_get(&c, JOB, b"[4]", None);
        let fetch = w.next_fetch().await;
        assert_eq!(fetch.reason(), FetchReason::Stale);
        w.reply_error(&fetch.request_id, "down again").await;
        let r = join_get(pending).await.expect("stale beats an error");
        assert_eq!(
            (r.state(), r.data.as_slice()),
            (ItemState::Stale, &b"\"ok\""[..]),
            "round {round}"
        );
    }
}
