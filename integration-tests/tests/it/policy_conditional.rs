//! Conditional refresh (PROTOCOL.md, "Additions: Outcomes of a fetch"): validators stored
//! with items and sent back on refresh; `NotModified` extends the stored item.

use std::time::Duration;

use cachebackd_proto::v1::{FetchReason, ItemState};
use tonic::Code;

use crate::harness::*;
use crate::policy_support::*;

const JOB: &str = "policy-conditional";

#[tokio::test]
async fn refresh_sends_the_stored_validator_and_not_modified_extends_the_item() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;

    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    assert!(
        fetch.validator.is_empty(),
        "a miss has no validator to send"
    );
    assert!(
        w.send(value_with(
            &fetch.request_id,
            b"\"body\"",
            b"etag-1",
            &["t"]
        ))
        .await
    );
    let first = join_get(pending).await.unwrap();
    sleep_until_wall(wall(first.stored_at.as_ref().unwrap()) + Duration::from_millis(50)).await;

    // A refresh (here an Invalidate's) carries the stored validator.
    assert!(invalidate(&mut c, JOB, b"[1]").await.refresh_scheduled);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Invalidated);
    assert_eq!(fetch.validator, b"etag-1");
    assert!(
        w.send(not_modified_msg(&fetch.request_id, Some(100.0)))
            .await
    );

    // Data, validator and tags kept; stored_at is now, expires_at now + 100 s.
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[1]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(r.data, b"\"body\"");
    assert_eq!(r.tags, vec!["t".to_string()]);
    assert!(wall(r.stored_at.as_ref().unwrap()) > wall(first.stored_at.as_ref().unwrap()));
    assert_span(
        seconds_between(
            r.stored_at.as_ref().unwrap(),
            r.expires_at.as_ref().unwrap(),
        ),
        100.0,
        "NotModified.lifetime",
    );
    invalidate(&mut c, JOB, b"[1]").await;
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.validator, b"etag-1", "the validator was kept");
    // Without a lifetime, NotModified takes the job's.
    assert!(w.send(not_modified_msg(&fetch.request_id, None)).await);
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[1]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_span(
        seconds_between(
            r.stored_at.as_ref().unwrap(),
            r.expires_at.as_ref().unwrap(),
        ),
        300.0,
        "the job's lifetime",
    );
}

#[tokio::test]
async fn not_modified_with_nothing_stored_is_a_failed_fetch_and_the_stream_stays_open() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    let pending = spawn_get(&c, JOB, b"[2]", None);
    let fetch = w.next_fetch().await;
    assert!(w.send(not_modified_msg(&fetch.request_id, None)).await);
    let status = join_get(pending).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("not_modified but no stored data"),
        "{status:?}"
    );
    assert_eq!(
        peek(&mut c, JOB, b"[2]").await.state(),
        ItemState::Miss,
        "nothing stored"
    );
    assert!(!w.is_closed());
    w.assert_no_fetch(&c, JOB).await;
}

#[tokio::test]
async fn a_write_wins_over_a_not_modified_in_flight() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    set(&mut c, JOB, b"[3]", b"\"old\"".to_vec(), None).await;
    invalidate(&mut c, JOB, b"[3]").await;
    let fetch = w.next_fetch().await;
    // A Delete lands while the refresh is out: the NotModified finds nothing to extend.
    delete(&mut c, JOB, b"[3]").await;
    assert!(w.send(not_modified_msg(&fetch.request_id, None)).await);
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(peek(&mut c, JOB, b"[3]").await.state(), ItemState::Miss);
    // A Set lands while another is out: the Set's data and expiry stay.
    set(&mut c, JOB, b"[3]", b"\"a\"".to_vec(), Some(dur(50.0))).await;
    invalidate(&mut c, JOB, b"[3]").await;
    let fetch = w.next_fetch().await;
    let s3 = set(&mut c, JOB, b"[3]", b"\"b\"".to_vec(), Some(dur(60.0))).await;
    assert!(
        w.send(not_modified_msg(&fetch.request_id, Some(1000.0)))
            .await
    );
    w.assert_no_fetch(&c, JOB).await;
    let r = peek(&mut c, JOB, b"[3]").await;
    assert_eq!(r.data, b"\"b\"");
    assert_same_instant(
        r.expires_at.as_ref().unwrap(),
        s3.expires_at.as_ref().unwrap(),
        "Set's expiry",
    );
}

#[tokio::test]
async fn a_stale_get_and_the_refresh_after_an_invalidate_in_flight_send_the_validator_stored_then()
{
    let d = Daemon::start().await;
    let mut c = d.client();
    // Fresh for 1 s, so that the item goes stale by itself.
    let mut w = TestWorker::register(&d, JOB, job_config(1.0, 20.0)).await;

    let pending = spawn_get(&c, JOB, b"[2]", None);
    let fetch = w.next_fetch().await;
    assert!(
        w.send(value_with(&fetch.request_id, b"\"one\"", b"etag-1", &[]))
            .await
    );
    let first = join_get(pending).await.unwrap();
    sleep_until_wall(wall(first.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;

    // A stale Get's refresh carries the validator that Get read.
    let r = get(&mut c, JOB, b"[2]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert!(r.refresh_scheduled);
    let stale = w.next_fetch().await;
    assert_eq!(stale.reason(), FetchReason::Stale);
    assert_eq!(stale.validator, b"etag-1");

    // An Invalidate while it is in flight: its answer is stored (stale), and the refresh
    // that follows carries the validator of that answer, not of the item before it.
    assert!(invalidate(&mut c, JOB, b"[2]").await.refresh_scheduled);
    assert!(
        w.send(value_with(&stale.request_id, b"\"two\"", b"etag-2", &[]))
            .await
    );
    let follow_up = w.next_fetch().await;
    assert_eq!(follow_up.reason(), FetchReason::Invalidated);
    assert_eq!(follow_up.args, b"[2]");
    assert_eq!(follow_up.validator, b"etag-2");
    assert!(w.send(not_modified_msg(&follow_up.request_id, None)).await);
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[2]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(r.data, b"\"two\"");
    assert_eq!(w.fetches().len(), 3);
}
