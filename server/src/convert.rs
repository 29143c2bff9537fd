//! Every conversion between the protobuf messages and the daemon's own types, in both
//! directions: validation of what comes in (spans, job configs, worker answers) and the
//! shape of what goes out. The services and the worker stream call these, so the wire's
//! field names and limits are read in one place.

use std::time::{Duration, SystemTime};

use cachebackd_proto::v1::{self as pb, daemon_message, fetch_result};
use tonic::Status;

use crate::counters::JobMetrics;
use crate::engine::GetOutcome;
use crate::error::Error;
use crate::model::{
    check_validator, Beta, FetchReason, ItemState, JobConfig, Limits, Tag, MAX_ERROR_MESSAGE,
    MAX_REFRESH_TIMEOUT, MAX_SPAN, MAX_TAGS_PER_CALL,
};
use crate::subscriptions::{Event, EventKind};
use crate::workers::{FetchOrder, Fetched, Outcome};

/// A protobuf Duration as a std one: non-negative, at most a century, and (unless
/// `zero_ok`) not zero.
pub(crate) fn span(
    field: &str,
    d: prost_types::Duration,
    zero_ok: bool,
) -> Result<Duration, Status> {
    let bad = |why: &str| Status::invalid_argument(format!("{field} {why}"));
    let std = Duration::try_from(d).map_err(|_| bad("must not be negative"))?;
    if std > MAX_SPAN {
        return Err(bad("is over the limit of 100 years"));
    }
    if std.is_zero() && !zero_ok {
        return Err(bad("must be more than zero"));
    }
    Ok(std)
}

/// A registration's config with every default (the daemon's `job_defaults`) filled in.
/// Past the field-by-field checks: `refresh_timeout` at most [`MAX_REFRESH_TIMEOUT`] (a
/// fetch and its place in the queue are never held longer), and `cache_ttl` at least the
/// lifetime (an item gone before it is stale could never be served; a `cache_ttl` of 1 ns
/// would make every item a miss).
pub(crate) fn job_config(c: pb::JobConfig, defaults: &JobConfig) -> Result<JobConfig, Status> {
    let d = *defaults;
    let config = JobConfig {
        lifetime: match c.lifetime {
            Some(x) => span("JobConfig.lifetime", x, true)?,
            None => d.lifetime,
        },
        refresh_timeout: match c.refresh_timeout {
            Some(x) => span("JobConfig.refresh_timeout", x, false)?,
            None => d.refresh_timeout,
        },
        fetch_on_miss: c.fetch_on_miss.unwrap_or(d.fetch_on_miss),
        fetch_on_stale_threshold: match c.fetch_on_stale_threshold {
            Some(x) => Some(span("JobConfig.fetch_on_stale_threshold", x, true)?),
            None => d.fetch_on_stale_threshold,
        },
        cache_ttl: match c.cache_ttl {
            Some(x) => span("JobConfig.cache_ttl", x, false)?,
            None => d.cache_ttl,
        },
        early_refresh_beta: match c.early_refresh_beta {
            Some(beta) => Some(Beta::new(beta)?),
            None => d.early_refresh_beta,
        },
        absent_lifetime: match c.absent_lifetime {
            Some(x) => Some(span("JobConfig.absent_lifetime", x, true)?),
            None => d.absent_lifetime,
        },
        error_ttl: match c.error_ttl {
            Some(x) => Some(span("JobConfig.error_ttl", x, false)?),
            None => d.error_ttl,
        },
    };
    let human = humantime::format_duration;
    if config.refresh_timeout > MAX_REFRESH_TIMEOUT {
        return Err(Status::invalid_argument(format!(
            "JobConfig.refresh_timeout {} is over the limit of {}",
            human(config.refresh_timeout),
            human(MAX_REFRESH_TIMEOUT)
        )));
    }
    if config.cache_ttl < config.lifetime {
        return Err(Status::invalid_argument(format!(
            "JobConfig.cache_ttl ({}) must be at least the lifetime ({})",
            human(config.cache_ttl),
            human(config.lifetime)
        )));
    }
    Ok(config)
}

/// A worker's error message as passed on: at most [`MAX_ERROR_MESSAGE`] bytes (it goes
/// into every waiting caller's status and into the log).
pub(crate) fn clip_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("... (cut)");
    }
    message
}

/// The effective config as sent in `Registered.config` and `JobInfo.config`.
pub(crate) fn job_config_to_proto(c: &JobConfig) -> pb::JobConfig {
    let d = |x: Duration| prost_types::Duration::try_from(x).unwrap_or_default();
    pb::JobConfig {
        lifetime: Some(d(c.lifetime)),
        refresh_timeout: Some(d(c.refresh_timeout)),
        fetch_on_miss: Some(c.fetch_on_miss),
        fetch_on_stale_threshold: c.fetch_on_stale_threshold.map(d),
        cache_ttl: Some(d(c.cache_ttl)),
        // Filled in (the job's lifetime when unset); the off settings stay unset.
        early_refresh_beta: c.early_refresh_beta.map(Beta::get),
        absent_lifetime: Some(d(c.absent_lifetime())),
        error_ttl: c.error_ttl.map(d),
    }
}

fn fetch_reason(r: FetchReason) -> pb::FetchReason {
    match r {
        FetchReason::Miss => pb::FetchReason::Miss,
        FetchReason::Stale => pb::FetchReason::Stale,
        FetchReason::Invalidated => pb::FetchReason::Invalidated,
        FetchReason::Early => pb::FetchReason::Early,
    }
}

pub(crate) fn get_response(o: GetOutcome) -> pb::GetResponse {
    let ts = |t: SystemTime| Some(prost_types::Timestamp::from(t));
    pb::GetResponse {
        state: match o.state {
            ItemState::Fresh => pb::ItemState::Fresh,
            ItemState::Stale => pb::ItemState::Stale,
            ItemState::Miss => pb::ItemState::Miss,
        } as i32,
        data: o.data,
        stored_at: o.times.and_then(|t| ts(t.stored_at)),
        expires_at: o.times.and_then(|t| ts(t.expires_at)),
        refresh_scheduled: o.refresh_scheduled,
        fetched: o.fetched,
        absent: o.absent,
        tags: o.tags.into_iter().map(|t| t.as_str().to_owned()).collect(),
    }
}

/// A fetch order as its `FetchRequest`.
fn fetch_request_of(order: FetchOrder) -> pb::FetchRequest {
    pb::FetchRequest {
        request_id: order.request_id.to_string(),
        args: order.args.to_vec(),
        reason: fetch_reason(order.reason) as i32,
        deadline: Some(order.deadline.into()),
        validator: order.validator.to_vec(),
    }
}

/// A fetch order as its `FetchRequest` on the worker's stream.
pub(crate) fn fetch_request(order: FetchOrder) -> pb::DaemonMessage {
    pb::DaemonMessage {
        kind: Some(daemon_message::Kind::Fetch(fetch_request_of(order))),
    }
}

/// Several fetch orders as one `FetchBatch` (a worker whose `max_batch` > 1).
pub(crate) fn fetch_batch(orders: Vec<FetchOrder>) -> pb::DaemonMessage {
    pb::DaemonMessage {
        kind: Some(daemon_message::Kind::Batch(pb::FetchBatch {
            fetches: orders.into_iter().map(fetch_request_of).collect(),
        })),
    }
}

/// A worker's `FetchResult.outcome` as the registry takes it: every field checked. A bad
/// field (data over the data limit, a lifetime out of range, a validator over 256 bytes, a
/// bad or 33rd tag) makes the answer a failed fetch with that message: nothing is stored,
/// and the stream stays open.
pub(crate) fn fetch_outcome(outcome: Option<fetch_result::Outcome>, limits: &Limits) -> Outcome {
    let lifetime = |field: &str, d: Option<prost_types::Duration>| {
        d.map(|d| span(field, d, true))
            .transpose()
            .map_err(|s| Error::InvalidArgument(s.message().to_owned()))
    };
    let checked = match outcome {
        Some(fetch_result::Outcome::Value(v)) => (|| {
            // Checked here, at the edge, as well as where the fetch lands, so that the
            // worker is told (`DaemonMessage.refused`) like for any other bad field.
            if v.data.len() > limits.max_data_bytes {
                return Err(Error::InvalidArgument(format!(
                    "the worker answered {} bytes of data, over the limit of {} bytes (max_data_bytes)",
                    v.data.len(),
                    limits.max_data_bytes
                )));
            }
            check_validator(&v.validator)?;
            Ok(Fetched::Value {
                lifetime: lifetime("FetchedValue.lifetime", v.lifetime)?,
                tags: Tag::parse_item_tags(&v.tags, limits)?,
                validator: v.validator,
                data: v.data,
            })
        })(),
        Some(fetch_result::Outcome::Absent(a)) => (|| {
            Ok(Fetched::Absent {
                lifetime: lifetime("FetchedAbsent.lifetime", a.lifetime)?,
                tags: Tag::parse_item_tags(&a.tags, limits)?,
            })
        })(),
        Some(fetch_result::Outcome::NotModified(n)) => (|| {
            Ok(Fetched::NotModified {
                lifetime: lifetime("NotModified.lifetime", n.lifetime)?,
            })
        })(),
        Some(fetch_result::Outcome::Error(e)) => return Err(clip_message(e.message)),
        None => return Err("the worker answered with neither a value nor an error".into()),
    };
    checked.map_err(|e: Error| e.to_string())
}

/// `InvalidateTagsRequest.tags`: 1 to 100, each well formed; duplicates count once.
pub(crate) fn tags_to_invalidate(tags: &[String], limits: &Limits) -> Result<Vec<Tag>, Error> {
    if tags.is_empty() || tags.len() > MAX_TAGS_PER_CALL {
        return Err(Error::InvalidArgument(format!(
            "InvalidateTags takes 1 to {MAX_TAGS_PER_CALL} tags, not {}",
            tags.len()
        )));
    }
    Tag::parse_set(tags, limits)
}

/// A job's counters as `ListJobs` and `Stats` report them.
pub(crate) fn job_counters(m: &JobMetrics) -> pb::JobCounters {
    pb::JobCounters {
        gets_fresh: m.gets_fresh.get(),
        gets_stale: m.gets_stale.get(),
        gets_miss: m.gets_miss.get(),
        sync_fetches: m.sync_fetches.get(),
        refreshes_scheduled: m.refreshes_scheduled.get(),
        fetches_succeeded: m.fetches_succeeded.get(),
        fetches_failed: m.fetches_failed.get(),
        fetches_retried: m.fetches_retried.get(),
        fetches_in_flight: m.fetches_in_flight.get().max(0) as u64,
    }
}

/// A near cache's event as sent down its Subscribe stream.
pub(crate) fn item_event(e: Event) -> pb::ItemEvent {
    let kind = match e.kind {
        EventKind::Changed => pb::ItemEventKind::Changed,
        EventKind::Invalidated => pb::ItemEventKind::Invalidated,
        EventKind::Removed => pb::ItemEventKind::Removed,
    };
    pb::ItemEvent {
        item: Some(pb::ItemRef {
            job: String::from_utf8_lossy(e.key.job_bytes()).into_owned(),
            args: e.key.args().to_vec(),
        }),
        kind: kind as i32,
        at: Some(e.at.into()),
    }
}

/// The RESET that ends a Subscribe stream which fell behind.
pub(crate) fn reset_event(at: SystemTime) -> pb::ItemEvent {
    pb::ItemEvent {
        item: None,
        kind: pb::ItemEventKind::Reset as i32,
        at: Some(at.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_bad_field_in_a_worker_answer_is_a_failed_fetch_saying_which() {
        let value = |validator: Vec<u8>, tags: Vec<String>| {
            Some(fetch_result::Outcome::Value(pb::FetchedValue {
                data: b"d".to_vec(),
                validator,
                tags,
                ..Default::default()
            }))
        };
        let err = fetch_outcome(value(vec![0; 257], vec![]), &limits()).unwrap_err();
        assert_eq!(err, "validator is 257 bytes, over the limit of 256 bytes");
        assert!(fetch_outcome(value(vec![0; 256], vec![]), &limits()).is_ok());
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(
            fetch_outcome(value(vec![], many), &limits()).unwrap_err(),
            "33 tags on one item, over the limit of 32"
        );
        assert_eq!(
            fetch_outcome(value(vec![], vec!["a b".into()]), &limits()).unwrap_err(),
            "tag \"a b\" has the character ' '; allowed are [A-Za-z0-9_.:-]"
        );
        assert_eq!(
            fetch_outcome(
                value(vec![], vec!["b".into(), "a".into(), "b".into()]),
                &limits()
            ),
            Ok(Fetched::Value {
                data: b"d".to_vec(),
                lifetime: None,
                validator: vec![],
                tags: vec![Tag::from_stored("a".into()), Tag::from_stored("b".into())],
            })
        );
    }

    #[test]
    fn invalidate_tags_takes_one_to_a_hundred_good_tags() {
        assert!(tags_to_invalidate(&[], &limits()).is_err());
        let hundred: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        assert_eq!(tags_to_invalidate(&hundred, &limits()).unwrap().len(), 100);
        let more: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
        assert!(tags_to_invalidate(&more, &limits()).is_err());
        assert!(tags_to_invalidate(&["".into()], &limits()).is_err());
        // Longer job names may be allowed; a tag still fits its record's length byte.
        let long_names = Limits {
            max_job_name_bytes: 1000,
            ..limits()
        };
        assert!(tags_to_invalidate(&["t".repeat(255)], &long_names).is_ok());
        let err = tags_to_invalidate(&["t".repeat(256)], &long_names).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidArgument("tag is 256 bytes, over the limit of 255 bytes".into())
        );
    }

    #[test]
    fn registered_config_fills_absent_lifetime_and_leaves_the_off_settings_unset() {
        let config = JobConfig {
            lifetime: Duration::from_secs(42),
            ..JobConfig::default()
        };
        let out = job_config_to_proto(&config);
        assert_eq!(
            out.absent_lifetime,
            Some(prost_types::Duration {
                seconds: 42,
                nanos: 0
            })
        );
        assert_eq!(out.early_refresh_beta, None);
        assert_eq!(out.error_ttl, None);
        let bad = pb::JobConfig {
            early_refresh_beta: Some(f64::NAN),
            ..Default::default()
        };
        let status = job_config(bad, &JobConfig::default()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("early_refresh_beta"));
    }
}
