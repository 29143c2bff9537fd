//! One error type for the whole client, so that callers match on what went wrong and
//! still reach the daemon's `tonic::Status` when there was one.

/// Everything that can go wrong when talking to cachebackd.
///
/// A call that reached the daemon and was refused keeps the daemon's
/// [`tonic::Status`] (code and message): see [`Error::status`] and [`Error::code`].
///
/// ```
/// # async fn demo(client: cacheback::Client) {
/// # #[derive(Clone)] struct UserTweets;
/// # impl cacheback::Job for UserTweets {
/// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
/// #     const NAME: &'static str = "tweets";
/// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
/// # }
/// match client.job(&UserTweets).get(&"bob".to_string()).await {
///     Ok(tweets) => println!("{tweets:?}"),
///     Err(e) if e.code() == Some(tonic::Code::NotFound) => println!("no worker ever registered"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is neither `http://host:port` nor `unix:/path`.
    #[error("invalid cachebackd URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },

    /// The credentials cannot be used as given (a token that would travel in plaintext to
    /// another machine, or one that cannot be metadata). The message never holds the token.
    #[error("cannot call cachebackd at {url} with these credentials: {reason}")]
    Credentials {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },

    /// The TLS settings cannot be used (a file that cannot be read, a half identity).
    #[error("cachebackd TLS settings: {reason}")]
    Tls {
        /// Why.
        reason: String,
    },

    /// The connection to the daemon could not be set up.
    #[error("cannot connect to cachebackd at {url}: {source}")]
    Connect {
        /// The URL connected to.
        url: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },

    /// None of several daemons could be reached (each was tried once, in turn): the
    /// connection refused or broken. Keeps the last transport failure's status, if
    /// there was a call.
    #[error("no cachebackd daemon answered {rpc} (tried {}): {reason}", .tried.join(", "))]
    NoDaemon {
        /// The RPC (`Get`, ...), or `connect`.
        rpc: &'static str,
        /// The URLs tried, in the order tried.
        tried: Vec<String>,
        /// The last failure.
        reason: String,
        /// The last call's status (its code is `UNAVAILABLE` for a refused connection).
        status: Option<Box<tonic::Status>>,
    },

    /// The daemon answered the call with a non-OK status (boxed: a `Status` is large).
    #[error("cachebackd refused {rpc} of job {job:?}: {:?}: {}", .status.code(), .status.message())]
    Status {
        /// The RPC: `Get`, `Set`, `Invalidate`, `Delete` or `RegisterJob`.
        rpc: &'static str,
        /// The job's name.
        job: String,
        /// The daemon's answer.
        status: Box<tonic::Status>,
    },

    /// The arguments could not be encoded as the JSON array of positional arguments.
    #[error("cannot encode the args of job {job:?}: {source}")]
    EncodeArgs {
        /// The job's name.
        job: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// The data could not be encoded as JSON.
    #[error("cannot encode the data of job {job:?}: {source}")]
    EncodeData {
        /// The job's name.
        job: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// The cached data did not decode as the job's `Output` (a worker in another
    /// language, or an older version of the job, stored something else).
    #[error("cannot decode the cached data of job {job:?}: {source}")]
    DecodeData {
        /// The job's name.
        job: String,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },

    /// The daemon answered something the protocol does not allow.
    #[error("protocol violation by cachebackd: {0}")]
    Protocol(String),

    /// A call that asked for a synchronous fetch on a miss got MISS back.
    #[error("cachebackd answered MISS for job {job:?} although the call asked to fetch on a miss")]
    UnexpectedMiss {
        /// The job's name.
        job: String,
    },

    /// [`set_default_client`](crate::set_default_client) was called after the default
    /// client had been set (or built from the environment by a first call).
    #[error("the default cachebackd client is already set")]
    DefaultClientAlreadySet,

    /// The worker stopped (or failed) before the awaited event happened.
    #[error("the worker has stopped")]
    WorkerStopped,

    /// A task of the worker runtime panicked: a bug in this crate.
    #[error("worker task failed: {0}")]
    WorkerTask(String),
}

impl Error {
    /// The daemon's status, when the daemon answered the call with one.
    ///
    /// ```
    /// # fn demo(e: &cacheback::Error) {
    /// if let Some(status) = e.status() {
    ///     eprintln!("daemon said {:?}: {}", status.code(), status.message());
    /// }
    /// # }
    /// ```
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status { status, .. } => Some(status),
            Error::NoDaemon {
                status: Some(status),
                ..
            } => Some(status),
            _ => None,
        }
    }

    /// The gRPC code of the daemon's status, when there was one.
    ///
    /// ```
    /// # fn demo(e: &cacheback::Error) -> bool {
    /// e.code() == Some(tonic::Code::Unavailable) // the fetch failed: no stale data to serve
    /// # }
    /// ```
    pub fn code(&self) -> Option<tonic::Code> {
        self.status().map(tonic::Status::code)
    }

    pub(crate) fn status_of(rpc: &'static str, job: &str, status: tonic::Status) -> Self {
        Error::Status {
            rpc,
            job: job.to_owned(),
            status: Box::new(status),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_code_and_message() {
        let error = Error::status_of("Get", "tweets", tonic::Status::not_found("no such job"));
        assert_eq!(
            error.to_string(),
            r#"cachebackd refused Get of job "tweets": NotFound: no such job"#
        );
        assert_eq!(error.code(), Some(tonic::Code::NotFound));
    }
}
