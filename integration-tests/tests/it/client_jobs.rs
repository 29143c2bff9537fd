//! The seed's `Job` behaviours through `client.job(&job)` and the real daemon: a miss
//! fetches synchronously by default, the lifetime decides freshness, `expiry()` and
//! `should_missing_item_be_fetched_synchronously()` decide per args, `invalidate` serves
//! stale data while it refreshes, `delete` makes the next read fetch.

use std::time::{Duration, SystemTime};

use cacheback::{encode_args, ItemState, Job, Worker};
use cachebackd_proto::v1::GetRequest;
use tonic::Code;

use crate::{
    client_support::{connect, start, Probe, Tweets},
    harness::{self, sleep_until_wall, Daemon},
};

fn lifetime_of<T>(item: &cacheback::Item<T>) -> Duration {
    let stored_at = item.stored_at.expect("stored_at");
    item.expires_at
        .expect("expires_at")
        .duration_since(stored_at)
        .expect("expires after it was stored")
}

#[tokio::test]
async fn a_miss_fetches_synchronously_by_default() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();

    let item = tweets.get_item(&bob).await.unwrap();
    assert_eq!(item.state, ItemState::Fresh);
    assert!(item.fetched);
    assert_eq!(item.data.unwrap(), ["bob #1"]);
    assert_eq!(
        lifetime_of(&tweets.get_item(&bob).await.unwrap()),
        Duration::from_secs(300)
    );

    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["bob #1"]);
    assert_eq!(probe.fetches(), 1);
    worker.stop().await.unwrap();
}

/// Fresh for 3 s: long enough for two reads in a row, short enough to wait out.
struct ShortLived(Probe);

impl Job for ShortLived {
    type Args = String;
    type Output = Vec<String>;
    type Error = String;

    const NAME: &'static str = "tweets.ShortLived";
    const LIFETIME: Duration = Duration::from_secs(3);

    async fn fetch(&self, username: String) -> Result<Vec<String>, String> {
        let visit = self.0.enter().await;
        Ok(vec![format!("{username} #{}", visit.number)])
    }
}

#[tokio::test]
async fn the_lifetime_decides_freshness() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(ShortLived(probe.clone()))).await;
    let job = ShortLived(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();

    let fetched = tweets.get_item(&bob).await.unwrap();
    assert_eq!(lifetime_of(&fetched), Duration::from_secs(3));
    let fresh = tweets.get_item(&bob).await.unwrap();
    assert_eq!(fresh.state, ItemState::Fresh);
    assert!(!fresh.refresh_scheduled);
    assert_eq!(probe.fetches(), 1);

    // Held, so that the stale read below sees the refresh in flight and nothing else.
    probe.hold();
    sleep_until_wall(fresh.expires_at.unwrap()).await;
    let stale = tweets.get_item(&bob).await.unwrap();
    assert_eq!(stale.state, ItemState::Stale);
    assert_eq!(stale.data.unwrap(), ["bob #1"]);
    assert_eq!(stale.stored_at, fetched.stored_at);
    assert!(stale.refresh_scheduled);
    assert!(!stale.fetched);
    probe.started(2).await;
    assert_eq!(probe.fetches(), 2);
    probe.release(1);
    worker.stop().await.unwrap();
}

/// The seed's `UserTweets`: class attributes, and both decisions overridden.
struct UserTweets(Probe);

impl Job for UserTweets {
    type Args = String;
    type Output = Vec<String>;
    type Error = String;

    const NAME: &'static str = "tweets.UserTweets";
    const LIFETIME: Duration = Duration::from_secs(600);
    const FETCH_ON_MISS: bool = false;

    async fn fetch(&self, username: String) -> Result<Vec<String>, String> {
        let visit = self.0.enter().await;
        Ok(vec![format!("{username} #{}", visit.number)])
    }

    fn expiry(&self, username: &String) -> Option<Duration> {
        username
            .starts_with("celeb_")
            .then_some(Duration::from_secs(3600))
    }

    fn should_missing_item_be_fetched_synchronously(&self, username: &String) -> bool {
        username.starts_with("celeb_")
    }
}

#[tokio::test]
async fn expiry_and_the_miss_decision_are_made_per_args() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(UserTweets(probe.clone()))).await;
    let job = UserTweets(probe.clone());
    let tweets = client.job(&job);

    // A celebrity: fetched synchronously, fresh for expiry()'s hour.
    let celeb = tweets.get_item(&"celeb_ada".to_owned()).await.unwrap();
    assert_eq!(celeb.state, ItemState::Fresh);
    assert!(celeb.fetched);
    assert_eq!(lifetime_of(&celeb), Duration::from_secs(3600));
    assert_eq!(celeb.data.unwrap(), ["celeb_ada #1"]);

    // Anyone else: the miss returns at once and fills in the background.
    let bob = "bob".to_owned();
    let miss = tweets.get_item(&bob).await.unwrap();
    assert_eq!(miss.state, ItemState::Miss);
    assert_eq!(miss.data, None);
    assert!(miss.refresh_scheduled);
    assert!(!miss.fetched);
    let wait = GetRequest {
        job: UserTweets::NAME.to_owned(),
        args: encode_args(&bob).unwrap(),
        fetch_on_miss: Some(true),
        ..Default::default()
    };
    client.raw().get(wait).await.unwrap();
    let filled = tweets.get_item(&bob).await.unwrap();
    assert_eq!(filled.state, ItemState::Fresh);
    assert_eq!(lifetime_of(&filled), Duration::from_secs(600));
    assert_eq!(filled.data.unwrap(), ["bob #2"]);
    assert_eq!(probe.fetches(), 2);

    // `set` applies expiry() too, as cacheback's does.
    let before = SystemTime::now();
    let expires_at = tweets
        .set(&"celeb_bo".to_owned(), &vec!["set by hand".to_owned()])
        .await
        .unwrap();
    let set = tweets.get_item(&"celeb_bo".to_owned()).await.unwrap();
    assert_eq!(set.expires_at, Some(expires_at));
    assert_eq!(lifetime_of(&set), Duration::from_secs(3600));
    assert!(set.stored_at.unwrap() >= before - Duration::from_secs(1));
    assert_eq!(probe.fetches(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn invalidate_serves_stale_data_and_refreshes_in_the_background() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();

    let first = tweets.get_item(&bob).await.unwrap();
    assert_eq!(first.data.as_deref(), Some(&["bob #1".to_owned()][..]));

    probe.hold();
    let outcome = tweets.invalidate(&bob).await.unwrap();
    assert!(outcome.found);
    assert!(outcome.refresh_scheduled);
    probe.started(2).await;

    // The refresh is held: readers get the old data at once.
    let stale = tweets.get_item(&bob).await.unwrap();
    assert_eq!(stale.state, ItemState::Stale);
    assert_eq!(stale.data.unwrap(), ["bob #1"]);
    assert_eq!(stale.stored_at, first.stored_at);
    assert!(stale.refresh_scheduled);
    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["bob #1"]);
    assert_eq!(probe.fetches(), 2);

    probe.release(1);
    let refreshed = harness::eventually(harness::WAIT, || async {
        let item = tweets.get_item(&bob).await.unwrap();
        (item.state == ItemState::Fresh).then_some(item)
    })
    .await;
    assert_eq!(refreshed.data.unwrap(), ["bob #2"]);
    assert!(!refreshed.fetched);
    assert_eq!(probe.fetches(), 2);

    // Invalidating what is not cached does nothing.
    let absent = tweets.invalidate(&"nobody".to_owned()).await.unwrap();
    assert!(!absent.found);
    assert!(!absent.refresh_scheduled);
    assert_eq!(probe.fetches(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn delete_makes_the_next_get_fetch() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();

    assert_eq!(tweets.get(&bob).await.unwrap().unwrap(), ["bob #1"]);
    assert!(tweets.delete(&bob).await.unwrap());
    let item = tweets.get_item(&bob).await.unwrap();
    assert!(item.fetched);
    assert_eq!(item.data.unwrap(), ["bob #2"]);
    assert_eq!(probe.fetches(), 2);
    assert!(!tweets.delete(&"nobody".to_owned()).await.unwrap());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn set_stores_data_that_reads_serve_without_a_fetch() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    let bob = "bob".to_owned();

    let lifetime = Duration::from_secs(42);
    let expires_at = tweets
        .set_with_lifetime(&bob, &vec!["by hand".to_owned()], lifetime)
        .await
        .unwrap();
    let item = tweets.get_item(&bob).await.unwrap();
    assert_eq!(item.state, ItemState::Fresh);
    assert_eq!(item.data.unwrap(), ["by hand"]);
    assert_eq!(item.expires_at, Some(expires_at));
    assert_eq!(lifetime_of(&tweets.get_item(&bob).await.unwrap()), lifetime);
    assert_eq!(probe.fetches(), 0);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn data_of_exactly_the_daemons_limit_reads_back_whole() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);

    // `["x…x"]`: exactly 4 MiB of JSON.
    let data = vec!["x".repeat(4 * 1024 * 1024 - 4)];
    tweets.set(&"big".to_owned(), &data).await.unwrap();
    let mut raw = daemon.client();
    let stored = harness::get(&mut raw, Tweets::NAME, br#"["big"]"#).await;
    assert_eq!(stored.data.len(), 4 * 1024 * 1024);
    assert_eq!(tweets.get(&"big".to_owned()).await.unwrap().unwrap(), data);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_job_never_registered_is_not_found_with_the_daemons_status() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let job = Tweets(Probe::default());
    let error = client.job(&job).get(&"bob".to_owned()).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::NotFound), "{error}");
    assert!(
        matches!(&error, cacheback::Error::Status { rpc: "Get", job, .. } if job == Tweets::NAME)
    );
}

#[tokio::test]
async fn get_many_reads_many_items_in_one_call() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    tweets
        .set(&"cached".to_owned(), &vec!["set by hand".to_owned()])
        .await
        .unwrap();

    let users: Vec<String> = ["cached", "bob", "cached", "alice"]
        .map(String::from)
        .to_vec();
    let items = tweets.get_many_items(&users).await.unwrap();
    let seen: Vec<(ItemState, bool, Vec<String>)> = items
        .into_iter()
        .map(|i| {
            let i = i.unwrap();
            (i.state, i.fetched, i.data.unwrap())
        })
        .collect();
    let hand = vec!["set by hand".to_owned()];
    assert_eq!(seen[0], (ItemState::Fresh, false, hand.clone()));
    assert_eq!(seen[2], (ItemState::Fresh, false, hand));
    // The two misses were fetched concurrently, in either order.
    let mut fetched: Vec<String> = [&seen[1], &seen[3]]
        .iter()
        .map(|(state, fetched, data)| {
            assert_eq!((*state, *fetched, data.len()), (ItemState::Fresh, true, 1));
            data[0].clone()
        })
        .collect();
    assert!(fetched[0].starts_with("bob #") && fetched[1].starts_with("alice #"));
    fetched.sort();
    assert!(
        fetched == ["alice #1", "bob #2"] || fetched == ["alice #2", "bob #1"],
        "{fetched:?}"
    );
    assert_eq!(probe.fetches(), 2);

    // 1,500 args: two calls under the hood, one result per args, in order.
    let many: Vec<String> = (0..1500).map(|_| "cached".to_owned()).collect();
    let all = tweets.get_many(&many).await.unwrap();
    assert_eq!(all.len(), 1500);
    assert!(all
        .iter()
        .all(|r| r.as_ref().unwrap().as_deref() == Some(&["set by hand".to_owned()][..])));
    assert_eq!(probe.fetches(), 2);
    worker.stop().await.unwrap();
}
