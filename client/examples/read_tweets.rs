//! A reader that serves nothing: reads the seed's `UserTweets` items (job
//! `examples.UserTweets`) through the daemon and prints one JSON line per username, so
//! that a worker in another language (the Python `UserTweets` example) can be seen
//! serving a Rust reader.
//!
//! `cargo run -p cacheback --example read_tweets -- bob alice` prints lines like
//! `{"username":"bob","state":"FRESH","fetched":true,"data":["..."]}`.
//! A miss waits for the job's worker, wherever it runs.

// Only `connect` is used here.
#[allow(dead_code)]
mod common;

use cacheback::{ItemState, Job};
use common::connect;

/// The reader's view of the job: the same name, args and output as every other
/// `UserTweets`. Its fetch never runs here, since this program registers no worker.
struct UserTweets;

impl Job for UserTweets {
    type Args = String;
    type Output = Vec<String>;
    type Error = std::io::Error;

    const NAME: &'static str = "examples.UserTweets";

    async fn fetch(&self, _username: String) -> Result<Vec<String>, std::io::Error> {
        Err(std::io::Error::other("read_tweets only reads"))
    }
}

#[tokio::main]
async fn main() {
    let client = connect().await;
    let tweets = client.job(&UserTweets);
    let mut failed = false;
    for username in std::env::args().skip(1) {
        match tweets.get_item(&username).await {
            Ok(item) => {
                let state = match item.state {
                    ItemState::Fresh => "FRESH",
                    ItemState::Stale => "STALE",
                    ItemState::Miss => "MISS",
                };
                let mut line = serde_json::json!({
                    "username": username,
                    "state": state,
                    "fetched": item.fetched,
                    "data": item.data,
                });
                // Shown only when there is something to show, so plain items print as before.
                if item.absent {
                    line["absent"] = true.into();
                }
                if !item.tags.is_empty() {
                    line["tags"] = item.tags.into();
                }
                println!("{line}");
            }
            Err(e) => {
                eprintln!("{username}: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
