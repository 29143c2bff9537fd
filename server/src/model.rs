//! The daemon's vocabulary: validated names and keys, job configs and limits. Values are
//! checked once, at the edge, so that the engine can trust them.

use std::fmt;
use std::time::Duration;

use cachebackd_proto::wire;

use crate::error::Error;

/// The size limits the daemon enforces on what it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest job name, in bytes.
    pub max_job_name_bytes: usize,
    /// Longest `args`, in bytes (exactly this many are accepted).
    pub max_args_bytes: usize,
    /// Longest `data`, in bytes (exactly this many are accepted).
    pub max_data_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_job_name_bytes: wire::MAX_JOB_NAME_BYTES,
            max_args_bytes: wire::MAX_ARGS_BYTES,
            max_data_bytes: wire::MAX_DATA_BYTES,
        }
    }
}

impl Limits {
    /// Largest gRPC message the daemon must carry: data plus args plus framing.
    pub fn max_message_bytes(&self) -> usize {
        self.max_data_bytes
            .saturating_add(self.max_args_bytes)
            .saturating_add(wire::MESSAGE_OVERHEAD_BYTES)
    }

    /// Checks `args` against the limit.
    pub fn check_args(&self, args: &[u8]) -> Result<(), Error> {
        if args.len() > self.max_args_bytes {
            return Err(Error::InvalidArgument(format!(
                "args are {} bytes, over the limit of {} bytes",
                args.len(),
                self.max_args_bytes
            )));
        }
        Ok(())
    }

    /// Checks `data` against the limit.
    pub fn check_data(&self, data: &[u8]) -> Result<(), Error> {
        if data.len() > self.max_data_bytes {
            return Err(Error::InvalidArgument(format!(
                "data is {} bytes, over the limit of {} bytes",
                data.len(),
                self.max_data_bytes
            )));
        }
        Ok(())
    }
}

/// A job's name: 1 to `max_job_name_bytes` bytes of `[A-Za-z0-9_.:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct JobName(String);

/// Quoted like the text it is (`"tweets"`), so messages built with `{:?}` never show
/// Rust's `JobName("tweets")`.
impl fmt::Debug for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl JobName {
    /// Validates a name against the allowed alphabet and the length limit.
    pub(crate) fn parse(name: &str, limits: &Limits) -> Result<JobName, Error> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("job name is empty".into()));
        }
        if name.len() > limits.max_job_name_bytes {
            return Err(Error::InvalidArgument(format!(
                "job name is {} bytes, over the limit of {} bytes",
                name.len(),
                limits.max_job_name_bytes
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(Error::InvalidArgument(format!(
                "job name {name:?} has the character {c:?}; allowed are [A-Za-z0-9_.:-]"
            )));
        }
        Ok(JobName(name.to_owned()))
    }

    /// A name read back from our own store, which only ever holds validated names.
    pub(crate) fn from_stored(name: String) -> JobName {
        JobName(name)
    }

    /// The name as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets a map keyed by `JobName` be searched with a plain `&str` (the names hash alike).
impl std::borrow::Borrow<str> for JobName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An item's address, `(job, args)`, laid out as it is keyed on disk: job name, 0x00, args.
/// The job name never holds a 0x00, so the layout is unambiguous and a job's items share
/// one key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ItemKey(Vec<u8>);

impl ItemKey {
    /// The key of `args` within `job`.
    pub(crate) fn new(job: &JobName, args: &[u8]) -> ItemKey {
        let mut key = Vec::with_capacity(job.as_str().len() + 1 + args.len());
        key.extend_from_slice(job.as_str().as_bytes());
        key.push(0);
        key.extend_from_slice(args);
        ItemKey(key)
    }

    /// The prefix shared by every item of `job`.
    pub(crate) fn job_prefix(job: &JobName) -> Vec<u8> {
        let mut prefix = job.as_str().as_bytes().to_vec();
        prefix.push(0);
        prefix
    }

    /// The key as stored.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The job part of the key.
    pub(crate) fn job_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        &self.0[..end]
    }

    /// The args part of the key.
    pub(crate) fn args(&self) -> &[u8] {
        match self.0.iter().position(|&b| b == 0) {
            Some(i) => &self.0[i + 1..],
            None => &[],
        }
    }
}

/// Lets a map keyed by `ItemKey` be searched with a key as the store holds it (the
/// bytes hash alike).
impl std::borrow::Borrow<[u8]> for ItemKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

/// A job's effective configuration, every default filled in (PROTOCOL.md `JobConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobConfig {
    /// How long fetched data is fresh.
    pub lifetime: Duration,
    /// How long one fetch may take, queueing included, before it counts as lost.
    pub refresh_timeout: Duration,
    /// Whether a miss waits for a synchronous fetch.
    pub fetch_on_miss: bool,
    /// A stale item older than this (age since `stored_at`) is fetched synchronously;
    /// `None` = never.
    pub fetch_on_stale_threshold: Option<Duration>,
    /// An item older than this, since it was stored, is gone.
    pub cache_ttl: Duration,
    /// XFetch early refresh of fresh hits; `None` = off.
    pub early_refresh_beta: Option<Beta>,
    /// Freshness of a `FetchedAbsent` without a lifetime; `None` = the job's lifetime.
    pub absent_lifetime: Option<Duration>,
    /// How long a failed fetch of a missing item is remembered; `None` = off.
    pub error_ttl: Option<Duration>,
}

impl JobConfig {
    /// Freshness of a stored absence that carries no lifetime of its own.
    pub fn absent_lifetime(&self) -> Duration {
        self.absent_lifetime.unwrap_or(self.lifetime)
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            lifetime: wire::JOB_LIFETIME,
            refresh_timeout: wire::JOB_REFRESH_TIMEOUT,
            fetch_on_miss: wire::JOB_FETCH_ON_MISS,
            fetch_on_stale_threshold: None,
            cache_ttl: wire::JOB_CACHE_TTL,
            early_refresh_beta: None,
            absent_lifetime: None,
            error_ttl: None,
        }
    }
}

/// Longest span the daemon accepts anywhere (a century), so time arithmetic cannot overflow.
pub(crate) const MAX_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Longest `refresh_timeout` a Register may set: a fetch, and its place in the wait queue,
/// is never held longer than this.
pub(crate) const MAX_REFRESH_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest worker error message passed on to callers and into logs, in bytes.
pub(crate) const MAX_ERROR_MESSAGE: usize = 1024;

/// Why a fetch was asked for (PROTOCOL.md `FetchReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchReason {
    /// The item was not cached.
    Miss,
    /// The item was stale.
    Stale,
    /// The item was invalidated.
    Invalidated,
    /// A fresh item was refreshed ahead of its expiry (XFetch).
    Early,
}

/// An item's freshness as a Get reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemState {
    /// Within its lifetime.
    Fresh,
    /// Past its lifetime, still within `cache_ttl`.
    Stale,
    /// Not cached (or past `cache_ttl`).
    Miss,
}

/// XFetch's `beta` (`JobConfig.early_refresh_beta`): greater than zero and finite, checked
/// once, so that the policy's arithmetic never meets a NaN or an infinity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beta(f64);

// A `Beta` is never NaN, so equality is total.
impl Eq for Beta {}

impl Beta {
    /// Accepts a value > 0 and finite.
    pub fn new(beta: f64) -> Result<Beta, Error> {
        if beta.is_finite() && beta > 0.0 {
            Ok(Beta(beta))
        } else {
            Err(Error::InvalidArgument(format!(
                "JobConfig.early_refresh_beta must be greater than 0 and finite, not {beta}"
            )))
        }
    }

    /// The value.
    pub fn get(self) -> f64 {
        self.0
    }
}

/// Most tags one item may carry.
pub(crate) const MAX_TAGS_PER_ITEM: usize = 32;
/// Most tags one InvalidateTags may name.
pub(crate) const MAX_TAGS_PER_CALL: usize = 100;
/// Longest tag, in bytes (job names are 128 by default; a tag never exceeds this).
pub(crate) const MAX_TAG_BYTES: usize = 255;
/// Longest validator, in bytes.
pub(crate) const MAX_VALIDATOR_BYTES: usize = 256;

/// A tag on items (`InvalidateTags`): spelled like a job name, so the same rules and the
/// same message apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tag(String);

impl Tag {
    /// Validates a tag as a job name is validated.
    pub(crate) fn parse(tag: &str, limits: &Limits) -> Result<Tag, Error> {
        let tag = JobName::parse(tag, limits)
            .map(|n| Tag(n.0))
            .map_err(|e| Error::InvalidArgument(e.to_string().replacen("job name", "tag", 1)))?;
        // An item record keeps a tag's length in one byte, whatever job names are allowed.
        if tag.0.len() > MAX_TAG_BYTES {
            return Err(Error::InvalidArgument(format!(
                "tag is {} bytes, over the limit of {MAX_TAG_BYTES} bytes",
                tag.0.len()
            )));
        }
        Ok(tag)
    }

    /// Validates an item's tags: at most [`MAX_TAGS_PER_ITEM`], each well formed; duplicates
    /// are kept once.
    pub(crate) fn parse_item_tags(tags: &[String], limits: &Limits) -> Result<Vec<Tag>, Error> {
        if tags.len() > MAX_TAGS_PER_ITEM {
            return Err(Error::InvalidArgument(format!(
                "{} tags on one item, over the limit of {MAX_TAGS_PER_ITEM}",
                tags.len()
            )));
        }
        Tag::parse_set(tags, limits)
    }

    /// Validates every tag of `tags`, sorted, each kept once.
    pub(crate) fn parse_set(tags: &[String], limits: &Limits) -> Result<Vec<Tag>, Error> {
        let mut parsed = tags
            .iter()
            .map(|t| Tag::parse(t, limits))
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        Ok(parsed)
    }

    /// A tag read back from our own store, which only ever holds validated tags.
    pub(crate) fn from_stored(tag: String) -> Tag {
        Tag(tag)
    }

    /// The tag as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Tag {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validator (`FetchedValue.validator`): opaque, at most [`MAX_VALIDATOR_BYTES`].
pub(crate) fn check_validator(validator: &[u8]) -> Result<(), Error> {
    if validator.len() > MAX_VALIDATOR_BYTES {
        return Err(Error::InvalidArgument(format!(
            "validator is {} bytes, over the limit of {MAX_VALIDATOR_BYTES} bytes",
            validator.len()
        )));
    }
    Ok(())
}
