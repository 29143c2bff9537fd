//! The daemon's errors. Every module returns these; `service` maps them to gRPC statuses in
//! one place (`From<Error> for tonic::Status`, in `service.rs`).

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed (bad name, over a limit, bad config).
    #[error("{0}")]
    InvalidArgument(String),
    /// The job was never registered.
    #[error("job {0:?} is not registered")]
    UnknownJob(String),
    /// A stream message came in the wrong order.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The fetch failed: the worker's message, a timeout, or no worker.
    #[error("{0}")]
    FetchFailed(String),
    /// The job's queue of fetches waiting for a worker is full.
    #[error("job {job:?} has {capacity} fetches waiting for a worker already")]
    QueueFull {
        /// The job.
        job: String,
        /// The queue's capacity.
        capacity: usize,
    },
    /// The caller's own deadline passed first.
    #[error("the caller's deadline passed before the fetch finished")]
    DeadlineExceeded,
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// A bug or a panic inside the daemon; the request may be retried.
    #[error("internal error: {0}")]
    Internal(String),
    /// A Subscribe stream asked for more items than one stream may hold.
    #[error("a Subscribe stream holds at most {limit} items")]
    TooManySubscriptions {
        /// The limit.
        limit: usize,
    },
    /// The daemon is shutting down.
    #[error("cachebackd is shutting down")]
    ShuttingDown,
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Store(e.to_string())
    }
}
