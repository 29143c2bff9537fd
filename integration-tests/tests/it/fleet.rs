//! Fleet mode on a standalone Redis (PROTOCOL.md, "Fleet"): several daemons given the same
//! `--store redis://…` form one cache, and every rule holds across them as inside one —
//! one fetch per item at a time fleet-wide, writes win over fetches in flight on any daemon,
//! invalidations and near-cache events reach every daemon — and the store failing is a
//! clear UNAVAILABLE that heals by itself.
//!
//! The rules are written once, as functions of the store URL, so that `fleet_cluster`
//! runs the central ones against a Redis Cluster too. The tests of this module share one
//! Redis (each with its own job names); the outage tests have their own.

use std::{
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, DeleteJobRequest, FetchReason, FetchRequest,
    GetRequest, GetResponse, InvalidateJobRequest, ItemEventKind, ItemState, JobConfig,
    ListJobsRequest,
};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::fleet_support::*;
use crate::harness::*;
use crate::near_cache::{await_subscribed, item, Subscriber};
use crate::ops_support::channel;
use crate::policy_support::{peek, try_invalidate_tags, try_set_tagged};

/// The Redis the tests of this module share.
static REDIS: Shared<RedisServer> = Shared::new(RedisServer::standalone);

/// Gets per daemon in the storms (two daemons: 100 in all).
const PER_DAEMON: usize = 50;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A config whose misses wait for a synchronous fetch, with `refresh_timeout` seconds.
fn sync_config(refresh_timeout: f64) -> JobConfig {
    JobConfig {
        fetch_on_miss: Some(true),
        ..job_config(300.0, refresh_timeout)
    }
}

/// `Get` with `peek`, or the status.
async fn try_peek(c: &mut Client, job: &str, args: &[u8]) -> Result<GetResponse, Status> {
    c.get(GetRequest {
        job: job.into(),
        args: args.to_vec(),
        peek: true,
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Poll `peek` on `c` until the item is in `state` (cap [`WAIT`]); the response.
async fn await_state(c: &Client, job: &str, args: &[u8], state: ItemState) -> GetResponse {
    eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = peek(&mut c, job, args).await;
            (r.state() == state).then_some(r)
        }
    })
    .await
}

/// The first FetchRequest that reaches either worker (cap [`WAIT`]): (index of the worker,
/// the fetch).
async fn first_fetch(workers: &mut [&mut TestWorker]) -> (usize, FetchRequest) {
    eventually(WAIT, || {
        let found = workers
            .iter_mut()
            .enumerate()
            .find_map(|(i, w)| w.try_next_fetch().map(|f| (i, f)));
        async move { found }
    })
    .await
}

/// Fetches of `args` the workers received, in all.
fn fetches_of(workers: &[&TestWorker], args: &[u8]) -> usize {
    workers
        .iter()
        .map(|w| w.fetches().iter().filter(|f| f.args == args).count())
        .sum()
}

/// Wait until the daemon whose metrics listen at `metrics` has counted `n` Gets of `job`
/// finding `outcome`: the signal that those Gets have arrived and are waiting.
async fn await_gets(metrics: &str, job: &str, outcome: &str, n: usize) {
    eventually(WAIT, || async {
        (gets_counted(metrics, job, outcome).await == n as f64).then_some(())
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The rules, as functions of the store URL (shared with fleet_cluster)
// ---------------------------------------------------------------------------------------

/// Each rule as a function of the store URL (shared with `fleet_cluster`).
pub mod rules {
    use super::*;

    /// A job registered on A is known on B at once, with A's config.
    pub async fn job_registered_on_one_daemon_is_known_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-known");
        let mut cb = b.client();

        // Before anyone registers it, B does not know it (so the checks below can fail).
        let e = try_peek(&mut cb, &job, b"[1]")
            .await
            .expect_err("unknown job");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        let _w = TestWorker::register(&a, &job, job_config(123.0, 30.0)).await;
        assert_eq!(peek(&mut cb, &job, b"[1]").await.state(), ItemState::Miss);
        let s = set(&mut cb, &job, b"[1]", b"\"b\"".to_vec(), None).await;
        assert_span(
            seconds_from_now(s.expires_at.as_ref().expect("expires_at")),
            123.0,
            "a Set on B follows the lifetime registered on A",
        );
        let jobs = CachebackAdminClient::new(channel(&b).await)
            .list_jobs(ListJobsRequest {})
            .await
            .expect("ListJobs on B")
            .into_inner()
            .jobs;
        let info = jobs
            .iter()
            .find(|j| j.name == job)
            .unwrap_or_else(|| panic!("B lists {job}: {jobs:?}"));
        let config = info.config.as_ref().expect("config");
        assert_eq!(config.lifetime, Some(dur(123.0)));
        assert_eq!(config.refresh_timeout, Some(dur(30.0)));
    }

    /// A Set on A is a FRESH hit on B at once, and B fetches nothing for it.
    pub async fn set_on_one_daemon_is_a_fresh_hit_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-set");
        let _wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let mut wb = TestWorker::register(&b, &job, sync_config(30.0)).await;
        let (mut ca, cb) = (a.client(), b.client());

        let s = set(&mut ca, &job, b"[1]", b"\"from a\"".to_vec(), None).await;
        let r = get(&mut cb.clone(), &job, b"[1]").await;
        assert_eq!(r.state(), ItemState::Fresh);
        assert_eq!(r.data, b"\"from a\"");
        assert!(!r.fetched && !r.refresh_scheduled, "{r:?}");
        assert_same_instant(
            r.expires_at.as_ref().expect("expires_at"),
            s.expires_at.as_ref().expect("expires_at"),
            "B reads A's expiry",
        );
        wb.assert_no_fetch(&cb, &job).await;

        // A second Set on A replaces it on B too.
        set(&mut ca, &job, b"[1]", b"\"again\"".to_vec(), None).await;
        assert_eq!(get(&mut cb.clone(), &job, b"[1]").await.data, b"\"again\"");
    }

    /// A Delete on A is a MISS on B at once.
    pub async fn delete_on_one_daemon_is_a_miss_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-delete");
        let _w = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());

        set(&mut ca, &job, b"[1]", b"1".to_vec(), None).await;
        assert_eq!(peek(&mut cb, &job, b"[1]").await.state(), ItemState::Fresh);
        assert!(delete(&mut ca, &job, b"[1]").await.found);
        assert_eq!(peek(&mut cb, &job, b"[1]").await.state(), ItemState::Miss);
        assert!(!delete(&mut cb, &job, b"[1]").await.found, "gone for B too");
    }

    /// 100 concurrent Gets of one missing item, half on A and half on B, cause exactly one
    /// fetch (workers of the job on both daemons), and all of them answer with its data.
    pub async fn concurrent_gets_of_a_missing_item_across_daemons_cause_one_fetch(url: &str) {
        let (a, ma) = fleet_daemon(url).await;
        let (b, mb) = fleet_daemon(url).await;
        let job = unique_job("fleet-storm");
        let mut wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let mut wb = TestWorker::register(&b, &job, sync_config(30.0)).await;
        let (ca, cb) = (a.client(), b.client());

        let gets: Vec<_> = (0..PER_DAEMON)
            .flat_map(|_| {
                [
                    spawn_get(&ca, &job, b"[1]", None),
                    spawn_get(&cb, &job, b"[1]", None),
                ]
            })
            .collect();
        let (who, fetch) = first_fetch(&mut [&mut wa, &mut wb]).await;
        assert_eq!(fetch.args, b"[1]");
        assert_eq!(fetch.reason(), FetchReason::Miss);
        // Every Get has arrived and found the miss while the one fetch is held.
        await_gets(&ma, &job, "miss", PER_DAEMON).await;
        await_gets(&mb, &job, "miss", PER_DAEMON).await;
        wa.assert_no_fetch(&ca, &job).await;
        wb.assert_no_fetch(&cb, &job).await;

        let holder = if who == 0 { &wa } else { &wb };
        holder
            .reply_value(&fetch.request_id, b"\"once\"".to_vec(), None)
            .await;
        for g in gets {
            let r = join_get(g).await.expect("every Get answers");
            assert_eq!(r.data, b"\"once\"");
            assert_eq!(r.state(), ItemState::Fresh);
            assert!(r.fetched, "each Get waited for the one fetch: {r:?}");
        }
        assert_eq!(fetches_of(&[&wa, &wb], b"[1]"), 1);
    }

    /// Stale Gets on A and B at once start one refresh in all, and every daemon then reads
    /// its result.
    pub async fn stale_gets_across_daemons_cause_one_refresh(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-stale");
        let mut wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let mut wb = TestWorker::register(&b, &job, sync_config(30.0)).await;
        let (mut ca, cb) = (a.client(), b.client());

        let s = set(&mut ca, &job, b"[1]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
        // Time passing is the point: the item turns stale.
        sleep_until_wall(wall(s.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;
        let gets: Vec<_> = (0..PER_DAEMON / 2)
            .flat_map(|_| {
                [
                    spawn_get(&ca, &job, b"[1]", None),
                    spawn_get(&cb, &job, b"[1]", None),
                ]
            })
            .collect();
        for g in gets {
            let r = join_get(g).await.expect("a stale hit");
            assert_eq!(r.state(), ItemState::Stale);
            assert_eq!(r.data, b"\"old\"");
            assert!(r.refresh_scheduled, "{r:?}");
        }
        let (who, fetch) = first_fetch(&mut [&mut wa, &mut wb]).await;
        assert_eq!(fetch.reason(), FetchReason::Stale);
        wa.assert_no_fetch(&ca, &job).await;
        wb.assert_no_fetch(&cb, &job).await;

        let holder = if who == 0 { &wa } else { &wb };
        holder
            .reply_value(&fetch.request_id, b"\"new\"".to_vec(), None)
            .await;
        for c in [&ca, &cb] {
            let r = await_state(c, &job, b"[1]", ItemState::Fresh).await;
            assert_eq!(r.data, b"\"new\"");
        }
        assert_eq!(fetches_of(&[&wa, &wb], b"[1]"), 1);
    }

    /// A Set on B while A's fetch of the item is in flight wins on both daemons: the fetch's
    /// result answers A's waiting Get but is not stored.
    pub async fn set_on_another_daemon_during_a_fetch_wins_on_every_daemon(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-setwins");
        let mut wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let mut wb = TestWorker::register(&b, &job, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());

        let pending = spawn_get(&ca, &job, b"[1]", None);
        // The worker holds its answer until the Set on B is done.
        let fetch = wa.next_fetch().await;
        set(&mut cb, &job, b"[1]", b"\"set\"".to_vec(), None).await;
        wa.reply_value(&fetch.request_id, b"\"fetched\"".to_vec(), None)
            .await;
        let r = join_get(pending).await.expect("waiting Get");
        assert_eq!(
            r.data, b"\"fetched\"",
            "the fetch answers those waiting on it"
        );
        for c in [&mut ca, &mut cb] {
            let r = peek(c, &job, b"[1]").await;
            assert_eq!(r.state(), ItemState::Fresh);
            assert_eq!(r.data, b"\"set\"", "the late fetch is not stored");
        }
        wa.assert_no_fetch(&ca, &job).await;
        wb.assert_no_fetch(&cb, &job).await;
    }

    /// A Delete on B while A's fetch of the item is in flight wins on both daemons: the late
    /// result does not bring the item back.
    pub async fn delete_on_another_daemon_during_a_fetch_wins_on_every_daemon(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-delwins");
        let mut wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let _wb = TestWorker::register(&b, &job, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());

        // An old value, so that the Delete has something to delete.
        set(&mut ca, &job, b"[1]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
        let pending = spawn_get(
            &ca, &job, b"[2]", // a miss: fetched synchronously
            None,
        );
        let fetch = wa.next_fetch().await;
        assert_eq!(fetch.args, b"[2]");
        delete(&mut cb, &job, b"[2]").await;
        wa.reply_value(&fetch.request_id, b"\"fetched\"".to_vec(), None)
            .await;
        let r = join_get(pending).await.expect("waiting Get");
        assert_eq!(r.data, b"\"fetched\"");
        for c in [&mut ca, &mut cb] {
            assert_eq!(
                peek(c, &job, b"[2]").await.state(),
                ItemState::Miss,
                "the late fetch does not resurrect a deleted item"
            );
        }
        wa.assert_no_fetch(&ca, &job).await;
    }

    /// An Invalidate on A makes the item STALE on B at once (the data still served); another
    /// item stays FRESH.
    pub async fn invalidate_on_one_daemon_is_stale_on_every_other_at_once(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-inval");
        let _wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());

        set(&mut ca, &job, b"[1]", b"1".to_vec(), None).await;
        set(&mut ca, &job, b"[2]", b"2".to_vec(), None).await;
        assert_eq!(peek(&mut cb, &job, b"[1]").await.state(), ItemState::Fresh);
        assert!(invalidate(&mut ca, &job, b"[1]").await.found);
        let r = peek(&mut cb, &job, b"[1]").await;
        assert_eq!(r.state(), ItemState::Stale);
        assert_eq!(r.data, b"1");
        assert_eq!(peek(&mut cb, &job, b"[2]").await.state(), ItemState::Fresh);
    }

    /// An InvalidateJob on A is seen on B: every item of the job turns STALE there; another
    /// job's item stays FRESH.
    pub async fn invalidate_job_on_one_daemon_is_seen_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-invjob");
        let other = unique_job("fleet-invjob-other");
        let _w = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let _o = TestWorker::register(&a, &other, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());
        for args in [&b"[1]"[..], b"[2]"] {
            set(&mut ca, &job, args, b"1".to_vec(), None).await;
        }
        set(&mut ca, &other, b"[1]", b"1".to_vec(), None).await;
        // B has read them as FRESH (whatever it keeps of them must now be told).
        for args in [&b"[1]"[..], b"[2]"] {
            assert_eq!(peek(&mut cb, &job, args).await.state(), ItemState::Fresh);
        }

        CachebackAdminClient::new(channel(&a).await)
            .invalidate_job(InvalidateJobRequest { job: job.clone() })
            .await
            .expect("InvalidateJob on A");
        for args in [&b"[1]"[..], b"[2]"] {
            let r = await_state(&cb, &job, args, ItemState::Stale).await;
            assert_eq!(r.data, b"1");
        }
        assert_eq!(
            peek(&mut cb, &other, b"[1]").await.state(),
            ItemState::Fresh
        );
    }

    /// An InvalidateTags on A is seen on B: tagged items of every job turn STALE there; an
    /// item with another tag stays FRESH.
    pub async fn invalidate_tags_on_one_daemon_is_seen_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let (j1, j2) = (unique_job("fleet-tags"), unique_job("fleet-tags"));
        let tag = unique_job("user");
        let other_tag = unique_job("user");
        let _w1 = TestWorker::register(&a, &j1, sync_config(30.0)).await;
        let _w2 = TestWorker::register(&a, &j2, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());
        try_set_tagged(&mut ca, &j1, b"[1]", b"1", &[&tag])
            .await
            .expect("tagged Set");
        try_set_tagged(&mut ca, &j2, b"[1]", b"2", &[&tag])
            .await
            .expect("tagged Set");
        try_set_tagged(&mut ca, &j1, b"[2]", b"3", &[&other_tag])
            .await
            .expect("tagged Set");
        for (job, args) in [(&j1, &b"[1]"[..]), (&j2, b"[1]"), (&j1, b"[2]")] {
            assert_eq!(peek(&mut cb, job, args).await.state(), ItemState::Fresh);
        }

        try_invalidate_tags(&mut ca, &[&tag])
            .await
            .expect("InvalidateTags on A");
        assert_eq!(
            await_state(&cb, &j1, b"[1]", ItemState::Stale).await.data,
            b"1"
        );
        assert_eq!(
            await_state(&cb, &j2, b"[1]", ItemState::Stale).await.data,
            b"2"
        );
        assert_eq!(peek(&mut cb, &j1, b"[2]").await.state(), ItemState::Fresh);
    }

    /// An Invalidate on B while A's refresh of the item is in flight: that refresh may have
    /// read the old data, so exactly one more refresh (reason INVALIDATED) follows it, and
    /// every daemon ends up reading the last one's data.
    pub async fn invalidate_on_another_daemon_during_a_fetch_triggers_one_more_refresh(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-reinval");
        let mut wa = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let mut wb = TestWorker::register(&b, &job, sync_config(30.0)).await;
        let (mut ca, mut cb) = (a.client(), b.client());

        set(&mut ca, &job, b"[1]", b"\"v1\"".to_vec(), None).await;
        let inv = invalidate(&mut ca, &job, b"[1]").await;
        assert!(inv.found && inv.refresh_scheduled);
        let first = wa.next_fetch().await;
        assert_eq!(first.reason(), FetchReason::Invalidated);
        for _ in 0..3 {
            assert!(invalidate(&mut cb, &job, b"[1]").await.found);
        }
        wa.assert_no_fetch(&ca, &job).await;
        wb.assert_no_fetch(&cb, &job).await;

        wa.reply_value(&first.request_id, b"\"v2\"".to_vec(), None)
            .await;
        let (who, second) = first_fetch(&mut [&mut wa, &mut wb]).await;
        assert_eq!(second.args, b"[1]");
        assert_eq!(second.reason(), FetchReason::Invalidated);
        let holder = if who == 0 { &wa } else { &wb };
        holder
            .reply_value(&second.request_id, b"\"v3\"".to_vec(), None)
            .await;
        for c in [&ca, &cb] {
            assert_eq!(
                await_state(c, &job, b"[1]", ItemState::Fresh).await.data,
                b"\"v3\""
            );
        }
        wa.assert_no_fetch(&ca, &job).await;
        wb.assert_no_fetch(&cb, &job).await;
        assert_eq!(fetches_of(&[&wa, &wb], b"[1]"), 2);
    }

    /// A failed fetch of a missing item on A is remembered for error_ttl on B too: B's
    /// synchronous Get answers the same UNAVAILABLE at once and fetches nothing; a Set on B
    /// ends it.
    pub async fn error_ttl_of_a_fetch_failed_on_one_daemon_holds_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-errttl");
        let config = JobConfig {
            error_ttl: Some(dur(60.0)),
            ..sync_config(20.0)
        };
        let mut wa = TestWorker::register(&a, &job, config).await;
        let mut wb = TestWorker::register(&b, &job, config).await;
        let (ca, mut cb) = (a.client(), b.client());

        let pending = spawn_get(&ca, &job, b"[1]", None);
        let fetch = wa.next_fetch().await;
        wa.reply_error(&fetch.request_id, "origin is down").await;
        let status = join_get(pending).await.expect_err("the fetch failed");
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "origin is down")
        );
        for _ in 0..3 {
            let status = try_get(&mut cb, &job, b"[1]", None)
                .await
                .expect_err("remembered on B");
            assert_eq!(
                (status.code(), status.message()),
                (Code::Unavailable, "origin is down")
            );
        }
        wb.assert_no_fetch(&cb, &job).await;
        wa.assert_no_fetch(&ca, &job).await;

        set(&mut cb, &job, b"[1]", b"\"set\"".to_vec(), None).await;
        assert_eq!(get(&mut ca.clone(), &job, b"[1]").await.data, b"\"set\"");
        assert_eq!(fetches_of(&[&wa, &wb], b"[1]"), 1);
    }

    /// A DeleteJob on A is seen on B at once: the job is unknown there and its items are
    /// gone, until a worker registers it again.
    pub async fn delete_job_on_one_daemon_is_seen_on_every_other(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, _) = fleet_daemon(url).await;
        let job = unique_job("fleet-deljob");
        {
            let _w = TestWorker::register(&a, &job, sync_config(30.0)).await;
            let mut ca = a.client();
            set(&mut ca, &job, b"[1]", b"1".to_vec(), None).await;
        }
        let mut cb = b.client();
        assert_eq!(peek(&mut cb, &job, b"[1]").await.state(), ItemState::Fresh);
        let deleted = CachebackAdminClient::new(channel(&a).await)
            .delete_job(DeleteJobRequest { job: job.clone() })
            .await
            .expect("DeleteJob on A")
            .into_inner();
        assert!(deleted.found, "{deleted:?}");
        // DeleteJob reaches the other daemons with its event (PROTOCOL.md names Invalidate,
        // InvalidateJob, InvalidateTags and Delete as seen at once, not DeleteJob): poll.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let e = loop {
            match try_peek(&mut cb, &job, b"[1]").await {
                Err(e) => break e,
                Ok(r) => {
                    assert_eq!(r.state(), ItemState::Fresh, "before the event: as it was");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "B never heard of the DeleteJob"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(e.code(), Code::NotFound, "{e:?}");

        let _w = TestWorker::register(&b, &job, sync_config(30.0)).await;
        assert_eq!(
            peek(&mut cb, &job, b"[1]").await.state(),
            ItemState::Miss,
            "the old items do not come back with the job"
        );
    }

    /// A daemon SIGKILLed while it holds an item's lease (its worker never answers) delays the
    /// item by no more than the job's refresh_timeout: B's Get, waiting on that lease while
    /// A lived, is then fetched through B's own worker.
    pub async fn lease_of_a_killed_daemon_blocks_the_item_no_longer_than_refresh_timeout(
        url: &str,
    ) {
        const REFRESH_TIMEOUT: f64 = 3.0;
        let (mut a, _) = fleet_daemon(url).await;
        let (b, mb) = fleet_daemon(url).await;
        let job = unique_job("fleet-killed");
        let mut wa = TestWorker::register(&a, &job, sync_config(REFRESH_TIMEOUT)).await;
        let mut wb = TestWorker::register(&b, &job, sync_config(REFRESH_TIMEOUT)).await;
        let cb = b.client();

        let _on_a = spawn_get(&a.client(), &job, b"[1]", None);
        let held = wa.next_fetch().await;
        let lease_end = wall(held.deadline.as_ref().expect("deadline"));
        // B's Get arrives and joins A's lease: B sends its worker nothing for the item.
        let pending = spawn_get(&cb, &job, b"[1]", None);
        await_gets(&mb, &job, "miss", 1).await;
        wb.assert_no_fetch(&cb, &job).await;
        a.kill().await;

        let fetch = wb.next_fetch().await;
        let arrived = SystemTime::now();
        assert_eq!(fetch.args, b"[1]");
        // The rule's bound, with one more refresh_timeout of slack for a loaded machine.
        assert!(
            arrived <= lease_end + Duration::from_secs_f64(REFRESH_TIMEOUT),
            "B fetched {:?} after the dead daemon's lease ended",
            arrived.duration_since(lease_end)
        );
        wb.reply_value(&fetch.request_id, b"\"b\"".to_vec(), None)
            .await;
        let r = join_get(pending).await.expect("B's Get");
        assert_eq!(r.state(), ItemState::Fresh);
        assert_eq!(r.data, b"\"b\"");
        assert_eq!(fetches_of(&[&wb], b"[1]"), 1);
    }

    /// A daemon with no worker of the job never takes the lease: its Gets wait for the result
    /// of another daemon's fetch. (With a refresh_timeout longer than the test's cap, a lease
    /// wrongly taken by B would leave A's worker without a fetch until the cap.)
    pub async fn daemon_without_a_worker_never_takes_the_lease(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, mb) = fleet_daemon(url).await;
        let job = unique_job("fleet-noworker");
        let config = sync_config(WAIT.as_secs_f64() * 2.0);
        let mut wa = TestWorker::register(&a, &job, config).await;
        let (ca, mut cb) = (a.client(), b.client());

        // An asynchronous miss and a waiting one on B first.
        assert_eq!(
            get_no_wait(&mut cb, &job, b"[1]").await.state(),
            ItemState::Miss
        );
        let on_b = spawn_get(&cb, &job, b"[1]", None);
        await_gets(&mb, &job, "miss", 2).await;

        let on_a = spawn_get(&ca, &job, b"[1]", None);
        let fetch = wa.next_fetch().await;
        assert_eq!(fetch.args, b"[1]");
        wa.reply_value(&fetch.request_id, b"\"a\"".to_vec(), None)
            .await;
        for g in [on_a, on_b] {
            let r = join_get(g).await.expect("Get");
            assert_eq!(r.data, b"\"a\"");
            assert_eq!(r.state(), ItemState::Fresh);
        }
        wa.assert_no_fetch(&ca, &job).await;
        assert_eq!(fetches_of(&[&wa], b"[1]"), 1);
    }

    /// A Subscribe on B hears the changes made on A, in order: CHANGED for a Set, INVALIDATED
    /// for an Invalidate, REMOVED for a Delete.
    pub async fn subscribe_on_one_daemon_hears_writes_made_on_another(url: &str) {
        let (a, _) = fleet_daemon(url).await;
        let (b, mb) = fleet_daemon(url).await;
        let job = unique_job("fleet-near");
        let _w = TestWorker::register(&a, &job, sync_config(30.0)).await;
        let mut ca = a.client();

        let mut s = Subscriber::open(&b).await;
        s.add(vec![item(&job, b"[1]")]).await;
        await_subscribed(&mb, 1.0).await;

        set(&mut ca, &job, b"[1]", b"1".to_vec(), None).await;
        assert!(invalidate(&mut ca, &job, b"[1]").await.found);
        assert!(delete(&mut ca, &job, b"[1]").await.found);
        let mut kinds = Vec::new();
        // The Invalidate schedules a refresh (its worker never answers): three events.
        for _ in 0..3 {
            let e = s
                .next()
                .await
                .expect("the stream is open")
                .expect("an event");
            let it = e.item.as_ref().expect("an item");
            assert_eq!(
                (it.job.as_str(), it.args.as_slice()),
                (job.as_str(), &b"[1]"[..])
            );
            assert!(e.at.is_some());
            kinds.push(e.kind());
        }
        assert_eq!(
            kinds,
            [
                ItemEventKind::Changed,
                ItemEventKind::Invalidated,
                ItemEventKind::Removed
            ]
        );
    }
}

// ---------------------------------------------------------------------------------------
// The tests on the shared standalone Redis
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn job_registered_on_one_daemon_is_known_on_every_other() {
    let r = REDIS.get();
    rules::job_registered_on_one_daemon_is_known_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn set_on_one_daemon_is_a_fresh_hit_on_every_other() {
    let r = REDIS.get();
    rules::set_on_one_daemon_is_a_fresh_hit_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn delete_on_one_daemon_is_a_miss_on_every_other() {
    let r = REDIS.get();
    rules::delete_on_one_daemon_is_a_miss_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn concurrent_gets_of_a_missing_item_across_daemons_cause_one_fetch() {
    let r = REDIS.get();
    rules::concurrent_gets_of_a_missing_item_across_daemons_cause_one_fetch(&r.url()).await;
}

#[tokio::test]
async fn stale_gets_across_daemons_cause_one_refresh() {
    let r = REDIS.get();
    rules::stale_gets_across_daemons_cause_one_refresh(&r.url()).await;
}

#[tokio::test]
async fn set_on_another_daemon_during_a_fetch_wins_on_every_daemon() {
    let r = REDIS.get();
    rules::set_on_another_daemon_during_a_fetch_wins_on_every_daemon(&r.url()).await;
}

#[tokio::test]
async fn delete_on_another_daemon_during_a_fetch_wins_on_every_daemon() {
    let r = REDIS.get();
    rules::delete_on_another_daemon_during_a_fetch_wins_on_every_daemon(&r.url()).await;
}

#[tokio::test]
async fn invalidate_on_one_daemon_is_stale_on_every_other_at_once() {
    let r = REDIS.get();
    rules::invalidate_on_one_daemon_is_stale_on_every_other_at_once(&r.url()).await;
}

#[tokio::test]
async fn invalidate_job_on_one_daemon_is_seen_on_every_other() {
    let r = REDIS.get();
    rules::invalidate_job_on_one_daemon_is_seen_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn invalidate_tags_on_one_daemon_is_seen_on_every_other() {
    let r = REDIS.get();
    rules::invalidate_tags_on_one_daemon_is_seen_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn invalidate_on_another_daemon_during_a_fetch_triggers_one_more_refresh() {
    let r = REDIS.get();
    rules::invalidate_on_another_daemon_during_a_fetch_triggers_one_more_refresh(&r.url()).await;
}

#[tokio::test]
async fn error_ttl_of_a_fetch_failed_on_one_daemon_holds_on_every_other() {
    let r = REDIS.get();
    rules::error_ttl_of_a_fetch_failed_on_one_daemon_holds_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn delete_job_on_one_daemon_is_seen_on_every_other() {
    let r = REDIS.get();
    rules::delete_job_on_one_daemon_is_seen_on_every_other(&r.url()).await;
}

#[tokio::test]
async fn lease_of_a_killed_daemon_blocks_the_item_no_longer_than_refresh_timeout() {
    let r = REDIS.get();
    rules::lease_of_a_killed_daemon_blocks_the_item_no_longer_than_refresh_timeout(&r.url()).await;
}

#[tokio::test]
async fn daemon_without_a_worker_never_takes_the_lease() {
    let r = REDIS.get();
    rules::daemon_without_a_worker_never_takes_the_lease(&r.url()).await;
}

#[tokio::test]
async fn subscribe_on_one_daemon_hears_writes_made_on_another() {
    let r = REDIS.get();
    rules::subscribe_on_one_daemon_hears_writes_made_on_another(&r.url()).await;
}

// ---------------------------------------------------------------------------------------
// The store failing, and bad store URLs
// ---------------------------------------------------------------------------------------

/// Asserts that `status` is the store's UNAVAILABLE: "store: …", naming Redis.
fn assert_store_unavailable(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    let message = status.message();
    assert!(
        message.starts_with("store: ") && message.to_lowercase().contains("redis"),
        "{what}: the message names the store and Redis: {message:?}"
    );
}

#[tokio::test]
async fn redis_outage_answers_unavailable_keeps_the_daemon_up_and_recovers_without_restart() {
    let mut redis = RedisServer::standalone();
    let (a, metrics) = fleet_daemon(&redis.url()).await;
    let job = unique_job("fleet-outage");
    let _w = TestWorker::register(&a, &job, sync_config(30.0)).await;
    let mut ca = a.client();
    set(&mut ca, &job, b"[1]", b"\"before\"".to_vec(), None).await;
    // Health follows the store on a 250 ms tick: it may lag the first calls a moment.
    await_health(&a.endpoint(), ServingStatus::Serving).await;
    let pid = a.pid().expect("running");

    let mut subscriber = Subscriber::open(&a).await;
    subscriber.add(vec![item(&job, b"[1]")]).await;
    await_subscribed(&metrics, 1.0).await;

    redis.stop();
    await_health(&a.endpoint(), ServingStatus::NotServing).await;
    // The daemon can no longer vouch for what its near caches hold.
    let reset = subscriber
        .next()
        .await
        .expect("the stream stays open")
        .expect("an event");
    assert_eq!(reset.kind(), ItemEventKind::Reset, "{reset:?}");
    assert!(reset.item.is_none(), "{reset:?}");
    let e = try_get(&mut ca, &job, b"[1]", Some(false))
        .await
        .expect_err("Get while Redis is down");
    assert_store_unavailable(&e, "Get");
    let e = try_set(&mut ca, &job, b"[1]", b"\"during\"".to_vec(), None)
        .await
        .expect_err("Set while Redis is down");
    assert_store_unavailable(&e, "Set");
    let e = try_invalidate(&mut ca, &job, b"[1]")
        .await
        .expect_err("Invalidate while Redis is down");
    assert_store_unavailable(&e, "Invalidate");
    let e = try_delete(&mut ca, &job, b"[1]")
        .await
        .expect_err("Delete while Redis is down");
    assert_store_unavailable(&e, "Delete");

    // Redis returns on the same port, empty (it persisted nothing).
    redis.start_again();
    await_health(&a.endpoint(), ServingStatus::Serving).await;
    assert_eq!(a.pid(), Some(pid), "the same process serves");
    // The new Redis holds nothing, but the job's worker stayed connected to A, so the job
    // is still known there; nothing from before the outage is served, and the daemon reads
    // and writes again. A second daemon learns the job from A's Redis.
    assert_eq!(peek(&mut ca, &job, b"[1]").await.state(), ItemState::Miss);
    let (b, _) = fleet_daemon(&redis.url()).await;
    assert_eq!(
        peek(&mut b.client(), &job, b"[1]").await.state(),
        ItemState::Miss
    );
    set(&mut ca, &job, b"[1]", b"\"after\"".to_vec(), None).await;
    let r = get(&mut ca, &job, b"[1]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"after\"");
}

#[tokio::test]
async fn redis_down_at_start_keeps_the_daemon_up_until_it_comes() {
    let mut redis = RedisServer::standalone();
    redis.stop();
    let url = redis.url();
    let mut d = BareDaemon::start(&["--store", &url]).await;
    assert_eq!(health(&d.endpoint()).await, ServingStatus::NotServing);
    let job = unique_job("fleet-late-redis");
    let mut c = d.client();
    let e = try_set(&mut c, &job, b"[1]", b"1".to_vec(), None)
        .await
        .expect_err("Set while Redis is down");
    assert_store_unavailable(&e, "Set");
    assert!(d.is_running(), "the daemon stays up");

    redis.start_again();
    await_health(&d.endpoint(), ServingStatus::Serving).await;
    let _w = TestWorker::builder(&job)
        .config(sync_config(30.0))
        .connect(&d.endpoint())
        .await;
    set(&mut c, &job, b"[1]", b"1".to_vec(), None).await;
    assert_eq!(peek(&mut c, &job, b"[1]").await.data, b"1");
    assert!(d.is_running());
}

/// Runs the daemon with `args` to its end (it must exit by itself); its output.
async fn run_to_exit(args: Vec<std::ffi::OsString>) -> std::process::Output {
    // Outside the cap: the first call may build the binary.
    let bin = daemon_bin();
    within(
        "cachebackd to exit",
        tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run cachebackd")
        }),
    )
    .await
    .expect("task")
}

#[tokio::test]
async fn bad_store_url_fails_at_start_naming_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let base = |extra: &[&std::ffi::OsStr]| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--listen".into(),
            listen.clone().into(),
            "--data-dir".into(),
            dir.path().join("data").into(),
        ];
        args.extend(extra.iter().map(|a| a.to_os_string()));
        args
    };
    for url in [
        "memcached://127.0.0.1:11211", // unknown scheme
        "sledge",                      // neither sled nor a URL
        "redis://127.0.0.1:notaport",  // unparseable
        "redis+cluster://",            // a cluster without hosts
    ] {
        let out = run_to_exit(base(&["--store".as_ref(), url.as_ref()])).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "--store {url}: exited {}",
            out.status
        );
        assert!(
            stderr.contains("store") && stderr.contains(url),
            "--store {url}: stderr names the store URL: {stderr}"
        );
        assert!(out.stdout.is_empty(), "--store {url}: nothing on stdout");
    }

    // The same from the config file.
    let file = dir.path().join("cachebackd.toml");
    std::fs::write(&file, "[store]\nurl = \"memcached://127.0.0.1:11211\"\n").expect("write");
    let out = run_to_exit(base(&["--config".as_ref(), file.as_os_str()])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "[store] url: exited {}", out.status);
    assert!(
        stderr.contains("store") && stderr.contains("memcached://127.0.0.1:11211"),
        "[store] url: {stderr}"
    );

    // And a good URL on the same command line starts (so the above can fail).
    let redis = REDIS.get();
    let d = Daemon::builder()
        .args(["--store", &redis.url()])
        .start()
        .await;
    assert!(d.pid().is_some());
}
