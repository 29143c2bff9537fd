//! Early refresh (PROTOCOL.md, "Additions: Early refresh"): XFetch on FRESH hits, with the
//! fetch duration kept with the item, and the checks on `early_refresh_beta`.

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, FetchReason, ItemState, JobConfig,
    ListJobsRequest,
};
use tonic::Code;

use crate::harness::*;
use crate::ops_support::channel;

const JOB: &str = "policy-early";

/// A beta so large that any fetch duration puts the refresh before the 300 s lifetime
/// (it fails to fire only for a draw within 1e-9 of 1).
const EAGER: f64 = 1e15;

#[tokio::test]
async fn early_refresh_starts_one_refresh_reason_early_on_a_fresh_hit() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        early_refresh_beta: Some(EAGER),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    assert_eq!(
        w.registered.config.as_ref().unwrap().early_refresh_beta,
        Some(EAGER)
    );

    // Stored by a fetch: its duration is kept with the item.
    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"v1\"".to_vec(), None)
        .await;
    let first = join_get(pending).await.unwrap();

    // A fresh hit: answered FRESH at once, and one refresh starts, reason EARLY.
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(
        (r.state(), r.data.as_slice()),
        (ItemState::Fresh, &b"\"v1\""[..])
    );
    assert!(r.refresh_scheduled && !r.fetched);
    let early = w.next_fetch().await;
    assert_eq!(
        (early.args.as_slice(), early.reason()),
        (&b"[1]"[..], FetchReason::Early)
    );
    // While it is in flight, more fresh hits join it: no second fetch.
    for _ in 0..5 {
        let r = get(&mut c, JOB, b"[1]").await;
        assert_eq!(r.state(), ItemState::Fresh);
        assert!(r.refresh_scheduled, "the early refresh is in flight");
    }
    assert!(w.try_next_fetch().is_none());
    w.reply_value(&early.request_id, b"\"v2\"".to_vec(), None)
        .await;
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[1]").await;
            (r.data == b"\"v2\"").then_some(r)
        }
    })
    .await;
    assert_eq!(r.state(), ItemState::Fresh, "never stale on the way");
    assert!(wall(r.stored_at.as_ref().unwrap()) > wall(first.stored_at.as_ref().unwrap()));
}

#[tokio::test]
async fn an_item_stored_by_set_is_never_refreshed_early() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        early_refresh_beta: Some(EAGER),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    set(&mut c, JOB, b"[2]", b"\"set\"".to_vec(), None).await;
    for _ in 0..10 {
        let r = get(&mut c, JOB, b"[2]").await;
        assert_eq!(r.state(), ItemState::Fresh);
        assert!(!r.refresh_scheduled, "no fetch duration: delta is 0");
    }
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(w.fetch_count(), 1, "only the barrier");
}

#[tokio::test]
async fn without_early_refresh_beta_a_fresh_hit_starts_nothing() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    assert_eq!(
        w.registered.config.as_ref().unwrap().early_refresh_beta,
        None
    );
    let pending = spawn_get(&c, JOB, b"[3]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"3".to_vec(), None).await;
    join_get(pending).await.unwrap();
    for _ in 0..10 {
        assert!(!get(&mut c, JOB, b"[3]").await.refresh_scheduled);
    }
    w.assert_no_fetch(&c, JOB).await;
}

#[tokio::test]
async fn early_refresh_beta_not_positive_or_not_finite_ends_the_stream_and_keeps_the_config() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let good = TestWorker::register(&d, JOB, job_config(42.0, 20.0)).await;
    for beta in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let cfg = JobConfig {
            early_refresh_beta: Some(beta),
            ..job_config(7.0, 20.0)
        };
        let mut raw = RawStream::open(&d.endpoint(), vec![register_msg(JOB, cfg, 1, "bad")]).await;
        let (end, seen) = raw.end().await;
        let status = end.expect_err("the stream ends with an error");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "beta {beta}: {status:?}"
        );
        assert!(
            status.message().contains("early_refresh_beta"),
            "{status:?}"
        );
        assert!(seen.is_empty(), "beta {beta}: no Registered: {seen:?}");
    }
    // The job keeps its config: a Set takes the good worker's lifetime.
    let s = set(&mut c, JOB, b"[4]", b"4".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        42.0,
        "kept lifetime",
    );
    assert!(!good.is_closed(), "the good worker's stream is untouched");
}

#[tokio::test]
async fn registered_config_fills_absent_lifetime_and_echoes_the_new_settings() {
    let d = Daemon::start().await;
    let w = TestWorker::register(&d, JOB, job_config(42.0, 20.0)).await;
    let cfg = w.registered.config.unwrap();
    assert_eq!(
        cfg.absent_lifetime,
        Some(dur(42.0)),
        "the job's lifetime when unset"
    );
    assert_eq!(
        (cfg.early_refresh_beta, cfg.error_ttl),
        (None, None),
        "off stays unset"
    );
    let set = JobConfig {
        early_refresh_beta: Some(1.5),
        absent_lifetime: Some(dur(5.0)),
        error_ttl: Some(dur(2.0)),
        ..job_config(42.0, 20.0)
    };
    let w = TestWorker::register(&d, "policy-early-2", set).await;
    let cfg = w.registered.config.unwrap();
    assert_eq!(cfg.early_refresh_beta, Some(1.5));
    assert_eq!(cfg.absent_lifetime, Some(dur(5.0)));
    assert_eq!(cfg.error_ttl, Some(dur(2.0)));
    // Durable: a restarted daemon still has them (ListJobs shows the stored config).
    drop(w);
    let mut d = d;
    d.restart().await;
    let mut admin = CachebackAdminClient::new(channel(&d).await);
    let jobs = admin
        .list_jobs(ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let job = jobs
        .iter()
        .find(|j| j.name == "policy-early-2")
        .expect("job kept");
    let cfg = job.config.unwrap();
    assert_eq!(cfg.early_refresh_beta, Some(1.5));
    assert_eq!(cfg.absent_lifetime, Some(dur(5.0)));
    assert_eq!(cfg.error_ttl, Some(dur(2.0)));
}

#[tokio::test]
async fn early_refreshes_absent_hits_and_not_modified_answers_are_counted() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--metrics-listen", &metrics])
        .start()
        .await;
    let mut c = d.client();
    let cfg = JobConfig {
        early_refresh_beta: Some(EAGER),
        ..job_config(300.0, 20.0)
    };
    let mut w = TestWorker::register(&d, JOB, cfg).await;
    let pending = spawn_get(&c, JOB, b"[5]", None);
    let fetch = w.next_fetch().await;
    assert!(
        w.send(crate::policy_support::absent_msg(
            &fetch.request_id,
            None,
            &[]
        ))
        .await
    );
    assert!(join_get(pending).await.unwrap().absent);
    // A fresh absent hit: counted, and refreshed early; the refresh answers NotModified.
    assert!(get(&mut c, JOB, b"[5]").await.absent);
    let early = w.next_fetch().await;
    assert_eq!(early.reason(), FetchReason::Early);
    assert!(
        w.send(crate::policy_support::not_modified_msg(
            &early.request_id,
            None
        ))
        .await
    );
    let sample = |name: &str| format!("cachebackd_{name}_total{{job=\"{JOB}\"}}");
    let m = eventually(WAIT, || {
        let metrics = metrics.clone();
        let name = sample("not_modified");
        async move {
            let m = crate::ops_support::scrape(&metrics).await;
            (m.get(&name) == 1.0).then_some(m)
        }
    })
    .await;
    assert_eq!(m.get(&sample("early_refreshes")), 1.0);
    assert_eq!(
        m.get(&sample("gets_absent")),
        2.0,
        "the fetched Get and the hit"
    );
}
