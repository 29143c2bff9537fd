//! Bounds on what one call or one worker can make the daemon hold or say: GetMany reads
//! lazily against its budget, Register bounds its durations, an unreadable worker message
//! ends its stream with a status, a stuck worker's stream is ended, a queue timeout says
//! so, repeated warnings are rate-limited and client input clipped in the log, and ctl
//! reads a ListJobs of any size.

use std::time::Duration;

use cachebackd_proto::v1::{get_result::Outcome, GetManyRequest, GetRequest, ItemState};
use tonic::Code;

use crate::bounds_support::*;
use crate::harness::*;
use crate::ops_support::ctl_json;

const JOB: &str = "calls";
const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn get_many_reads_items_lazily_against_its_budget() {
    let d = Daemon::start().await;
    let _w = TestWorker::register(&d, JOB, job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    let big = vec![b'x'; 4 * MIB];
    set(&mut c, JOB, "[\"big\"]", big.clone(), None).await;
    let pid = d.pid().unwrap();
    let before = proc_kib(pid, "VmHWM");
    let requests = (0..1000)
        .map(|_| GetRequest {
            job: JOB.into(),
            args: b"[\"big\"]".to_vec(),
            ..Default::default()
        })
        .collect();
    let results = c
        .get_many(GetManyRequest { requests })
        .await
        .expect("GetMany")
        .into_inner()
        .results;
    let peak_growth_mib = (proc_kib(pid, "VmHWM") - before) / 1024;
    assert_eq!(results.len(), 1000);
    let mut answered = 0;
    for r in &results {
        match &r.outcome {
            Some(Outcome::Response(r)) => {
                assert_eq!(r.data, big);
                answered += 1;
            }
            Some(Outcome::Error(e)) => assert_eq!(e.code, Code::ResourceExhausted as i32),
            None => panic!("an empty result"),
        }
    }
    assert!(answered <= 1, "{answered} copies of 4 MiB in one response");
    // Reading all 1,000 copies before cutting the response took 4 GB; a generous bound.
    assert!(
        peak_growth_mib < 256,
        "peak RSS grew by {peak_growth_mib} MiB for one GetMany"
    );
    eprintln!("GetMany of 1,000 x 4 MiB: peak RSS grew by {peak_growth_mib} MiB");
}

#[tokio::test]
async fn register_bounds_refresh_timeout_and_keeps_cache_ttl_at_least_the_lifetime() {
    let d = Daemon::start().await;
    let mut long = job_config(300.0, 7200.0);
    let mut s = RawStream::open(&d.endpoint(), vec![register_msg(JOB, long, 1, "w")]).await;
    let (end, seen) = s.end().await;
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("refresh_timeout"), "{status:?}");
    assert!(seen.is_empty(), "no Registered: {seen:?}");
    long.refresh_timeout = Some(dur(30.0));
    long.cache_ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 1,
    });
    let mut s = RawStream::open(&d.endpoint(), vec![register_msg(JOB, long, 1, "w")]).await;
    let status = s.end().await.0.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("cache_ttl"), "{status:?}");
    // Neither registered the job.
    let mut c = d.client();
    let status = try_get(&mut c, JOB, b"[]", Some(false)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_worker_message_over_the_limit_ends_its_stream_with_invalid_argument() {
    let d = Daemon::start().await;
    let mut s = RawStream::open(
        &d.endpoint(),
        vec![register_msg(JOB, job_config(300.0, 1.0), 1, "w")],
    )
    .await;
    assert!(matches!(s.next().await, Ok(Some(_))), "Registered");
    let pending = spawn_get(&d.client(), JOB, "[1]", None);
    let fetch = match s.next().await {
        Ok(Some(m)) => match m.kind {
            Some(cachebackd_proto::v1::daemon_message::Kind::Fetch(f)) => f,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    s.send(value_msg(
        &fetch.request_id,
        vec![0u8; 4 * MIB + 200 * 1024],
        None,
    ))
    .await;
    let status = s.end().await.0.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("cannot be read"), "{status:?}");
    let answer = join_get(pending).await.unwrap_err();
    assert_eq!(answer.code(), Code::Unavailable, "{answer:?}");
    // The daemon serves on: another worker takes the job.
    let _w = TestWorker::builder(JOB)
        .config(job_config(300.0, 1.0))
        .auto(|_| Ok(b"ok".to_vec()))
        .connect(&d.endpoint())
        .await;
    assert_eq!(get(&mut d.client(), JOB, "[2]").await.data, b"ok");
}

#[tokio::test]
async fn a_set_over_the_message_limit_is_invalid_argument() {
    let d = Daemon::start().await;
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut c = d.client();
    let status = try_set(&mut c, JOB, "[1]", vec![0u8; 4 * MIB + 200 * 1024], None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("4194304 bytes"), "{status:?}");
}

#[tokio::test]
async fn a_fetch_that_runs_out_of_time_in_the_queue_says_so() {
    let d = Daemon::start().await;
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 0.5)).await;
    w.close();
    let _ = w.wait_closed().await;
    let c = d.client();
    let gets: Vec<_> = (0..40)
        .map(|i| spawn_get(&c, JOB, format!("[{i}]"), None))
        .collect();
    for g in gets {
        let status = join_get(g).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("was free within refresh_timeout"),
            "{status:?}"
        );
        assert!(!status.message().contains("shutting down"), "{status:?}");
        assert!(!status.message().contains("JobName("), "{status:?}");
    }
}

#[tokio::test]
async fn a_stuck_worker_has_its_stream_ended_and_an_honest_one_takes_the_work() {
    let d = Daemon::start().await;
    let config = job_config(300.0, 0.3);
    let mut stuck = TestWorker::builder(JOB)
        .config(config)
        .max_in_flight(2)
        .connect(&d.endpoint())
        .await;
    let mut c = d.client();
    for i in 0..2 {
        let r = get_no_wait(&mut c, JOB, format!("[{i}]")).await;
        assert!(r.refresh_scheduled);
        stuck.next_fetch().await;
    }
    let _honest = TestWorker::builder(JOB)
        .config(config)
        .auto(|args| Ok(args.to_vec()))
        .connect(&d.endpoint())
        .await;
    // Work goes to the honest worker meanwhile.
    for i in 10..20 {
        let args = format!("[{i}]");
        assert_eq!(get(&mut c, JOB, &args).await.data, args.as_bytes());
    }
    let status = stuck.wait_closed().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("answered nothing"), "{status:?}");
    assert_eq!(
        stuck.fetch_count(),
        2,
        "a stuck worker is given no more work"
    );
    // Its items are fetched again, by the honest worker.
    for i in 0..2 {
        let args = format!("[{i}]");
        assert_eq!(get(&mut c, JOB, &args).await.data, args.as_bytes());
    }
}

#[tokio::test]
async fn a_slow_worker_that_answers_late_keeps_its_stream() {
    let d = Daemon::start().await;
    let mut slow = TestWorker::builder(JOB)
        .config(job_config(300.0, 0.2))
        .max_in_flight(1)
        .connect(&d.endpoint())
        .await;
    let mut c = d.client();
    for i in 0..4 {
        get_no_wait(&mut c, JOB, format!("[{i}]")).await;
        let fetch = slow.next_fetch().await;
        // Past its deadline and a further refresh_timeout: late, but an answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.reply_value(&fetch.request_id, "late", None).await;
    }
    get_no_wait(&mut c, JOB, "[9]").await;
    let last = slow.next_fetch().await;
    slow.reply_value(&last.request_id, "on time", None).await;
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get_no_wait(&mut c, JOB, "[9]").await;
            (r.state == ItemState::Fresh as i32).then_some(r)
        }
    })
    .await;
    assert_eq!(r.data, b"on time");
    assert!(
        !slow.is_closed(),
        "a slow but answering worker keeps its stream"
    );
}

#[tokio::test]
async fn repeated_warnings_are_rate_limited_and_client_input_is_clipped() {
    let d = Daemon::start().await;
    let s = RawStream::open(
        &d.endpoint(),
        vec![register_msg(JOB, job_config(300.0, 30.0), 4, "w")],
    )
    .await;
    let mut s = s;
    assert!(matches!(s.next().await, Ok(Some(_))), "Registered");
    for _ in 0..2000 {
        s.send(value_msg(&uuid::Uuid::new_v4().to_string(), "x", None))
            .await;
    }
    for _ in 0..5 {
        s.send(value_msg(&"i".repeat(MIB), "x", None)).await;
    }
    // One real fetch answered on the same stream: every answer before it was read.
    let get = spawn_get(&d.client(), JOB, "[1]", None);
    let fetch = loop {
        match s.next().await {
            Ok(Some(m)) => {
                if let Some(cachebackd_proto::v1::daemon_message::Kind::Fetch(f)) = m.kind {
                    break f;
                }
            }
            other => panic!("{other:?}"),
        }
    };
    s.send(value_msg(&fetch.request_id, "real", None)).await;
    assert_eq!(join_get(get).await.unwrap().data, b"real");
    let log = d.stderr_log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("answer to no fetch in flight"))
        .count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings for 2,005 unknown answers"
    );
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 4096, "a log line of {longest} bytes");
}

#[tokio::test]
async fn ctl_reads_a_list_of_jobs_over_four_mebibytes() {
    const JOBS: usize = 25_000;
    let scratch = tempfile::tempdir().unwrap();
    {
        // The store as a daemon leaves it (format marker, job records), written directly:
        // registering 25,000 jobs one by one would take minutes.
        let db = sled::open(scratch.path().join("store")).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert("format", "cachebackd-store-1")
            .unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        let mut record = vec![1u8];
        let us = |s: u64| (s * 1_000_000).to_be_bytes();
        record.extend_from_slice(&us(300));
        record.extend_from_slice(&us(60));
        record.push(1);
        record.push(0);
        record.extend_from_slice(&[0; 8]);
        record.extend_from_slice(&us(30 * 86400));
        for i in 0..JOBS {
            let name = format!("{i:0>120}");
            jobs.insert(name.as_bytes(), record.clone()).unwrap();
        }
        db.flush().unwrap();
    }
    let d = Daemon::builder()
        .data_dir(scratch.path())
        .args(["--max-jobs", "30000"])
        .start()
        .await;
    let addr = format!("127.0.0.1:{}", d.port());
    let jobs = ctl_json(&addr, &["jobs"]).await;
    assert_eq!(jobs["jobs"].as_array().expect("a list").len(), JOBS);
}
