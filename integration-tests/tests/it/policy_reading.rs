//! Reading with `max_age` (PROTOCOL.md, "Additions: Reading"): an item older than the
//! caller accepts is fetched synchronously, fresh or stale, and the old data answers if
//! that fetch fails; with the job's threshold, the smaller bound wins.

use std::time::Duration;

use cachebackd_proto::v1::{
    get_result, FetchReason, GetManyRequest, GetRequest, ItemState, JobConfig,
};
use tonic::Code;

use crate::harness::*;
use crate::policy_support::*;

const JOB: &str = "policy-reading";

#[tokio::test]
async fn max_age_fetches_an_older_fresh_item_synchronously_and_falls_back_to_it_on_failure() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    let s = set(&mut c, JOB, b"[1]", b"\"old\"".to_vec(), None).await;
    let stored_at = get(&mut c, JOB, b"[1]").await.stored_at.unwrap();
    sleep_until_wall(wall(&stored_at) + Duration::from_millis(600)).await;

    // Young enough for a loose bound: a plain fresh hit.
    let r = try_get_max_age(&mut c, JOB, b"[1]", 60.0).await.unwrap();
    assert_eq!(
        (r.state(), r.fetched, r.refresh_scheduled),
        (ItemState::Fresh, false, false)
    );

    // Older than 0.5 s, though fresh: fetched synchronously, reason STALE.
    let pending = {
        let mut c = c.clone();
        tokio::spawn(async move { try_get_max_age(&mut c, JOB, b"[1]", 0.5).await })
    };
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_error(&fetch.request_id, "origin down").await;
    let r = within("Get with max_age", pending).await.unwrap().unwrap();
    assert_eq!(
        r.state(),
        ItemState::Fresh,
        "the old data, in the state it is in"
    );
    assert_eq!(r.data, b"\"old\"");
    assert!(!r.fetched);
    assert_same_instant(
        r.expires_at.as_ref().unwrap(),
        s.expires_at.as_ref().unwrap(),
        "expires_at",
    );

    // Again (backoff never holds back a synchronous fetch), and this time it lands.
    let pending = {
        let mut c = c.clone();
        tokio::spawn(async move { try_get_max_age(&mut c, JOB, b"[1]", 0.5).await })
    };
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"new\"".to_vec(), None)
        .await;
    let r = within("Get with max_age", pending).await.unwrap().unwrap();
    assert_eq!(
        (r.state(), r.data.as_slice(), r.fetched),
        (ItemState::Fresh, &b"\"new\""[..], true)
    );
    w.assert_no_fetch(&c, JOB).await;
}

#[tokio::test]
async fn max_age_applies_to_each_get_many_item_and_peek_ignores_it() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    set(&mut c, JOB, b"[2]", b"\"two\"".to_vec(), None).await;
    let stored_at = get(&mut c, JOB, b"[2]").await.stored_at.unwrap();
    sleep_until_wall(wall(&stored_at) + Duration::from_millis(400)).await;

    let item = |max_age: f64, peek: bool| GetRequest {
        job: JOB.into(),
        args: b"[2]".to_vec(),
        max_age: Some(dur(max_age)),
        peek,
        ..Default::default()
    };
    // A peek with a tiny max_age reads what is stored and starts nothing.
    let r = peek_with_max_age(&mut c, item(0.1, true)).await;
    assert_eq!(
        (r.state(), r.data.as_slice(), r.fetched),
        (ItemState::Fresh, &b"\"two\""[..], false)
    );
    w.assert_no_fetch(&c, JOB).await;

    let pending = {
        let mut c = c.clone();
        let requests = vec![item(60.0, false), item(0.1, false)];
        tokio::spawn(async move { c.get_many(GetManyRequest { requests }).await })
    };
    let fetch = w.next_fetch().await;
    assert_eq!(
        (fetch.args.as_slice(), fetch.reason()),
        (&b"[2]"[..], FetchReason::Stale)
    );
    w.reply_value(&fetch.request_id, b"\"fetched\"".to_vec(), None)
        .await;
    let results = within("GetMany", pending)
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .results;
    let responses: Vec<_> = results
        .into_iter()
        .map(|r| match r.outcome {
            Some(get_result::Outcome::Response(r)) => r,
            other => panic!("item failed: {other:?}"),
        })
        .collect();
    assert_eq!(
        responses[0].data, b"\"two\"",
        "the loose bound: the stored data"
    );
    assert!(!responses[0].fetched);
    assert_eq!(
        responses[1].data, b"\"fetched\"",
        "the tight bound waited for a fetch"
    );
    assert!(responses[1].fetched);
}

async fn peek_with_max_age(c: &mut Client, req: GetRequest) -> cachebackd_proto::v1::GetResponse {
    c.get(req).await.expect("peek").into_inner()
}

#[tokio::test]
async fn max_age_and_the_threshold_the_smaller_bound_wins() {
    let d = Daemon::start().await;
    let mut c = d.client();
    // Stale at once; the job's threshold is 0.3 s of age.
    let cfg = JobConfig {
        fetch_on_stale_threshold: Some(dur(0.3)),
        ..job_config(0.1, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    set(&mut c, JOB, b"[3]", b"\"old\"".to_vec(), None).await;
    let stored_at = get_no_wait(&mut c, JOB, b"[3]").await.stored_at.unwrap();
    // A loose max_age does not lift the job's bound.
    sleep_until_wall(wall(&stored_at) + Duration::from_millis(400)).await;
    let pending = {
        let mut c = c.clone();
        tokio::spawn(async move { try_get_max_age(&mut c, JOB, b"[3]", 3600.0).await })
    };
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_value(&fetch.request_id, b"\"new\"".to_vec(), None)
        .await;
    let r = within("Get", pending).await.unwrap().unwrap();
    assert!(
        r.fetched,
        "past the threshold: fetched although max_age allowed it"
    );
}

#[tokio::test]
async fn a_negative_max_age_is_invalid_argument() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    let status = c
        .get(GetRequest {
            job: JOB.into(),
            args: b"[4]".to_vec(),
            max_age: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("max_age"), "{status:?}");
}
