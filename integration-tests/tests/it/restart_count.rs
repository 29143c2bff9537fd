//! A start after a crash serves at once and counts the stored items in the background
//! (issue 14): ListJobs says `counting` until the count is done, and then its figures are
//! exact, writes made while it ran included.

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, get_result::Outcome, GetManyRequest, GetRequest,
    ItemState, JobInfo, ListJobsRequest, StatsRequest,
};

use crate::harness::*;
use crate::ops_support::channel;

const JOB: &str = "restart-count";
const N: usize = 4000;

fn data(i: usize, len: usize) -> Vec<u8> {
    format!("{i:06}").repeat(len / 6 + 1).into_bytes()[..len].to_vec()
}

fn args(i: usize) -> String {
    format!("[{i}]")
}

async fn set_all(d: &Daemon, items: impl Iterator<Item = (usize, usize)>) {
    let items: Vec<_> = items.collect();
    let client = d.client();
    for chunk in items.chunks(64) {
        let mut sets = tokio::task::JoinSet::new();
        for &(i, len) in chunk {
            let mut c = client.clone();
            sets.spawn(async move { set(&mut c, JOB, args(i), data(i, len), None).await });
        }
        sets.join_all().await;
    }
}

async fn job_info(d: &Daemon) -> JobInfo {
    let mut admin = CachebackAdminClient::new(channel(d).await);
    let jobs = admin
        .list_jobs(ListJobsRequest {})
        .await
        .expect("ListJobs")
        .into_inner()
        .jobs;
    jobs.into_iter()
        .find(|j| j.name == JOB)
        .expect("the job is listed")
}

#[tokio::test]
async fn after_sigkill_it_serves_at_once_and_its_counts_end_exact_with_the_writes_made_meanwhile() {
    let mut d = Daemon::start().await;
    let w = TestWorker::register(&d, JOB, job_config(3600.0, 30.0)).await;
    drop(w);
    set_all(&d, (0..N).map(|i| (i, 100 + i % 50))).await;
    // A clean stop puts everything on disk; the start after it drops the saved counts at
    // once, so the SIGKILL that follows leaves a store whose items must be counted again.
    d.stop().await;
    d.start_again().await;
    assert!(!d.kill().await.success());
    d.start_again().await;

    // Served at once, whether the count is done or not; and written meanwhile: grown
    // items, deleted items and new items, both ahead of the count and behind it.
    let mut c = d.client();
    let r = get_no_wait(&mut c, JOB, args(N - 1)).await;
    assert_eq!(
        (r.state(), r.data.clone()),
        (ItemState::Fresh, data(N - 1, 100 + (N - 1) % 50))
    );
    let grown = (0..N).step_by(37);
    let deleted: Vec<usize> = (5..N).step_by(41).filter(|i| i % 37 != 0).collect();
    let added = N..N + 150;
    set_all(&d, grown.clone().map(|i| (i, 400))).await;
    for &i in &deleted {
        assert!(delete(&mut c, JOB, args(i)).await.found, "item {i}");
    }
    set_all(&d, added.clone().map(|i| (i, 7))).await;

    let info = eventually(std::time::Duration::from_secs(120), || {
        let d = &d;
        async move {
            let info = job_info(d).await;
            (!info.counting).then_some(info)
        }
    })
    .await;
    let length = |i: usize| match i {
        i if i >= N => 7,
        i if i % 37 == 0 => 400,
        i => 100 + i % 50,
    };
    let kept: Vec<usize> = (0..N + 150).filter(|i| !deleted.contains(i)).collect();
    assert_eq!(info.items, kept.len() as u64);
    assert_eq!(
        info.bytes,
        kept.iter().map(|&i| length(i) as u64).sum::<u64>()
    );
    let mut admin = CachebackAdminClient::new(channel(&d).await);
    let stats = admin
        .stats(StatsRequest {})
        .await
        .expect("Stats")
        .into_inner();
    assert!(!stats.counting);
    assert_eq!(stats.items, kept.len() as u64);
    let log = d.stderr_log();
    assert!(log.contains("the store's items are counted"), "{log}");

    // Every item reads back as it was last written.
    for chunk in (0..N + 150).collect::<Vec<_>>().chunks(1000) {
        let requests = chunk
            .iter()
            .map(|&i| GetRequest {
                job: JOB.into(),
                args: args(i).into_bytes(),
                fetch_on_miss: Some(false),
                ..Default::default()
            })
            .collect();
        let results = c
            .get_many(GetManyRequest { requests })
            .await
            .expect("GetMany")
            .into_inner()
            .results;
        for (&i, result) in chunk.iter().zip(results) {
            let Some(Outcome::Response(r)) = result.outcome else {
                panic!("item {i}: {result:?}");
            };
            if deleted.contains(&i) {
                assert_eq!(r.state(), ItemState::Miss, "item {i}");
            } else {
                assert_eq!(
                    (r.state(), r.data),
                    (ItemState::Fresh, data(i, length(i))),
                    "item {i}"
                );
            }
        }
    }

    // A clean stop now saves the exact counts, and the next start takes them back.
    d.restart().await;
    let info = job_info(&d).await;
    assert!(!info.counting);
    assert_eq!(info.items, kept.len() as u64);
}
