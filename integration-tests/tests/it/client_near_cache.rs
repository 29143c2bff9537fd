//! The Rust client's near cache (`ClientBuilder::near_cache`) against the real daemon: a
//! local hit never reaches it, a write by anyone ends the local copy, so does its expiry
//! and the loss of the stream, and the bound holds.

use std::time::Duration;

use cacheback::{Client, ItemState, NearCacheStats, Worker};
use cachebackd_proto::v1::{cacheback_admin_client::CachebackAdminClient, InvalidateJobRequest};

use crate::{
    client_support::{connect, start, Probe, Tweets},
    harness::{self, eventually, sleep_until_wall, Daemon, WAIT},
    near_cache::{await_subscribed, daemon_with_metrics},
    ops_support::{channel, scrape},
};

const JOB: &str = "tweets.Tweets";

async fn near_client(d: &Daemon, capacity: u64) -> Client {
    Client::builder(&d.endpoint())
        .near_cache(capacity)
        .connect()
        .await
        .expect("connect with a near cache")
}

/// Every Get the daemon has answered for the job.
async fn daemon_gets(metrics: &str) -> f64 {
    let s = scrape(metrics).await;
    ["fresh", "stale", "miss"]
        .iter()
        .map(|o| {
            s.get(&format!(
                "cachebackd_gets_total{{job=\"{JOB}\",outcome=\"{o}\"}}"
            ))
        })
        .sum()
}

fn stats(c: &Client) -> NearCacheStats {
    c.near_cache_stats().expect("a near cache")
}

/// Waits until the near cache holds `n` items (an event was applied, or a loss).
async fn await_held(c: &Client, n: u64) {
    eventually(WAIT, || async { (stats(c).items == n).then_some(()) }).await
}

#[tokio::test]
async fn a_near_cache_hit_does_not_reach_the_daemon() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let plain = connect(&d).await;
    let probe = Probe::default();
    let worker = start(Worker::new(plain.clone()).serve(Tweets(probe.clone()))).await;
    let near = near_client(&d, 100).await;
    let job = Tweets(probe.clone());
    let bob = "bob".to_owned();

    let first = near.job(&job).get_item(&bob).await.unwrap();
    assert!(first.fetched);
    assert_eq!(daemon_gets(&metrics).await, 1.0);
    for _ in 0..10 {
        let item = near.job(&job).get_item(&bob).await.unwrap();
        assert_eq!(item.state, ItemState::Fresh);
        assert_eq!(item.data.unwrap(), ["bob #1"]);
        assert_eq!(item.expires_at, first.expires_at);
        assert!(!item.fetched);
    }
    assert_eq!(
        daemon_gets(&metrics).await,
        1.0,
        "no hit reached the daemon"
    );
    let s = stats(&near);
    assert_eq!((s.hits, s.misses, s.items, s.resets), (10, 1, 1, 0));
    // A client without one is not changed.
    assert!(plain.near_cache_stats().is_none());
    plain.job(&job).get(&bob).await.unwrap();
    assert_eq!(daemon_gets(&metrics).await, 2.0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn writes_by_another_client_end_the_local_copy() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let writer = connect(&d).await;
    let probe = Probe::default();
    let worker = start(Worker::new(writer.clone()).serve(Tweets(probe.clone()))).await;
    let near = near_client(&d, 100).await;
    let job = Tweets(probe.clone());
    let mut admin = CachebackAdminClient::new(channel(&d).await);
    let bob = "bob".to_owned();
    let read = || async { near.job(&job).get_item(&bob).await.unwrap() };

    // Each write, from a client without a near cache, then the next local read.
    for write in ["set", "invalidate", "delete", "invalidate_job"] {
        writer
            .job(&job)
            .set(&bob, &vec![format!("before {write}")])
            .await
            .unwrap();
        // What the last round left held is told of that Set.
        await_held(&near, 0).await;
        let held = read().await;
        assert_eq!(held.data.unwrap(), [format!("before {write}")]);
        await_held(&near, 1).await;
        await_subscribed(&metrics, 1.0).await;
        assert_eq!(read().await.state, ItemState::Fresh);
        let misses = stats(&near).misses;
        let hits = stats(&near).hits;
        // The fetch a write leads to waits, so the next read sees the write's state.
        let fetches = write != "set";
        if fetches {
            probe.hold();
        }
        match write {
            "set" => {
                writer
                    .job(&job)
                    .set(&bob, &vec!["set".into()])
                    .await
                    .unwrap();
            }
            "invalidate" => {
                writer.job(&job).invalidate(&bob).await.unwrap();
            }
            "delete" => {
                assert!(writer.job(&job).delete(&bob).await.unwrap());
            }
            _ => {
                admin
                    .invalidate_job(InvalidateJobRequest { job: JOB.into() })
                    .await
                    .unwrap();
            }
        }
        await_held(&near, 0).await;
        if write == "delete" {
            // The next read's synchronous fetch goes through.
            probe.release(1);
        }
        let after = read().await;
        assert_eq!(stats(&near).misses, misses + 1, "after {write}");
        assert_eq!(stats(&near).hits, hits, "after {write}");
        match write {
            "set" => assert_eq!(after.data.unwrap(), ["set"]),
            // Stale now, refreshing: never served from the near cache.
            "invalidate" | "invalidate_job" => assert_eq!(after.state, ItemState::Stale),
            // Gone: the next read fetches.
            _ => assert!(after.fetched),
        }
        assert_eq!(stats(&near).resets, 0);
        if write.starts_with("invalidate") {
            probe.release(1);
        }
        // Let a refresh the write started land before the next round.
        eventually(WAIT, || async {
            (read().await.state == ItemState::Fresh).then_some(())
        })
        .await;
    }
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn this_clients_own_write_ends_its_copy_at_once() {
    let d = Daemon::start().await;
    let probe = Probe::default();
    let near = near_client(&d, 100).await;
    let worker = start(Worker::new(near.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let bob = "bob".to_owned();
    near.job(&job).get(&bob).await.unwrap();
    near.job(&job)
        .set(&bob, &vec!["mine".into()])
        .await
        .unwrap();
    // No wait for the event: read-your-writes.
    assert_eq!(near.job(&job).get(&bob).await.unwrap().unwrap(), ["mine"]);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn expiry_ends_the_local_copy() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let writer = connect(&d).await;
    let probe = Probe::default();
    let worker = start(Worker::new(writer.clone()).serve(Tweets(probe.clone()))).await;
    let near = near_client(&d, 100).await;
    let job = Tweets(probe.clone());
    let bob = "bob".to_owned();
    let expires = writer
        .job(&job)
        .set_with_lifetime(&bob, &vec!["short".into()], Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        near.job(&job).get_item(&bob).await.unwrap().state,
        ItemState::Fresh
    );
    assert_eq!(
        near.job(&job).get_item(&bob).await.unwrap().state,
        ItemState::Fresh
    );
    assert_eq!(stats(&near).hits, 1);
    let before = daemon_gets(&metrics).await;
    sleep_until_wall(expires + Duration::from_millis(20)).await;
    let item = near.job(&job).get_item(&bob).await.unwrap();
    assert_eq!(item.state, ItemState::Stale, "the daemon answered");
    assert_eq!(daemon_gets(&metrics).await, before + 1.0);
    assert_eq!(stats(&near).hits, 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_lost_stream_drops_everything() {
    let mut d = Daemon::start().await;
    let near = near_client(&d, 100).await;
    let probe = Probe::default();
    let job = Tweets(probe.clone());
    {
        let worker = start(Worker::new(near.clone()).serve(Tweets(probe.clone()))).await;
        for user in ["ann", "bob", "cy"] {
            near.job(&job).get(&user.to_owned()).await.unwrap();
        }
        await_held(&near, 3).await;
        d.kill().await;
        await_held(&near, 0).await;
        assert_eq!(stats(&near).resets, 1);
        drop(worker);
    }
    // Nothing is served while the daemon is down.
    let misses = stats(&near).misses;
    assert!(near.job(&job).get(&"bob".to_owned()).await.is_err());
    assert_eq!(stats(&near).misses, misses + 1);

    // Back up: the first read goes to the daemon again.
    d.start_again().await;
    let worker = start(Worker::new(near.clone()).serve(Tweets(probe.clone()))).await;
    let hits = stats(&near).hits;
    eventually(WAIT, || async {
        near.job(&job).get_item(&"bob".to_owned()).await.ok()
    })
    .await;
    assert_eq!(stats(&near).hits, hits);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_bound_holds() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let writer = connect(&d).await;
    let probe = Probe::default();
    let worker = start(Worker::new(writer.clone()).serve(Tweets(probe.clone()))).await;
    let near = near_client(&d, 5).await;
    let job = Tweets(probe.clone());
    for i in 0..200 {
        let user = format!("user{i}");
        writer
            .job(&job)
            .set(&user, &vec![user.clone()])
            .await
            .unwrap();
        assert_eq!(near.job(&job).get(&user).await.unwrap().unwrap(), [user]);
    }
    let s = stats(&near);
    assert!(s.items <= 5, "{s:?}");
    assert_eq!(s.misses, 200);
    // Subscriptions are pruned to what is held: a few over the capacity at most.
    let subscribed = scrape(&metrics).await.get("cachebackd_subscribed_items");
    assert!(subscribed <= 5.0 + 64.0 + 1.0, "{subscribed} subscribed");
    harness::within("stop", worker.stop()).await.unwrap();
}
