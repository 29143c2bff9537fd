//! The admin service (`cacheback.v1.CachebackAdmin`) and `cachebackd ctl` over it and the
//! main service.

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, DeleteJobRequest, FetchReason,
    InvalidateJobRequest, ItemState, JobInfo, ListJobsRequest, StatsRequest,
};
use tonic::transport::Channel;

use crate::harness::*;
use crate::ops_support::*;

type Admin = CachebackAdminClient<Channel>;

async fn admin(d: &Daemon) -> Admin {
    CachebackAdminClient::new(channel(d).await)
}

async fn job_info(admin: &mut Admin, job: &str) -> Option<JobInfo> {
    let jobs = admin
        .list_jobs(ListJobsRequest {})
        .await
        .expect("ListJobs")
        .into_inner()
        .jobs;
    jobs.into_iter().find(|j| j.name == job)
}

#[tokio::test]
async fn list_jobs_and_stats_describe_the_daemon() {
    let d = Daemon::start().await;
    let mut admin = admin(&d).await;
    let w = TestWorker::register(&d, "ops-admin-list", job_config(120.0, 30.0)).await;
    let mut client = d.client();
    set(
        &mut client,
        "ops-admin-list",
        b"[1]",
        b"12345".to_vec(),
        None,
    )
    .await;
    set(&mut client, "ops-admin-list", b"[2]", b"678".to_vec(), None).await;
    get(&mut client, "ops-admin-list", b"[1]").await;

    // The worker joins the job's workers just after its Registered is sent.
    let info = eventually(WAIT, || {
        let mut admin = admin.clone();
        async move {
            let info = job_info(&mut admin, "ops-admin-list").await?;
            (info.workers == 1).then_some(info)
        }
    })
    .await;
    assert_eq!(info.config, w.registered.config);
    assert_eq!(info.items, 2);
    assert_eq!(info.bytes, 8);
    assert_eq!(info.invalidated_before, None);
    let counters = info.counters.expect("counters");
    assert_eq!(counters.gets_fresh, 1);
    assert_eq!(counters.gets_miss, 0);

    let stats = admin
        .stats(StatsRequest {})
        .await
        .expect("Stats")
        .into_inner();
    assert_eq!(stats.jobs, 1);
    assert_eq!(stats.workers, 1);
    assert_eq!(stats.items, 2);
    assert!(stats.store_bytes > 0);
    assert!(!stats.store_moved_aside);
    assert_eq!(stats.corrupt_records, 0);
    assert_eq!(stats.totals.expect("totals").gets_fresh, 1);
    assert!(!stats.version.is_empty());
}

#[tokio::test]
async fn invalidate_job_marks_every_item_stale_and_refreshes_lazily() {
    const JOB: &str = "ops-admin-invalidate";
    let mut d = Daemon::start().await;
    let mut admin = admin(&d).await;
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut client = d.client();
    for n in 1..=3 {
        set(&mut client, JOB, format!("[{n}]"), b"\"v1\"".to_vec(), None).await;
    }

    let mark = admin
        .invalidate_job(InvalidateJobRequest { job: JOB.into() })
        .await
        .expect("InvalidateJob")
        .into_inner()
        .invalidated_before
        .expect("the mark");
    // No stampede: nothing is fetched until an item is read.
    w.assert_no_fetch(&client, JOB).await;

    // Each item reads stale from the mark on, and refreshes on its own Get.
    let r = get(&mut client, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert!(r.refresh_scheduled);
    assert_eq!(r.data, b"\"v1\"");
    assert_eq!(r.expires_at.as_ref(), Some(&mark));
    let f = w.next_fetch().await;
    assert_eq!(f.args, b"[1]");
    assert_eq!(f.reason(), FetchReason::Stale);
    w.reply_value(&f.request_id, b"\"v2\"".to_vec(), None).await;
    let fresh = eventually(WAIT, || {
        let mut client = client.clone();
        async move {
            let r = get(&mut client, JOB, b"[1]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(fresh.data, b"\"v2\"");
    // An item written after the mark is fresh.
    set(&mut client, JOB, b"[4]", b"\"new\"".to_vec(), None).await;
    assert_eq!(
        get(&mut client, JOB, b"[4]").await.state(),
        ItemState::Fresh
    );

    let info = job_info(&mut admin, JOB).await.expect("listed");
    assert_eq!(info.invalidated_before.as_ref(), Some(&mark));

    // The mark survives a restart: item 2 was never refreshed, so it is still stale.
    drop(w);
    d.restart().await;
    let mut client = d.client();
    let r = get_no_wait(&mut client, JOB, b"[2]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert_eq!(r.data, b"\"v1\"");
    assert_eq!(
        get(&mut client, JOB, b"[1]").await.state(),
        ItemState::Fresh
    );

    // An unknown job is NOT_FOUND.
    let mut admin = self::admin(&d).await;
    let err = admin
        .invalidate_job(InvalidateJobRequest {
            job: "never-registered".into(),
        })
        .await
        .expect_err("unknown job");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = admin
        .invalidate_job(InvalidateJobRequest {
            job: "bad name!".into(),
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn delete_job_removes_config_and_items_but_not_while_workers_are_connected() {
    const JOB: &str = "ops-admin-delete";
    let mut d = Daemon::start().await;
    let mut admin = admin(&d).await;
    let w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut client = d.client();
    set(&mut client, JOB, b"[1]", b"1".to_vec(), None).await;
    set(&mut client, JOB, b"[2]", b"2".to_vec(), None).await;
    // The worker joins the job's workers just after its Registered is sent.
    eventually(WAIT, || {
        let mut admin = admin.clone();
        async move { (job_info(&mut admin, JOB).await?.workers == 1).then_some(()) }
    })
    .await;

    let err = admin
        .delete_job(DeleteJobRequest { job: JOB.into() })
        .await
        .expect_err("refused while a worker is connected");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(get(&mut client, JOB, b"[1]").await.data, b"1");

    drop(w);
    eventually(WAIT, || {
        let mut admin = admin.clone();
        async move { (job_info(&mut admin, JOB).await?.workers == 0).then_some(()) }
    })
    .await;
    let r = admin
        .delete_job(DeleteJobRequest { job: JOB.into() })
        .await
        .expect("DeleteJob")
        .into_inner();
    assert!(r.found);
    assert_eq!(r.items_removed, 2);
    let err = try_get(&mut client, JOB, b"[1]", None)
        .await
        .expect_err("the job is gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(job_info(&mut admin, JOB).await.is_none());
    let again = admin
        .delete_job(DeleteJobRequest { job: JOB.into() })
        .await
        .expect("DeleteJob")
        .into_inner();
    assert!(!again.found);

    // Gone for good; a new registration starts empty.
    d.restart().await;
    let mut client = d.client();
    let err = try_get(&mut client, JOB, b"[1]", Some(false))
        .await
        .expect_err("still gone");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    assert_eq!(
        get_no_wait(&mut client, JOB, b"[2]").await.state(),
        ItemState::Miss
    );
}

#[tokio::test]
async fn ctl_round_trips_through_the_daemon() {
    const JOB: &str = "ops-ctl";
    let socket_dir = tempfile::tempdir().expect("temp dir");
    let socket = socket_dir.path().join("c.sock");
    let d = Daemon::builder()
        .listen(format!("unix:{}", socket.display()))
        .start()
        .await;
    let addr = format!("127.0.0.1:{}", d.port());
    let worker = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .auto(|args| Ok(format!("{{\"for\":{}}}", String::from_utf8_lossy(args)).into_bytes()))
        .connect(&d.endpoint())
        .await;

    let set = ctl_json(&addr, &["set", JOB, "[\"a\"]", "{\"n\":1}"]).await;
    assert!(set["expires_at"].as_str().is_some(), "{set}");
    let got = ctl_json(&addr, &["get", JOB, "[\"a\"]"]).await;
    assert_eq!(got["state"], "FRESH");
    assert_eq!(got["data"], "{\"n\":1}");
    assert_eq!(got["fetched"], false);
    // ARGS are re-encoded as the clients encode them: spaces make no other item, and a
    // Get over gRPC with the canonical bytes finds what ctl stored.
    let spaced = ctl_json(&addr, &["get", JOB, "[ \"a\" ]"]).await;
    assert_eq!(
        (&spaced["state"], &spaced["data"]),
        (&got["state"], &got["data"])
    );
    let mut c = d.client();
    assert_eq!(get(&mut c, JOB, b"[\"a\"]").await.data, b"{\"n\":1}");
    let out = ctl(&addr, &["get", JOB, "a"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON array"));

    // A miss fetched through the worker.
    let got = ctl_json(&addr, &["get", JOB, "[\"b\"]"]).await;
    assert_eq!(got["state"], "FRESH");
    assert_eq!(got["fetched"], true);
    assert_eq!(got["data"], "{\"for\":[\"b\"]}");
    assert_eq!(worker.fetch_count(), 1);
    // --no-fetch answers MISS at once (and fills in the background).
    let got = ctl_json(&addr, &["get", "--no-fetch", JOB, "[\"c\"]"]).await;
    assert_eq!(got["state"], "MISS");
    assert_eq!(got["refresh_scheduled"], true);

    let inv = ctl_json(&addr, &["invalidate", JOB, "[\"a\"]"]).await;
    assert_eq!(inv["found"], true);
    let del = ctl_json(&addr, &["delete", JOB, "[\"a\"]"]).await;
    assert_eq!(del["found"], true);
    let del = ctl_json(&addr, &["delete", JOB, "[\"a\"]"]).await;
    assert_eq!(del["found"], false);

    let jobs = ctl_json(&addr, &["jobs"]).await;
    let job = jobs["jobs"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|j| j["name"] == JOB)
        .expect("the job is listed");
    assert_eq!(job["workers"], 1);
    assert_eq!(job["config"]["lifetime"], "5m");
    assert_eq!(job["counters"]["sync_fetches"], 1);

    let stats = ctl_json(&addr, &["stats"]).await;
    assert_eq!(stats["jobs"], 1);
    assert!(stats["uptime_seconds"].as_f64().is_some(), "{stats}");

    let marked = ctl_json(&addr, &["invalidate-job", JOB]).await;
    assert!(marked["invalidated_before"].as_str().is_some(), "{marked}");
    let health = ctl_json(&addr, &["health"]).await;
    assert_eq!(health["status"], "SERVING");

    // The same over the Unix socket, and in plain text.
    let unix = format!("unix:{}", socket.display());
    let out = ctl(&unix, &["jobs"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("JOB"), "{text}");
    assert!(text.lines().any(|l| l.starts_with(JOB)), "{text}");

    // Errors: a status on stderr and exit code 1.
    let out = ctl(&addr, &["get", "never-registered", "[]"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NotFound"), "{stderr}");
    let out = ctl(&addr, &["delete-job", JOB]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn item_counts_stay_exact_across_clean_and_abrupt_restarts() {
    const JOB: &str = "ops.counts";
    // Every acknowledged write is on disk, so SIGKILL loses none of them.
    let mut d = Daemon::builder()
        .args(["--durability", "always"])
        .start()
        .await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", vec![b'a'; 10], None).await;
    set(&mut c, JOB, b"[2]", vec![b'b'; 20], None).await;
    set(&mut c, JOB, b"[1]", vec![b'c'; 5], None).await; // overwrite
    delete(&mut c, JOB, b"[2]").await;
    set(&mut c, JOB, b"[3]", vec![b'd'; 7], None).await;
    let counts = |info: Option<JobInfo>| {
        let info = info.expect("the job is listed");
        (info.items, info.bytes)
    };
    assert_eq!(counts(job_info(&mut admin(&d).await, JOB).await), (2, 12));

    // A clean stop saves the counts; the next start takes them back.
    d.restart().await;
    assert_eq!(counts(job_info(&mut admin(&d).await, JOB).await), (2, 12));

    // An abrupt stop saves nothing; the next start counts the items on disk.
    let mut c = d.client();
    set(&mut c, JOB, b"[4]", vec![b'e'; 1], None).await;
    d.kill().await;
    d.start_again().await;
    assert_eq!(counts(job_info(&mut admin(&d).await, JOB).await), (3, 13));
}
