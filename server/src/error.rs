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
    /// The store failed (an I/O error, or a store that cannot be used).
    #[error("store: {0}")]
    Store(String),
    /// The store cannot take a write for want of space (disk full, quota): reads go on.
    #[error("store: {0}")]
    StoreFull(String),
    /// A Register of a new job past `max_jobs`.
    #[error("the daemon knows {max} jobs already, its limit (max_jobs): job {job:?} is not taken")]
    TooManyJobs {
        /// The new job.
        job: String,
        /// The limit.
        max: usize,
    },
    /// Every job's queue together holds the most fetches the daemon lets wait.
    #[error("{capacity} fetches are waiting for a worker across all jobs already, the daemon's limit (max_queued_fetches)")]
    QueuesFull {
        /// The limit across jobs.
        capacity: usize,
    },
    /// A worker holds every slot with lost fetches and answers nothing: its stream ends.
    #[error("{0}")]
    WorkerStuck(String),
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
        match e {
            sled::Error::Io(io) => Error::from(io),
            other => Error::Store(other.to_string()),
        }
    }
}

/// An I/O error of the store, told as the OS tells it ("No space left on device (os error
/// 28)"), never as Rust's debug text; want of space is its own kind.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc_codes::ENOSPC | libc_codes::EDQUOT) => Error::StoreFull(e.to_string()),
            _ => Error::Store(e.to_string()),
        }
    }
}

/// The two errno values of want of space (Linux numbering, as std reports them).
mod libc_codes {
    pub(super) const ENOSPC: i32 = 28;
    pub(super) const EDQUOT: i32 = 122;
}
