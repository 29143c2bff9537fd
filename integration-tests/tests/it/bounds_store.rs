//! Bounds of the store (PROTOCOL.md "Bounds" and "Errors added"): `max_bytes` evicts the
//! least recently used items, `max_jobs` refuses new jobs, and a full disk refuses writes
//! with RESOURCE_EXHAUSTED, keeps reads, says NOT_SERVING, and recovers without a restart.

use std::io::Write;

use cachebackd_proto::v1::{get_result::Outcome, GetManyRequest, GetRequest, ItemState};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::bounds_support::*;
use crate::harness::*;
use crate::ops_support::{channel, health_check, scrape};

const JOB: &str = "bounds";

/// Which of `args` are stored (peeked: nothing is fetched, nothing counts as a use).
async fn stored(c: &mut Client, args: &[String]) -> Vec<bool> {
    let requests = args
        .iter()
        .map(|a| GetRequest {
            job: JOB.into(),
            args: a.clone().into_bytes(),
            peek: true,
            ..Default::default()
        })
        .collect();
    let results = c
        .get_many(GetManyRequest { requests })
        .await
        .expect("GetMany")
        .into_inner()
        .results;
    results
        .into_iter()
        .map(|r| match r.outcome {
            Some(Outcome::Response(r)) => r.state != ItemState::Miss as i32,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn max_bytes_evicts_the_least_recently_used_and_keeps_the_hot_set() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--max-bytes", "100KiB", "--metrics-listen", &metrics])
        .start()
        .await;
    let _w = TestWorker::register(&d, JOB, job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    let value = vec![b'v'; 1000];
    let hot: Vec<String> = (0..10).map(|i| format!("[\"hot\",{i}]")).collect();
    let cold: Vec<String> = (0..500).map(|i| format!("[\"cold\",{i}]")).collect();
    for h in &hot {
        set(&mut c, JOB, h, value.clone(), None).await;
    }
    for (i, k) in cold.iter().enumerate() {
        set(&mut c, JOB, k, value.clone(), None).await;
        if i % 20 == 0 {
            // Read: each Get is a use, so the hot items never reach the tail.
            for h in &hot {
                assert_eq!(get(&mut c, JOB, h).await.state, ItemState::Fresh as i32);
            }
        }
    }
    assert_eq!(
        stored(&mut c, &hot).await,
        vec![true; 10],
        "the hot set is kept"
    );
    let cold_kept = stored(&mut c, &cold).await;
    let kept = cold_kept.iter().filter(|k| **k).count();
    // 100 KiB holds about 99 items of 1,000 bytes with their keys and headers.
    assert!(kept + 10 <= 100, "{kept} cold items kept: over max_bytes");
    assert!(kept >= 50, "only {kept} cold items kept");
    assert!(cold_kept[499], "the newest item is kept");
    assert!(!cold_kept[0], "the oldest cold item is evicted");
    // The newest cold items are the ones kept: one unbroken run up to the last.
    let first_kept = cold_kept.iter().position(|k| *k).unwrap();
    assert!(cold_kept[first_kept..].iter().all(|k| *k), "{cold_kept:?}");
    // An evicted item reads as a miss.
    let evicted = get_no_wait(&mut c, JOB, &cold[0]).await;
    assert_eq!(evicted.state, ItemState::Miss as i32);
    let s = scrape(&metrics).await;
    let sample = format!("cachebackd_evictions_total{{job=\"{JOB}\"}}");
    assert_eq!(s.get(&sample), (500 - kept) as f64, "{sample}");
    assert_eq!(
        s.get(&format!("cachebackd_stored_items{{job=\"{JOB}\"}}")),
        (kept + 10) as f64
    );
}

#[tokio::test]
async fn max_jobs_refuses_a_new_job_and_keeps_registering_known_ones() {
    let mut d = Daemon::builder().args(["--max-jobs", "2"]).start().await;
    let config = job_config(300.0, 30.0);
    let a = TestWorker::register(&d, "a", config).await;
    let b = TestWorker::register(&d, "b", config).await;
    let refused = TestWorker::builder("c")
        .config(config)
        .try_connect(&d.endpoint())
        .await
        .err()
        .expect("a third job is refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_jobs"), "{refused:?}");
    // A known job registers again, beside its worker.
    let again = TestWorker::register(&d, "a", config).await;
    drop((a, b, again));
    // Nothing of the refused job was stored: after a restart it is still refused.
    d.restart().await;
    let mut c = d.client();
    let status = try_get(&mut c, "c", b"[]", Some(false)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let refused = TestWorker::builder("c")
        .config(config)
        .try_connect(&d.endpoint())
        .await
        .err()
        .expect("still refused after a restart");
    assert_eq!(refused.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_a_restart() {
    if !is_root() {
        eprintln!("skipped: a_full_disk_... mounts a tmpfs, which needs root");
        return;
    }
    let fs = Tmpfs::mount("160m");
    let d = Daemon::builder()
        .data_dir(fs.dir.join("data"))
        .start()
        .await;
    let pid = d.pid();
    let _w = TestWorker::register(&d, JOB, job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    set(&mut c, JOB, "[\"kept\"]", "before", None).await;

    // Fill the disk to 16 MiB free: under the 64 MiB the store keeps back.
    let filler = fs.dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 1 << 20];
    while free_bytes(&fs.dir) > 16 << 20 {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
    let refused = eventually(WAIT, || {
        let mut c = c.clone();
        async move { try_set(&mut c, JOB, "[\"new\"]", "x", None).await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().starts_with("store: "), "{refused:?}");
    assert!(
        !refused.message().contains("Os {"),
        "no debug text: {refused:?}"
    );
    // Reads go on, and health says the daemon cannot take writes.
    assert_eq!(get_no_wait(&mut c, JOB, "[\"kept\"]").await.data, b"before");
    eventually(WAIT, || {
        let d = &d;
        async move {
            (health_check(channel(d).await, "").await == ServingStatus::NotServing).then_some(())
        }
    })
    .await;

    // Space comes back: writes are taken again, no restart.
    drop(file);
    std::fs::remove_file(&filler).unwrap();
    eventually(WAIT, || {
        let mut c = c.clone();
        async move { try_set(&mut c, JOB, "[\"new\"]", "after", None).await.ok() }
    })
    .await;
    eventually(WAIT, || {
        let d = &d;
        async move {
            (health_check(channel(d).await, "").await == ServingStatus::Serving).then_some(())
        }
    })
    .await;
    assert_eq!(get_no_wait(&mut c, JOB, "[\"new\"]").await.data, b"after");
    assert_eq!(get_no_wait(&mut c, JOB, "[\"kept\"]").await.data, b"before");
    assert_eq!(d.pid(), pid, "the same process");
}
