//! The Rust client and worker runtime of cachebackd: django-cacheback's API,
//! with the cache and the refresh queue in a daemon.
//!
//! A [`Job`] says how to fetch some slow data and how long it stays fresh. Readers call
//! [`Client::job`]`(&job).get(&args)` and get cached data at once; stale data is
//! refreshed in the background, and only a true miss waits. The fetches run in the app
//! servers: a [`Worker`] registers the jobs with the daemon and answers its fetch
//! requests. The `#[cacheback]` attribute turns an `async fn` into such a job.
//!
//! ```no_run
//! use cacheback::{cacheback, Client, Worker};
//!
//! /// Slow: calls the Twitter API.
//! #[cacheback(lifetime = 600)]
//! async fn fetch_tweets(username: &str) -> Result<Vec<String>, std::io::Error> {
//!     Ok(vec![format!("{username}: hello")])
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), cacheback::Error> {
//!     let client = Client::connect("http://127.0.0.1:7070").await?;
//!     cacheback::set_default_client(client.clone())?;
//!     // In the app server: serve the fetches.
//!     let worker = Worker::new(client.clone()).serve(fetch_tweets::JOB);
//!     let handle = worker.handle();
//!     tokio::spawn(worker.run());
//!     handle.ready().await?;
//!     // Anywhere: read through the cache.
//!     let tweets = fetch_tweets("bob").await?;
//!     // cacheback's `fetch_tweets.job.invalidate("bob")`:
//!     client.job(&fetch_tweets::JOB).invalidate(&("bob".to_string(),)).await?;
//!     Ok(())
//! }
//! ```
//!
//! Args and data are encoded with the convention every cachebackd client shares
//! (see [`encode_args`]), so a Rust reader and a Python worker use the same items.

#![warn(missing_docs)]

mod client;
mod credentials;
mod daemons;
mod error;
mod fetched;
mod handle;
mod job;
mod near;
mod time;
mod worker;

// The `#[cacheback]` expansion names this crate `::cacheback`, also inside it.
extern crate self as cacheback;

pub use cacheback_macros::cacheback;
/// The canonical args codec lives in the protocol crate, so that the daemon's tools share
/// it without depending on this client.
pub use cachebackd_proto::args::{decode_args, encode_args};
pub use client::{
    current_client, set_default_client, with_client, Client, ClientBuilder, Transport, DEFAULT_URL,
    URL_ENV,
};
pub use credentials::{
    CallCredentials, TlsConfig, TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV, TOKEN_ENV,
};
pub use error::{Error, Result};
pub use fetched::{FetchContext, FetchReason, Fetched};
pub use handle::{Invalidated, Item, ItemState, JobHandle, Read};
pub use job::{BoxError, Job, JobConfig};
pub use near::{NearCacheStats, MAX_NEAR_CACHE_ITEMS};
pub use worker::{AnswerRefused, Worker, WorkerHandle};

/// Whether `name` is a valid job name: 1 to 128 bytes of `[A-Za-z0-9_.:-]`. A `const
/// fn`, so that `#[cacheback]` checks its generated names at compile time.
///
/// ```
/// assert!(cacheback::is_valid_job_name("myapp::tweets::fetch_tweets"));
/// assert!(!cacheback::is_valid_job_name("user tweets"));
/// assert!(!cacheback::is_valid_job_name(""));
/// ```
pub const fn is_valid_job_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')) {
            return false;
        }
        i += 1;
    }
    true
}

/// What `#[cacheback]` expansions use; not a public API.
#[doc(hidden)]
pub mod __private {
    /// Splits a fetch function's return type into the job's `Output` and `Error`.
    pub trait FetchReturn {
        type Output;
        type Error;
    }

    impl<T, E> FetchReturn for Result<T, E> {
        type Output = T;
        type Error = E;
    }
}
