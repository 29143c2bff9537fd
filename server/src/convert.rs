//! Every conversion between the protobuf messages and the daemon's own types, in both
//! directions: validation of what comes in (spans, job configs, worker answers) and the
//! shape of what goes out. The services and the worker stream call these, so the wire's
//! field names and limits are read in one place.

use std::time::{Duration, SystemTime};

use cachebackd_proto::v1::{self as pb, daemon_message, fetch_result};
use tonic::Status;

use crate::counters::JobMetrics;
use crate::engine::GetOutcome;
use crate::model::{
    FetchReason, ItemState, JobConfig, MAX_ERROR_MESSAGE, MAX_REFRESH_TIMEOUT, MAX_SPAN,
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
fn clip_message(mut message: String) -> String {
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
        ..Default::default()
    }
}

fn fetch_reason(r: FetchReason) -> pb::FetchReason {
    match r {
        FetchReason::Miss => pb::FetchReason::Miss,
        FetchReason::Stale => pb::FetchReason::Stale,
        FetchReason::Invalidated => pb::FetchReason::Invalidated,
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
        ..Default::default()
    }
}

/// A fetch order as its `FetchRequest` on the worker's stream.
pub(crate) fn fetch_request(order: FetchOrder) -> pb::DaemonMessage {
    pb::DaemonMessage {
        kind: Some(daemon_message::Kind::Fetch(pb::FetchRequest {
            request_id: order.request_id.to_string(),
            args: order.args.to_vec(),
            reason: fetch_reason(order.reason) as i32,
            deadline: Some(order.deadline.into()),
            ..Default::default()
        })),
    }
}

/// A worker's `FetchResult.outcome` as the registry takes it: data, or a message that
/// says why there is none (what the daemon cannot take yet included).
pub(crate) fn fetch_outcome(outcome: Option<fetch_result::Outcome>) -> Outcome {
    match outcome {
        Some(fetch_result::Outcome::Value(v)) => match v.lifetime {
            Some(d) => span("FetchedValue.lifetime", d, true)
                .map(|lifetime| Fetched {
                    data: v.data,
                    lifetime: Some(lifetime),
                })
                .map_err(|s| s.message().to_owned()),
            None => Ok(Fetched {
                data: v.data,
                lifetime: None,
            }),
        },
        Some(fetch_result::Outcome::Error(e)) => Err(clip_message(e.message)),
        Some(fetch_result::Outcome::Absent(_)) => {
            Err("this daemon does not store FetchedAbsent answers yet".into())
        }
        Some(fetch_result::Outcome::NotModified(_)) => {
            Err("this daemon does not take NotModified answers yet".into())
        }
        None => Err("the worker answered with neither a value nor an error".into()),
    }
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
