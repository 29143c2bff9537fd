//! The Rust client given several daemons (issue 13, the clients' side) against two real
//! `cachebackd` processes on sled, each with its own data dir: a client uses one and
//! moves to the other when it is SIGKILLed, a worker registers with both and serves
//! fetches on both, a status the daemon answers is never taken for a daemon down, and
//! with every daemon down the error names each URL tried.

use std::time::Duration;

use cacheback::{Client, ClientBuilder, Error, ItemState, Job, Worker};
use tonic::Code;

use crate::{
    client_support::{connect, start, Probe, Tweets},
    harness::{eventually, free_port, within, Daemon, WAIT},
};

/// Two daemons, and their URLs in that order.
async fn two_daemons() -> (Daemon, Daemon, Vec<String>) {
    let a = Daemon::start().await;
    let b = Daemon::start().await;
    let urls = vec![a.endpoint(), b.endpoint()];
    (a, b, urls)
}

/// Reconnection attempts close together, so a restart is noticed quickly.
fn quick_worker(client: Client) -> Worker {
    Worker::new(client).reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))
}

/// The daemon `client` uses now, and the other one.
fn in_use<'d>(
    client: &Client,
    a: &'d mut Daemon,
    b: &'d mut Daemon,
) -> (&'d mut Daemon, &'d mut Daemon) {
    if client.url() == a.endpoint() {
        (a, b)
    } else {
        assert_eq!(client.url(), b.endpoint());
        (b, a)
    }
}

#[tokio::test]
async fn a_client_of_two_daemons_fails_over_when_its_daemon_is_killed() {
    let (mut a, mut b, urls) = two_daemons().await;
    let probe = Probe::default();
    let client = Client::connect_any(&urls).await.unwrap();
    assert_eq!(client.urls(), urls);
    let worker = start(quick_worker(client.clone()).serve(Tweets(probe.clone()))).await;
    assert_eq!(
        worker.handle.registrations(),
        2,
        "one registration per daemon"
    );
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();
    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["bob #1"]);
    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["bob #1"]);

    let (used, other) = in_use(&client, &mut a, &mut b);
    let other_url = other.endpoint();
    used.kill().await;

    // The next call goes to the other daemon (its own sled store: bob is fetched anew).
    let item = tweets.get_item(&bob).await.unwrap();
    assert_eq!(client.url(), other_url);
    assert!(item.fetched);
    assert_eq!(item.data.unwrap(), ["bob #2"]);
    // Every reader call works there, and the client stays.
    tweets.set(&bob, &vec!["set".to_owned()]).await.unwrap();
    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["set"]);
    let many = tweets.get_many(&["ann".to_owned()]).await.unwrap();
    assert_eq!(
        many[0].as_ref().unwrap().as_deref(),
        Some(&["ann #3".to_owned()][..])
    );
    client.invalidate_tags(&["user:bob"]).await.unwrap();
    assert_eq!(probe.fetches(), 3);
    let invalidated = tweets.invalidate(&bob).await.unwrap();
    assert!(invalidated.found);
    assert!(tweets.delete(&bob).await.unwrap());
    assert_eq!(client.url(), other_url);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_of_two_daemons_serves_fetches_on_both_and_reconnects_each() {
    let (mut a, b, urls) = two_daemons().await;
    let probe = Probe::default();
    let worker_client = Client::connect_any(&urls).await.unwrap();
    let worker = start(quick_worker(worker_client).serve(Tweets(probe.clone()))).await;
    assert_eq!(worker.handle.registrations(), 2);
    let job = Tweets(probe.clone());
    let (on_a, on_b) = (connect(&a).await, connect(&b).await);

    let from_a = on_a.job(&job).get_item(&"ann".to_owned()).await.unwrap();
    let from_b = on_b.job(&job).get_item(&"bob".to_owned()).await.unwrap();
    assert!(from_a.fetched && from_b.fetched);
    assert_eq!(probe.fetches(), 2);

    // A restarts: the worker registers with it again; its stream to B was not touched.
    a.kill().await;
    let on_b_meanwhile = on_b.job(&job).get_item(&"cat".to_owned()).await.unwrap();
    assert_eq!(on_b_meanwhile.data.unwrap(), ["cat #3"]);
    a.start_again().await;
    within(
        "the worker to register with A again",
        worker.handle.wait_for_registrations(3),
    )
    .await
    .unwrap();
    let again = on_a.job(&job).get_item(&"dan".to_owned()).await.unwrap();
    assert_eq!(again.data.unwrap(), ["dan #4"]);
    assert_eq!(worker.handle.registrations(), 3, "B's stream never dropped");
    worker.stop().await.unwrap();
}

/// Fails every fetch: the daemon answers UNAVAILABLE, which is not a daemon down.
struct Failing;

impl Job for Failing {
    type Args = String;
    type Output = String;
    type Error = std::io::Error;

    const NAME: &'static str = "tweets.Failing";

    async fn fetch(&self, _: String) -> Result<String, std::io::Error> {
        Err(std::io::Error::other("the API said no"))
    }
}

#[tokio::test]
async fn an_unavailable_the_daemon_answers_does_not_move_the_client() {
    let (_a, _b, urls) = two_daemons().await;
    let client = Client::connect_any(&urls).await.unwrap();
    let worker = start(Worker::new(client.clone()).serve(Failing)).await;
    let before = client.url().to_owned();

    let failed = client
        .job(&Failing)
        .get(&"bob".to_owned())
        .await
        .unwrap_err();
    assert!(
        matches!(failed, Error::Status { rpc: "Get", .. }),
        "{failed}"
    );
    assert_eq!(failed.code(), Some(Code::Unavailable));
    assert!(failed
        .status()
        .unwrap()
        .message()
        .contains("the API said no"));
    assert_eq!(client.url(), before);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn with_every_daemon_down_the_error_names_each_url_tried() {
    let urls = [
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    ];
    let refused = Client::connect_any(&urls).await.unwrap_err();
    match &refused {
        Error::NoDaemon { rpc, tried, .. } => {
            assert_eq!(*rpc, "connect");
            let mut tried = tried.clone();
            tried.sort();
            let mut expected = urls.to_vec();
            expected.sort();
            assert_eq!(tried, expected);
        }
        other => panic!("expected NoDaemon, got {other:?}"),
    }
    for url in &urls {
        assert!(refused.to_string().contains(url.as_str()), "{refused}");
    }

    // A client that was connected: both daemons killed, a call tries each once.
    let (mut a, mut b, urls) = two_daemons().await;
    let client = ClientBuilder::new(&urls.join(",")).connect().await.unwrap();
    a.kill().await;
    b.kill().await;
    let job = Tweets(Probe::default());
    let failed = client.job(&job).get(&"bob".to_owned()).await.unwrap_err();
    match &failed {
        Error::NoDaemon { rpc, tried, .. } => {
            assert_eq!(*rpc, "Get");
            assert_eq!(tried.len(), 2);
        }
        other => panic!("expected NoDaemon, got {other:?}"),
    }
    assert_eq!(failed.code(), Some(Code::Unavailable), "{failed}");
    for url in &urls {
        assert!(failed.to_string().contains(url.as_str()), "{failed}");
    }
}

#[tokio::test]
async fn the_near_cache_drops_everything_when_its_daemon_is_killed_and_serves_from_the_next() {
    let (mut a, mut b, urls) = two_daemons().await;
    let probe = Probe::default();
    let plain = Client::connect_any(&urls).await.unwrap();
    let worker = start(quick_worker(plain).serve(Tweets(probe.clone()))).await;
    let near = ClientBuilder::new_any(&urls)
        .near_cache(100)
        .connect()
        .await
        .unwrap();
    let job = Tweets(probe.clone());
    let bob = "bob".to_owned();
    near.job(&job).get(&bob).await.unwrap();
    assert_eq!(near.job(&job).get(&bob).await.unwrap().unwrap(), ["bob #1"]);
    let stats = near.near_cache_stats().unwrap();
    assert_eq!((stats.hits, stats.items), (1, 1));

    let (used, other) = in_use(&near, &mut a, &mut b);
    let other_url = other.endpoint();
    used.kill().await;
    // The stream breaks: everything goes, without a read, and the client moves on.
    eventually(WAIT, || async {
        let s = near.near_cache_stats().unwrap();
        (s.items == 0 && s.resets == 1).then_some(())
    })
    .await;
    let item = near.job(&job).get_item(&bob).await.unwrap();
    assert_eq!(near.url(), other_url);
    assert!(
        item.fetched,
        "served by the other daemon, not the dropped copy"
    );
    assert_eq!(item.data.unwrap(), ["bob #2"]);
    // The near cache works on the new daemon: once its stream is up, a read is kept.
    let kept = eventually(WAIT, || async {
        near.job(&job).get_item(&bob).await.unwrap();
        let s = near.near_cache_stats().unwrap();
        (s.items == 1).then_some(s)
    })
    .await;
    let hit = near.job(&job).get_item(&bob).await.unwrap();
    assert_eq!(hit.state, ItemState::Fresh);
    assert_eq!(near.near_cache_stats().unwrap().hits, kept.hits + 1);
    assert_eq!(probe.fetches(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn in_a_fleet_a_failed_over_client_reads_what_it_wrote_through_the_dead_daemon() {
    let redis = crate::fleet_support::RedisServer::standalone();
    let fleet_daemon = || {
        Daemon::builder()
            .args(["--store", redis.url().as_str()])
            .start()
    };
    let (mut a, mut b) = (fleet_daemon().await, fleet_daemon().await);
    let urls = [a.endpoint(), b.endpoint()];
    let probe = Probe::default();
    let client = Client::connect_any(&urls).await.unwrap();
    let worker = start(quick_worker(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();
    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["bob #1"]);
    tweets
        .set(&"ann".to_owned(), &vec!["written".to_owned()])
        .await
        .unwrap();

    let (used, other) = in_use(&client, &mut a, &mut b);
    let other_url = other.endpoint();
    used.kill().await;
    // The other daemon serves the same store: both items are FRESH hits, nothing fetched.
    let item = tweets.get_item(&bob).await.unwrap();
    assert_eq!(client.url(), other_url);
    assert_eq!((item.state, item.fetched), (ItemState::Fresh, false));
    assert_eq!(item.data.unwrap(), ["bob #1"]);
    assert_eq!(
        tweets.get(&"ann".to_owned()).await.unwrap().unwrap(),
        ["written"]
    );
    // A miss is fetched by the worker's stream to the daemon still up.
    assert_eq!(
        tweets.get(&"cat".to_owned()).await.unwrap().unwrap(),
        ["cat #2"]
    );
    assert_eq!(probe.fetches(), 2);
    worker.stop().await.unwrap();
}
