//! What the three examples share: the connection, a slow fake API, and the timeline.

use std::{
    fmt::Debug,
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime},
};

use cacheback::{Client, Item, ItemState};

/// How long the fake API takes to answer.
pub(crate) const SLOW: Duration = Duration::from_millis(1500);

/// The slow fake Twitter API: every call returns a new "latest tweet", so a refresh is
/// visible in the data.
pub(crate) async fn call_twitter(username: &str) -> Vec<String> {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    tokio::time::sleep(SLOW).await;
    let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
    vec![format!("@{username}: tweet fetched by API call #{n}")]
}

/// The daemon at `$CACHEBACKD_URL` (default `http://127.0.0.1:7070`); exits with a hint
/// if it is not running.
pub(crate) async fn connect() -> Client {
    let url = std::env::var(cacheback::URL_ENV).unwrap_or_else(|_| cacheback::DEFAULT_URL.into());
    match Client::connect(&url).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("{e}\n\nStart the daemon first, for example:");
            eprintln!(
                "  cargo run -p cachebackd -- --listen 127.0.0.1:7070 --data-dir /tmp/cachebackd"
            );
            std::process::exit(1);
        }
    }
}

/// Prints each step with the time since the start.
pub(crate) struct Timeline(Instant);

impl Timeline {
    pub(crate) fn start() -> Self {
        Timeline(Instant::now())
    }

    pub(crate) fn say(&self, what: &str) {
        println!("[{:5.2}s] {what}", self.0.elapsed().as_secs_f64());
    }

    /// One read, labelled with what the daemon answered.
    pub(crate) fn item<T: Debug>(&self, what: &str, item: &Item<T>) {
        let label = match item.state {
            ItemState::Miss => "MISS    (nothing to serve; filling in the background)",
            ItemState::Fresh if item.fetched => "MISS    (the read waited for the fetch)",
            ItemState::Fresh => "FRESH   (served from the cache)",
            ItemState::Stale => "STALE   (old data served at once; refresh scheduled)",
        };
        self.say(&format!("{label}\n          {what}: {:?}", item.data));
    }
}

/// Polls `read` until the item is fresh and was stored after `after`: a background
/// fetch landed.
pub(crate) async fn until_refreshed<T, F, Fut>(
    mut read: F,
    after: Option<SystemTime>,
) -> Result<Item<T>, cacheback::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Item<T>, cacheback::Error>>,
{
    loop {
        let item = read().await?;
        if item.state == ItemState::Fresh && item.stored_at > after {
            return Ok(item);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
