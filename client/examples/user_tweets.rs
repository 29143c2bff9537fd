//! The seed's third example: a `Job` class with attributes and overridden decisions.
//!
//! ```python
//! class UserTweets(Job):
//!     lifetime = 600
//!     fetch_on_miss = False
//!
//!     def fetch(self, username):
//!         return twitter.get_tweets(username)
//!
//!     def expiry(self, username):
//!         # celebrities tweet all the time
//!         if username.startswith("celeb_"):
//!             return time.time() + 3
//!         return super().expiry(username)
//!
//!     def should_missing_item_be_fetched_synchronously(self, username):
//!         return username.startswith("celeb_")
//!
//! tweets = UserTweets().get(username)
//! ```
//!
//! Run against a daemon: `cargo run -p cacheback --example user_tweets`.

mod common;

use std::time::Duration;

use cacheback::{Job, Worker};
use common::{call_twitter, connect, until_refreshed, Timeline};

struct UserTweets;

impl Job for UserTweets {
    type Args = String;
    type Output = Vec<String>;
    type Error = std::io::Error;

    const NAME: &'static str = "examples.UserTweets";
    const LIFETIME: Duration = Duration::from_secs(600);
    const FETCH_ON_MISS: bool = false;

    async fn fetch(&self, username: String) -> Result<Vec<String>, std::io::Error> {
        Ok(call_twitter(&username).await)
    }

    /// Celebrities tweet all the time: their tweets are fresh for 3 s only.
    fn expiry(&self, username: &String) -> Option<Duration> {
        username
            .starts_with("celeb_")
            .then_some(Duration::from_secs(3))
    }

    /// A celebrity's page is worth waiting for; anyone else's fills in the background.
    fn should_missing_item_be_fetched_synchronously(&self, username: &String) -> bool {
        username.starts_with("celeb_")
    }
}

#[tokio::main]
async fn main() -> Result<(), cacheback::Error> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let client = connect().await;

    let worker = Worker::new(client.clone()).serve(UserTweets);
    let worker_handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());
    worker_handle.ready().await?;

    let tweets = client.job(&UserTweets);
    let (celeb, bob) = ("celeb_ada".to_string(), "bob".to_string());
    tweets.delete(&celeb).await?; // start from misses, whatever an earlier run left
    tweets.delete(&bob).await?;

    let t = Timeline::start();
    t.say("celeb_ada: should_missing_item_be_fetched_synchronously -> true");
    t.item(
        "UserTweets().get(\"celeb_ada\")",
        &tweets.get_item(&celeb).await?,
    );
    let fresh = tweets.get_item(&celeb).await?;
    t.item("read again", &fresh);

    t.say("waiting out celeb_ada's 3 s expiry()...");
    if let Some(wait) = fresh
        .expires_at
        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
    {
        tokio::time::sleep(wait).await;
    }
    let stale = tweets.get_item(&celeb).await?;
    t.item("past its expiry", &stale);
    let refreshed = until_refreshed(|| tweets.get_item(&celeb), stale.stored_at).await?;
    t.item("refreshed in the background", &refreshed);

    t.say("bob: should_missing_item_be_fetched_synchronously -> false (fetch_on_miss)");
    t.item("UserTweets().get(\"bob\")", &tweets.get_item(&bob).await?);
    let filled = until_refreshed(|| tweets.get_item(&bob), None).await?;
    t.item("filled in the background, fresh for 600 s", &filled);

    worker_handle.stop();
    worker_task.await.expect("worker task")?;
    Ok(())
}
