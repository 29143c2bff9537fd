//! The seed's second example: `@cacheback(lifetime=1200, fetch_on_miss=False)`.
//!
//! ```python
//! @cacheback(lifetime=1200, fetch_on_miss=False)
//! def fetch_tweets(username):
//!     return twitter.get_tweets(username)
//! ```
//!
//! A miss does not wait: the function returns `None` at once and the fetch fills the
//! item in the background. Fresh for 20 minutes.
//!
//! Run against a daemon: `cargo run -p cacheback --example no_fetch_on_miss`.

mod common;

use cacheback::{cacheback, Worker};
use common::{call_twitter, connect, until_refreshed, Timeline};

/// Slow: calls the (fake) Twitter API.
#[cacheback(lifetime = 1200, fetch_on_miss = false)]
async fn fetch_tweets(username: &str) -> Result<Vec<String>, std::io::Error> {
    Ok(call_twitter(username).await)
}

#[tokio::main]
async fn main() -> Result<(), cacheback::Error> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let client = connect().await;
    cacheback::set_default_client(client.clone())?;

    let worker = Worker::new(client.clone()).serve(fetch_tweets::JOB);
    let worker_handle = worker.handle();
    let worker_task = tokio::spawn(worker.run());
    worker_handle.ready().await?;

    fetch_tweets::delete("bob").await?; // start from a miss, whatever an earlier run left

    let t = Timeline::start();
    let first = fetch_tweets("bob").await?;
    t.say(&format!(
        r#"fetch_tweets("bob") = {first:?}: a miss returns None at once"#
    ));
    let filled = until_refreshed(|| fetch_tweets::get_item("bob"), None).await?;
    t.item("filled in the background", &filled);
    t.say(&format!(
        r#"fetch_tweets("bob") = {:?}"#,
        fetch_tweets("bob").await?
    ));

    fetch_tweets::invalidate("bob").await?;
    let stale = fetch_tweets::get_item("bob").await?;
    t.item(r#"after fetch_tweets::invalidate("bob")"#, &stale);

    let refreshed = until_refreshed(|| fetch_tweets::get_item("bob"), stale.stored_at).await?;
    t.item("refreshed in the background", &refreshed);

    worker_handle.stop();
    worker_task.await.expect("worker task")?;
    Ok(())
}
