//! What a fetch can answer beyond plain data: django-cacheback's fetch returns data or
//! raises; a cachebackd job may also say the origin has nothing (negative caching), that
//! the stored data is still current (conditional refresh), and attach a validator and tags.

use cachebackd_proto::v1;

/// What a [`Job::fetch_with`](crate::Job::fetch_with) found.
///
/// ```
/// use cacheback::Fetched;
/// // An ETag kept with the data, and a tag to invalidate by.
/// let fetched = Fetched::value(vec!["tweet"])
///     .with_validator(b"\"etag-7\"".to_vec())
///     .with_tags(["user:bob"]);
/// assert!(matches!(fetched, Fetched::Value { .. }));
/// // `None` from the origin becomes an absence: reads get `None` until it expires.
/// assert_eq!(Fetched::<u8>::from(None), Fetched::Absent { tags: vec![] });
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched<T> {
    /// The data, with what is stored alongside it.
    Value {
        /// The data.
        data: T,
        /// Opaque (an ETag, a version, a hash; at most 256 bytes): given back to the next
        /// refresh of the item in [`FetchContext::validator`].
        validator: Option<Vec<u8>>,
        /// The item's tags, for [`Client::invalidate_tags`](crate::Client::invalidate_tags)
        /// (at most 32, each spelled like a job name). Empty: the job's
        /// [`Job::tags`](crate::Job::tags).
        tags: Vec<String>,
    },
    /// The origin has no such data: stored as an absence for the job's
    /// `ABSENT_LIFETIME`, read back as `None`.
    Absent {
        /// The item's tags (empty: the job's [`Job::tags`](crate::Job::tags)).
        tags: Vec<String>,
    },
    /// The data stored for the item is still current: the daemon keeps it (data,
    /// validator, tags) and makes it fresh again. Answer it only when
    /// [`FetchContext::validator`] says what is stored.
    NotModified,
}

impl<T> Fetched<T> {
    /// Plain data, no validator, the job's tags.
    pub fn value(data: T) -> Self {
        Fetched::Value {
            data,
            validator: None,
            tags: Vec::new(),
        }
    }

    /// The same, with `validator` stored alongside (data only; ignored otherwise).
    pub fn with_validator(self, validator: Vec<u8>) -> Self {
        match self {
            Fetched::Value { data, tags, .. } => Fetched::Value {
                data,
                validator: Some(validator),
                tags,
            },
            other => other,
        }
    }

    /// The same, with these tags (data or an absence; ignored for NotModified).
    pub fn with_tags<S: Into<String>>(self, tags: impl IntoIterator<Item = S>) -> Self {
        let tags = tags.into_iter().map(Into::into).collect();
        match self {
            Fetched::Value {
                data, validator, ..
            } => Fetched::Value {
                data,
                validator,
                tags,
            },
            Fetched::Absent { .. } => Fetched::Absent { tags },
            Fetched::NotModified => Fetched::NotModified,
        }
    }
}

/// `Some(data)` is data; `None` is an absence.
impl<T> From<Option<T>> for Fetched<T> {
    fn from(found: Option<T>) -> Self {
        match found {
            Some(data) => Fetched::value(data),
            None => Fetched::Absent { tags: Vec::new() },
        }
    }
}

/// Why the daemon asks for a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchReason {
    /// The item is not cached.
    #[default]
    Miss,
    /// The item is stale (or older than a reader's `max_age`).
    Stale,
    /// The item was invalidated.
    Invalidated,
    /// The item is fresh but hot and near expiry: refreshed early (XFetch).
    Early,
}

/// What the daemon says with a fetch: why, and the validator of the stored data.
///
/// ```
/// let context = cacheback::FetchContext::default();
/// assert_eq!(context.reason, cacheback::FetchReason::Miss);
/// assert!(context.validator.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchContext {
    /// Why it is fetched.
    pub reason: FetchReason,
    /// The stored item's validator, on a refresh of an item that has one: if the origin
    /// says it is still current, answer [`Fetched::NotModified`].
    pub validator: Option<Vec<u8>>,
}

impl FetchContext {
    pub(crate) fn from_request(request: &v1::FetchRequest) -> Self {
        FetchContext {
            reason: match request.reason() {
                v1::FetchReason::Stale => FetchReason::Stale,
                v1::FetchReason::Invalidated => FetchReason::Invalidated,
                v1::FetchReason::Early => FetchReason::Early,
                v1::FetchReason::Miss | v1::FetchReason::Unspecified => FetchReason::Miss,
            },
            validator: (!request.validator.is_empty()).then(|| request.validator.clone()),
        }
    }
}
