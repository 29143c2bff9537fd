//! The `Job` trait: django-cacheback's `Job` class, as a Rust trait.

use std::{future::Future, time::Duration};

use cachebackd_proto::{v1, wire};
use serde::{de::DeserializeOwned, Serialize};

use crate::time::{from_proto_duration, to_proto_duration};
use crate::{FetchContext, Fetched};

/// A boxed error, what a failed fetch is turned into before its message is sent.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a job's items are cached and refreshed (the wire's `JobConfig`).
///
/// A worker sends it when it registers the job; the daemon keeps the latest one.
///
/// ```
/// use std::time::Duration;
/// let config = cacheback::JobConfig {
///     lifetime: Duration::from_secs(1200),
///     fetch_on_miss: false,
///     ..cacheback::JobConfig::DEFAULT
/// };
/// assert_eq!(config.refresh_timeout, Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobConfig {
    /// How long fetched data is fresh.
    pub lifetime: Duration,
    /// How long one fetch may take before it counts as lost; also the fetch deadline.
    pub refresh_timeout: Duration,
    /// `true`: a miss waits for a synchronous fetch. `false`: a miss returns at once
    /// (`None` from [`JobHandle::get`](crate::JobHandle::get)) and fills asynchronously.
    pub fetch_on_miss: bool,
    /// If a stale item is older than this (its age since it was fetched or set, as
    /// django-cacheback counts it), a read fetches synchronously instead of serving it.
    /// `None`: stale data is always served.
    pub fetch_on_stale_threshold: Option<Duration>,
    /// Hard limit: an item older than this (since it was stored) is never served.
    pub cache_ttl: Duration,
    /// XFetch early refresh: a read of a fresh item may start one refresh before it
    /// expires, likelier as expiry nears and the longer its last fetch took, so that a hot
    /// item never turns stale. 1.0 is the paper's optimum; larger refreshes earlier; must
    /// be > 0 and finite. `None`: off.
    pub early_refresh_beta: Option<f64>,
    /// How long an absence ([`Fetched::Absent`]) stays fresh. `None`: the lifetime.
    pub absent_lifetime: Option<Duration>,
    /// How long a failed fetch of a missing item is remembered: reads that would wait for
    /// a fetch of it fail at once with the same error meanwhile, sparing a dead origin.
    /// `None`: off.
    pub error_ttl: Option<Duration>,
}

impl JobConfig {
    /// The daemon's defaults ([`cachebackd_proto::wire`]): fresh for 300 s (five minutes,
    /// as the seed says; django-cacheback's own code defaults to 600 s), fetch on miss,
    /// 60 s per fetch, stale data always served, items kept at most 30 days.
    ///
    /// ```
    /// assert_eq!(cacheback::JobConfig::DEFAULT, cacheback::JobConfig::default());
    /// ```
    pub const DEFAULT: JobConfig = JobConfig {
        lifetime: wire::JOB_LIFETIME,
        refresh_timeout: wire::JOB_REFRESH_TIMEOUT,
        fetch_on_miss: wire::JOB_FETCH_ON_MISS,
        fetch_on_stale_threshold: None,
        cache_ttl: wire::JOB_CACHE_TTL,
        early_refresh_beta: None,
        absent_lifetime: None,
        error_ttl: None,
    };

    pub(crate) fn to_proto(self) -> v1::JobConfig {
        v1::JobConfig {
            lifetime: Some(to_proto_duration(self.lifetime)),
            refresh_timeout: Some(to_proto_duration(self.refresh_timeout)),
            fetch_on_miss: Some(self.fetch_on_miss),
            fetch_on_stale_threshold: self.fetch_on_stale_threshold.map(to_proto_duration),
            cache_ttl: Some(to_proto_duration(self.cache_ttl)),
            early_refresh_beta: self.early_refresh_beta,
            absent_lifetime: self.absent_lifetime.map(to_proto_duration),
            error_ttl: self.error_ttl.map(to_proto_duration),
        }
    }

    /// The config as the daemon echoed it; fields it left unset take the defaults.
    pub(crate) fn from_proto(config: v1::JobConfig) -> Self {
        let d = JobConfig::DEFAULT;
        JobConfig {
            lifetime: config.lifetime.map_or(d.lifetime, from_proto_duration),
            refresh_timeout: config
                .refresh_timeout
                .map_or(d.refresh_timeout, from_proto_duration),
            fetch_on_miss: config.fetch_on_miss.unwrap_or(d.fetch_on_miss),
            fetch_on_stale_threshold: config.fetch_on_stale_threshold.map(from_proto_duration),
            cache_ttl: config.cache_ttl.map_or(d.cache_ttl, from_proto_duration),
            early_refresh_beta: config.early_refresh_beta,
            absent_lifetime: config.absent_lifetime.map(from_proto_duration),
            error_ttl: config.error_ttl.map(from_proto_duration),
        }
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig::DEFAULT
    }
}

/// A cached, refreshable piece of slow data: django-cacheback's `Job`.
///
/// `fetch` says how to compute the data; the associated consts say how long it stays
/// fresh and what a miss does; `expiry` and `should_missing_item_be_fetched_synchronously`
/// override those per item, as their cacheback namesakes do. Read items with
/// [`Client::job`](crate::Client::job); serve the fetches with a
/// [`Worker`](crate::Worker).
///
/// `Args` is the list of positional arguments of the fetch, encoded with
/// [`encode_args`](crate::encode_args): a tuple, or a single value that is the one
/// argument (`String` for `fetch(username)`). `Output` travels as JSON, so a worker in
/// another language can fill the same items.
///
/// The seed's `UserTweets` example:
///
/// ```
/// use std::time::Duration;
/// use cacheback::Job;
///
/// struct UserTweets;
///
/// impl Job for UserTweets {
///     type Args = String; // the username
///     type Output = Vec<String>;
///     type Error = std::io::Error;
///
///     const NAME: &'static str = "tweets.UserTweets";
///     const LIFETIME: Duration = Duration::from_secs(600);
///     const FETCH_ON_MISS: bool = false;
///
///     async fn fetch(&self, username: String) -> Result<Vec<String>, std::io::Error> {
///         Ok(vec![format!("hello from {username}")]) // a slow API call in real life
///     }
///
///     // Celebrities' tweets change fast: keep them fresh for one minute only.
///     fn expiry(&self, username: &String) -> Option<Duration> {
///         username.starts_with("celeb_").then_some(Duration::from_secs(60))
///     }
///
///     // Nobody waits for an unknown user's tweets, except the admin's own.
///     fn should_missing_item_be_fetched_synchronously(&self, username: &String) -> bool {
///         username == "admin"
///     }
/// }
/// ```
pub trait Job: Send + Sync + 'static {
    /// The positional arguments of `fetch` (a tuple, or the single argument).
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// The fetched data, stored as JSON.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// Why a fetch failed; its message (with its sources) is what waiting readers see.
    type Error: Into<BoxError> + Send + 'static;

    /// The job's name on the daemon: `[A-Za-z0-9_.:-]`, at most 128 bytes. Every
    /// client and worker of the job, in any language, uses the same name.
    const NAME: &'static str;
    /// How long fetched data is fresh (cacheback's `lifetime`).
    const LIFETIME: Duration = JobConfig::DEFAULT.lifetime;
    /// How long one fetch may take before another may start (cacheback's `refresh_timeout`).
    const REFRESH_TIMEOUT: Duration = JobConfig::DEFAULT.refresh_timeout;
    /// Whether a miss waits for a synchronous fetch (cacheback's `fetch_on_miss`).
    const FETCH_ON_MISS: bool = JobConfig::DEFAULT.fetch_on_miss;
    /// How old (since it was fetched or set) a stale item may be before a read fetches it
    /// synchronously (cacheback's `fetch_on_stale_threshold`); `None`: never.
    const FETCH_ON_STALE_THRESHOLD: Option<Duration> = JobConfig::DEFAULT.fetch_on_stale_threshold;
    /// How long an item is kept at all (cacheback's `cache_ttl`).
    const CACHE_TTL: Duration = JobConfig::DEFAULT.cache_ttl;
    /// XFetch's beta for early refresh of hot items (see [`JobConfig::early_refresh_beta`]);
    /// `None`: off.
    const EARLY_REFRESH_BETA: Option<f64> = JobConfig::DEFAULT.early_refresh_beta;
    /// How long an absence ([`Fetched::Absent`]) stays fresh; `None`: the lifetime.
    const ABSENT_LIFETIME: Option<Duration> = JobConfig::DEFAULT.absent_lifetime;
    /// How long a failed fetch of a missing item is remembered (see
    /// [`JobConfig::error_ttl`]); `None`: off.
    const ERROR_TTL: Option<Duration> = JobConfig::DEFAULT.error_ttl;
    /// Most fetches the daemon may hand this job's worker in one message, answered by
    /// [`fetch_many`](Job::fetch_many) with one origin call (SQL `IN`, a multi-get API).
    /// 1: one fetch at a time.
    const MAX_BATCH: u32 = 1;

    /// Fetches the data for `args`: the slow part, run by a [`Worker`](crate::Worker)
    /// when the daemon asks for it. An error (or a panic) is reported to the daemon
    /// as a failed fetch; stale data, if any, keeps being served.
    ///
    /// Implement it as an `async fn`; the future must be `Send`.
    fn fetch(
        &self,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// The job's name; [`Job::NAME`] unless one type serves several jobs.
    ///
    /// ```
    /// # use cacheback::Job;
    /// struct Tenant(&'static str);
    /// impl Job for Tenant {
    ///     type Args = u64; type Output = String; type Error = std::convert::Infallible;
    ///     const NAME: &'static str = "tenant";
    ///     fn name(&self) -> &str { self.0 }
    ///     async fn fetch(&self, id: u64) -> Result<String, Self::Error> { Ok(id.to_string()) }
    /// }
    /// assert_eq!(Tenant("tenant.acme").name(), "tenant.acme");
    /// ```
    fn name(&self) -> &str {
        Self::NAME
    }

    /// The job's config, sent when a worker registers it: by default built from the
    /// associated consts.
    ///
    /// ```
    /// # use cacheback::Job;
    /// # struct Ping;
    /// # impl Job for Ping {
    /// #     type Args = (); type Output = u8; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "ping";
    /// #     async fn fetch(&self, _: ()) -> Result<u8, Self::Error> { Ok(1) }
    /// # }
    /// assert_eq!(Ping.config(), cacheback::JobConfig::DEFAULT);
    /// ```
    fn config(&self) -> JobConfig {
        JobConfig {
            lifetime: Self::LIFETIME,
            refresh_timeout: Self::REFRESH_TIMEOUT,
            fetch_on_miss: Self::FETCH_ON_MISS,
            fetch_on_stale_threshold: Self::FETCH_ON_STALE_THRESHOLD,
            cache_ttl: Self::CACHE_TTL,
            early_refresh_beta: Self::EARLY_REFRESH_BETA,
            absent_lifetime: Self::ABSENT_LIFETIME,
            error_ttl: Self::ERROR_TTL,
        }
    }

    /// The fetch as the worker runs it: by default [`fetch`](Job::fetch)'s data. Override
    /// it to answer more than data: [`Fetched::Absent`] when the origin has nothing
    /// (negative caching), [`Fetched::NotModified`] when `context.validator` is still
    /// current (conditional refresh), or data with a validator and tags. `fetch` stays
    /// the unconditional fetch it falls back on.
    ///
    /// ```
    /// use cacheback::{FetchContext, Fetched, Job};
    /// struct Profile;
    /// impl Job for Profile {
    ///     type Args = u64; type Output = String; type Error = std::io::Error;
    ///     const NAME: &'static str = "profile";
    ///     async fn fetch(&self, id: u64) -> Result<String, std::io::Error> {
    ///         Ok(format!("user {id}"))
    ///     }
    ///     async fn fetch_with(&self, id: u64, context: FetchContext) -> Result<Fetched<String>, std::io::Error> {
    ///         if id == 0 {
    ///             return Ok(Fetched::Absent { tags: vec![] }); // no such user
    ///         }
    ///         let version = b"v1".to_vec(); // the origin's ETag, in real life
    ///         if context.validator.as_deref() == Some(&version[..]) {
    ///             return Ok(Fetched::NotModified);
    ///         }
    ///         Ok(Fetched::value(self.fetch(id).await?).with_validator(version))
    ///     }
    /// }
    /// # tokio_test_block(async {
    /// let again = FetchContext { validator: Some(b"v1".to_vec()), ..Default::default() };
    /// assert_eq!(Profile.fetch_with(7, again).await.unwrap(), Fetched::NotModified);
    /// assert_eq!(Profile.fetch_with(0, FetchContext::default()).await.unwrap(), Fetched::Absent { tags: vec![] });
    /// # });
    /// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
    /// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    /// # }
    /// ```
    fn fetch_with(
        &self,
        args: Self::Args,
        context: FetchContext,
    ) -> impl Future<Output = Result<Fetched<Self::Output>, Self::Error>> + Send {
        let _ = context;
        async move { Ok(Fetched::value(self.fetch(args).await?)) }
    }

    /// Many fetches at once, when the daemon hands the worker a batch (`MAX_BATCH` > 1):
    /// one result per args, in order. By default each runs as its own
    /// [`fetch_with`](Job::fetch_with), one after another; override it to make one origin
    /// call for all of them.
    ///
    /// ```
    /// use cacheback::{Fetched, Job};
    /// struct Users;
    /// impl Job for Users {
    ///     type Args = u64; type Output = String; type Error = std::io::Error;
    ///     const NAME: &'static str = "users";
    ///     const MAX_BATCH: u32 = 100;
    ///     async fn fetch(&self, id: u64) -> Result<String, std::io::Error> {
    ///         Ok(format!("user {id}"))
    ///     }
    ///     // SELECT ... WHERE id IN (...): one query for the whole batch.
    ///     async fn fetch_many(&self, ids: Vec<u64>) -> Vec<Result<Fetched<String>, std::io::Error>> {
    ///         ids.into_iter().map(|id| Ok(Fetched::value(format!("user {id}")))).collect()
    ///     }
    /// }
    /// ```
    fn fetch_many(
        &self,
        args: Vec<Self::Args>,
    ) -> impl Future<Output = Vec<Result<Fetched<Self::Output>, Self::Error>>> + Send {
        async move {
            let mut results = Vec::with_capacity(args.len());
            for args in args {
                results.push(self.fetch_with(args, FetchContext::default()).await);
            }
            results
        }
    }

    /// The tags of the item of `args` (for [`Client::invalidate_tags`](crate::Client::invalidate_tags)),
    /// stored with what a fetch or a [`set`](crate::JobHandle::set) stores, unless the
    /// fetch gave its own: at most 32, each spelled like a job name. Default: none.
    ///
    /// ```
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// // Everything shown of a user is invalidated together when the user changes.
    /// fn tags(&self, username: &String) -> Vec<String> {
    ///     vec![format!("user:{username}")]
    /// }
    /// # }
    /// assert_eq!(UserTweets.tags(&"bob".into()), vec!["user:bob"]);
    /// ```
    fn tags(&self, args: &Self::Args) -> Vec<String> {
        let _ = args;
        Vec::new()
    }

    /// How long the data fetched (or [`set`](crate::JobHandle::set)) for `args` stays
    /// fresh, when it differs from the job's lifetime (cacheback's `expiry()`). Sent to
    /// the daemon with the value; `None` (the default) keeps the job's lifetime.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use cacheback::Job;
    /// # struct Price;
    /// # impl Job for Price {
    /// #     type Args = String; type Output = f64; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "price";
    /// #     async fn fetch(&self, _: String) -> Result<f64, Self::Error> { Ok(1.0) }
    /// fn expiry(&self, symbol: &String) -> Option<Duration> {
    ///     (symbol == "BTC").then_some(Duration::from_secs(5))
    /// }
    /// # }
    /// assert_eq!(Price.expiry(&"BTC".into()), Some(Duration::from_secs(5)));
    /// ```
    fn expiry(&self, args: &Self::Args) -> Option<Duration> {
        let _ = args;
        None
    }

    /// Whether a read of `args` that misses waits for a synchronous fetch (cacheback's
    /// method of the same name). Sent with every read as the per-call override, so this
    /// process decides; by default the job's `fetch_on_miss`.
    ///
    /// ```
    /// # use cacheback::Job;
    /// # struct Report;
    /// # impl Job for Report {
    /// #     type Args = u32; type Output = String; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "report";
    /// #     async fn fetch(&self, _: u32) -> Result<String, Self::Error> { Ok(String::new()) }
    /// // This year's report is worth waiting for; older ones fill in the background.
    /// fn should_missing_item_be_fetched_synchronously(&self, year: &u32) -> bool {
    ///     *year >= 2025
    /// }
    /// # }
    /// assert!(!Report.should_missing_item_be_fetched_synchronously(&2019));
    /// ```
    fn should_missing_item_be_fetched_synchronously(&self, args: &Self::Args) -> bool {
        let _ = args;
        self.config().fetch_on_miss
    }
}
