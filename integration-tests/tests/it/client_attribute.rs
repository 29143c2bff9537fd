//! The seed's decorated functions through the real daemon: `#[cacheback]` and
//! `#[cacheback(lifetime = 1200, fetch_on_miss = false)]`, called as plain functions,
//! with the job reached through `fn_name::JOB` and its helpers.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use cacheback::{cacheback, encode_args, with_client, ItemState, Job, Worker};
use cachebackd_proto::v1::GetRequest;
use tokio::sync::Semaphore;

use crate::{
    client_support::{connect, start},
    harness::{self, Daemon},
};

static DEFAULT_CALLS: AtomicUsize = AtomicUsize::new(0);

/// `@cacheback()`: lifetime 300 s, fetch on miss.
#[cacheback]
async fn fetch_tweets(username: &str) -> Result<Vec<String>, String> {
    let n = DEFAULT_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(vec![format!("{username} #{n}")])
}

#[tokio::test]
async fn a_decorated_function_fetches_on_a_miss_then_serves_the_cache() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let worker = start(Worker::new(client.clone()).serve(fetch_tweets::JOB)).await;

    with_client(client.clone(), async {
        assert_eq!(fetch_tweets("bob").await.unwrap(), ["bob #1"]);
        assert_eq!(fetch_tweets("bob").await.unwrap(), ["bob #1"]);
        assert_eq!(DEFAULT_CALLS.load(Ordering::SeqCst), 1);

        let item = fetch_tweets::get_item("bob").await.unwrap();
        assert_eq!(item.state, ItemState::Fresh);
        assert_eq!(item.data.unwrap(), ["bob #1"]);
        assert!(!item.fetched);
        assert!(!item.refresh_scheduled);
        let lifetime = item
            .expires_at
            .unwrap()
            .duration_since(item.stored_at.unwrap());
        assert_eq!(lifetime.unwrap(), Duration::from_secs(300));
    })
    .await;

    // The job is named after the function's path; its args are the JSON array of the
    // function's arguments: any gRPC client reads the same item.
    assert_eq!(
        fetch_tweets::JOB.name(),
        "it::client_attribute::fetch_tweets"
    );
    let mut raw = daemon.client();
    let response = harness::get(&mut raw, fetch_tweets::JOB.name(), br#"["bob"]"#).await;
    assert_eq!(response.data, br#"["bob #1"]"#);
    assert_eq!(DEFAULT_CALLS.load(Ordering::SeqCst), 1);
    worker.stop().await.unwrap();
}

static LAZY_CALLS: AtomicUsize = AtomicUsize::new(0);
static LAZY_GATE: Semaphore = Semaphore::const_new(0);
static LAZY_STARTED: Semaphore = Semaphore::const_new(0);

/// `@cacheback(lifetime=1200, fetch_on_miss=False)`; each fetch waits for the test.
#[cacheback(lifetime = 1200, fetch_on_miss = false)]
async fn fetch_followers(username: &str) -> Result<Vec<String>, String> {
    let n = LAZY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    LAZY_STARTED.add_permits(1);
    LAZY_GATE.acquire().await.unwrap().forget();
    Ok(vec![format!("{username} follower #{n}")])
}

#[tokio::test]
async fn without_fetch_on_miss_a_miss_returns_none_and_fills_in_the_background() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let worker = start(Worker::new(client.clone()).serve(fetch_followers::JOB)).await;

    with_client(client.clone(), async {
        // The fetch is held until released below: the call did not wait for it.
        assert_eq!(fetch_followers("bob").await.unwrap(), None);
        harness::within("the background fetch", LAZY_STARTED.acquire())
            .await
            .unwrap()
            .forget();
        let item = fetch_followers::get_item("bob").await.unwrap();
        assert_eq!(item.state, ItemState::Miss);
        assert_eq!(item.data, None);
        assert!(item.refresh_scheduled);

        // A read that does wait joins the fetch in flight.
        LAZY_GATE.add_permits(1);
        let wait = GetRequest {
            job: fetch_followers::JOB.name().to_owned(),
            args: encode_args(&("bob",)).unwrap(),
            fetch_on_miss: Some(true),
            ..Default::default()
        };
        let filled = client.raw().get(wait).await.unwrap().into_inner();
        assert_eq!(filled.data, br#"["bob follower #1"]"#);

        assert_eq!(
            fetch_followers("bob").await.unwrap(),
            Some(vec!["bob follower #1".to_owned()])
        );
        let item = fetch_followers::get_item("bob").await.unwrap();
        assert_eq!(item.state, ItemState::Fresh);
        let lifetime = item
            .expires_at
            .unwrap()
            .duration_since(item.stored_at.unwrap());
        assert_eq!(lifetime.unwrap(), Duration::from_secs(1200));
        assert_eq!(LAZY_CALLS.load(Ordering::SeqCst), 1);
    })
    .await;
    worker.stop().await.unwrap();
}

static HELPER_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cacheback]
async fn fetch_profile(username: String, page: u32) -> Result<String, String> {
    let n = HELPER_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    Ok(format!("{username} page {page} #{n}"))
}

#[tokio::test]
async fn the_job_helpers_set_invalidate_and_delete_the_functions_items() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let worker = start(Worker::new(client.clone()).serve(fetch_profile::JOB)).await;

    with_client(client.clone(), async {
        let bob = || ("bob".to_owned(), 2);

        // cacheback's `fetch_profile.job.set(...)`: no fetch needed.
        fetch_profile::set(bob().0, bob().1, &"set by hand".to_owned())
            .await
            .unwrap();
        assert_eq!(
            fetch_profile(bob().0, bob().1).await.unwrap(),
            "set by hand"
        );
        assert_eq!(HELPER_CALLS.load(Ordering::SeqCst), 0);

        // `.invalidate(...)`: stale now, refreshed in the background.
        let outcome = fetch_profile::invalidate(bob().0, bob().1).await.unwrap();
        assert!(outcome.found);
        assert!(outcome.refresh_scheduled);
        let refreshed = harness::eventually(harness::WAIT, || async {
            let item = fetch_profile::get_item(bob().0, bob().1).await.unwrap();
            (item.state == ItemState::Fresh).then_some(item)
        })
        .await;
        assert_eq!(refreshed.data.unwrap(), "bob page 2 #1");
        assert_eq!(HELPER_CALLS.load(Ordering::SeqCst), 1);

        // `.delete(...)`: the next call fetches again.
        assert!(fetch_profile::delete(bob().0, bob().1).await.unwrap());
        assert!(!fetch_profile::delete(bob().0, bob().1).await.unwrap());
        assert_eq!(
            fetch_profile(bob().0, bob().1).await.unwrap(),
            "bob page 2 #2"
        );
        assert_eq!(HELPER_CALLS.load(Ordering::SeqCst), 2);
    })
    .await;
    worker.stop().await.unwrap();
}
