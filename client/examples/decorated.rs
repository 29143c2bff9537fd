//! The seed's first example: `@cacheback()` on a function.
//!
//! ```python
//! @cacheback()
//! def fetch_tweets(username):
//!     return twitter.get_tweets(username)
//! ```
//!
//! Lifetime 300 s, fetch on miss: the first read waits for the fetch, later reads are
//! served from the cache, and stale data is served while it refreshes.
//!
//! Run against a daemon: `cargo run -p cacheback --example decorated`
//! (`CACHEBACKD_URL` picks the daemon; default `http://127.0.0.1:7070`).

mod common;

use cacheback::{cacheback, Worker};
use common::{call_twitter, connect, until_refreshed, Timeline};

/// Slow: calls the (fake) Twitter API.
#[cacheback]
async fn fetch_tweets(username: &str) -> Result<Vec<String>, std::io::Error> {
    Ok(call_twitter(username).await)
}

#[tokio::main]
async fn main() -> Result<(), cacheback::Error> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let client = connect().await;
    cacheback::set_default_client(client.clone())?;

    // The app server's worker: it runs the fetches the daemon asks for.
    let worker = Worker::new(client.clone()).serve(fetch_tweets::JOB);
    let worker_handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());
    worker_handle.ready().await?;

    // cacheback's `fetch_tweets.job.delete("bob")`: start from a miss, whatever an
    // earlier run left.
    fetch_tweets::delete("bob").await?;

    // Each step reads with `fetch_tweets::get_item`: the same read as calling
    // `fetch_tweets("bob")`, plus the state the daemon answered.
    let t = Timeline::start();
    t.say(r#"fetch_tweets("bob") on an empty cache..."#);
    t.item("the fetched tweets", &fetch_tweets::get_item("bob").await?);
    t.item(
        "the same tweets, at once",
        &fetch_tweets::get_item("bob").await?,
    );

    // Stale after 300 s; invalidate makes it stale now.
    fetch_tweets::invalidate("bob").await?;
    let stale = fetch_tweets::get_item("bob").await?;
    t.item(r#"after fetch_tweets::invalidate("bob")"#, &stale);

    let refreshed = until_refreshed(|| fetch_tweets::get_item("bob"), stale.stored_at).await?;
    t.item("refreshed in the background, no reader waited", &refreshed);
    t.say(&format!(
        r#"fetch_tweets("bob") = {:?}"#,
        fetch_tweets("bob").await?
    ));

    worker_handle.stop();
    worker_task.await.expect("worker task")?;
    Ok(())
}
