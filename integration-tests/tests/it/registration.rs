//! Registration: the echoed effective config, the latest config winning, and a job living
//! on without workers (PROTOCOL.md, "Registration").

use cachebackd_proto::v1::{ItemState, JobConfig};

use crate::harness::*;

const JOB: &str = "registration";

const THIRTY_DAYS: f64 = 30.0 * 24.0 * 3600.0;

#[tokio::test]
async fn registration_echoes_effective_config_with_defaults() {
    let d = Daemon::start().await;

    let w = TestWorker::builder(JOB)
        .config(JobConfig::default())
        .connect(&d.endpoint())
        .await;
    uuid::Uuid::parse_str(&w.registered.worker_id).expect("worker_id is a UUID");
    let cfg = w.registered.config.expect("Registered.config");
    assert_eq!(cfg.lifetime, Some(dur(300.0)));
    assert_eq!(cfg.refresh_timeout, Some(dur(60.0)));
    assert_eq!(cfg.fetch_on_miss, Some(true));
    assert_eq!(cfg.fetch_on_stale_threshold, None, "unset means never");
    assert_eq!(cfg.cache_ttl, Some(dur(THIRTY_DAYS)));

    let given = JobConfig {
        lifetime: Some(dur(10.0)),
        fetch_on_miss: Some(false),
        fetch_on_stale_threshold: Some(dur(5.0)),
        ..JobConfig::default()
    };
    let w2 = TestWorker::builder("other")
        .config(given)
        .connect(&d.endpoint())
        .await;
    let cfg = w2.registered.config.expect("Registered.config");
    assert_eq!(cfg.lifetime, Some(dur(10.0)));
    assert_eq!(cfg.refresh_timeout, Some(dur(60.0)));
    assert_eq!(cfg.fetch_on_miss, Some(false));
    assert_eq!(cfg.fetch_on_stale_threshold, Some(dur(5.0)));
    assert_eq!(cfg.cache_ttl, Some(dur(THIRTY_DAYS)));
    assert_ne!(w.registered.worker_id, w2.registered.worker_id);
}

#[tokio::test]
async fn latest_registration_config_wins() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let a = TestWorker::register(&d, JOB, job_config(100.0, 30.0)).await;
    assert_eq!(
        a.registered.config.as_ref().unwrap().lifetime,
        Some(dur(100.0))
    );
    let s = set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        100.0,
        "a's lifetime",
    );

    let b = TestWorker::register(&d, JOB, job_config(200.0, 30.0)).await;
    assert_eq!(
        b.registered.config.as_ref().unwrap().lifetime,
        Some(dur(200.0))
    );
    let s = set(&mut c, JOB, b"[2]", b"2".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        200.0,
        "b's lifetime",
    );

    let lazy = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(50.0, 30.0)
    };
    let _c3 = TestWorker::register(&d, JOB, lazy).await;
    let r = get(&mut c, JOB, b"[3]").await;
    assert_eq!(r.state(), ItemState::Miss, "fetch_on_miss = false now");
    let s = set(&mut c, JOB, b"[4]", b"4".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        50.0,
        "latest lifetime",
    );
    drop((a, b));
}

#[tokio::test]
async fn job_keeps_config_and_items_without_workers() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(100.0, 30.0)
    };
    let w = TestWorker::register(&d, JOB, cfg).await;
    set(&mut c, JOB, b"[1]", b"\"kept\"".to_vec(), None).await;
    w.close();
    drop(w);

    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"kept\"");
    let s = set(&mut c, JOB, b"[2]", b"2".to_vec(), None).await;
    assert_span(
        seconds_from_now(s.expires_at.as_ref().unwrap()),
        100.0,
        "config kept",
    );
    let r = get(&mut c, JOB, b"[3]").await;
    assert_eq!(
        r.state(),
        ItemState::Miss,
        "the job and its fetch_on_miss are kept"
    );
    assert!(invalidate(&mut c, JOB, b"[2]").await.found);
    let r = get(&mut c, JOB, b"[2]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert_eq!(r.data, b"2");
    assert!(delete(&mut c, JOB, b"[1]").await.found);
}
