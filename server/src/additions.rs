//! The edge of the protocol's additions (PROTOCOL.md, "Additions to cacheback.v1"): a
//! worker's answers beyond data and error, tags, validators, `max_age` and the new job
//! settings, checked once as they come in so that the engine can trust them. Protobuf in,
//! model out; nothing here touches the store.

use std::time::Duration;

use cachebackd_proto::v1::{self as pb, fetch_result};

use crate::error::Error;
use crate::model::{check_validator, Beta, JobConfig, Limits, Tag, MAX_SPAN, MAX_TAGS_PER_CALL};
use crate::workers::{Fetched, Outcome};

/// A protobuf Duration as a std one: non-negative, at most a century, and (unless
/// `zero_ok`) not zero.
pub fn span(field: &str, d: prost_types::Duration, zero_ok: bool) -> Result<Duration, Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("{field} {why}"));
    let std = Duration::try_from(d).map_err(|_| bad("must not be negative"))?;
    if std > MAX_SPAN {
        return Err(bad("is over the limit of 100 years"));
    }
    if std.is_zero() && !zero_ok {
        return Err(bad("must be more than zero"));
    }
    Ok(std)
}

/// A worker's `FetchResult.outcome` as the engine takes it: every field checked. A bad
/// field (a lifetime out of range, a validator over 256 bytes, a bad or 33rd tag) makes
/// the answer a failed fetch with that message: nothing is stored, and the stream stays
/// open.
pub fn outcome(outcome: Option<fetch_result::Outcome>, limits: &Limits) -> Outcome {
    let lifetime =
        |field: &str, d: Option<prost_types::Duration>| d.map(|d| span(field, d, true)).transpose();
    let checked = match outcome {
        Some(fetch_result::Outcome::Value(v)) => (|| {
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
        Some(fetch_result::Outcome::Error(e)) => return Err(e.message),
        None => return Err("the worker answered with neither a value nor an error".into()),
    };
    checked.map_err(|e: Error| e.to_string())
}

/// `InvalidateTagsRequest.tags`: 1 to 100, each well formed; duplicates count once.
pub fn tags_to_invalidate(tags: &[String], limits: &Limits) -> Result<Vec<Tag>, Error> {
    if tags.is_empty() || tags.len() > MAX_TAGS_PER_CALL {
        return Err(Error::InvalidArgument(format!(
            "InvalidateTags takes 1 to {MAX_TAGS_PER_CALL} tags, not {}",
            tags.len()
        )));
    }
    let mut parsed = tags
        .iter()
        .map(|t| Tag::parse(t, limits))
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// The additions' settings of a registration's config, defaults filled in from `config`
/// (the rest of it already parsed) and the daemon's `defaults`.
pub fn job_settings(
    c: &pb::JobConfig,
    config: JobConfig,
    defaults: &JobConfig,
) -> Result<JobConfig, Error> {
    Ok(JobConfig {
        early_refresh_beta: match c.early_refresh_beta {
            Some(beta) => Some(Beta::new(beta)?),
            None => defaults.early_refresh_beta,
        },
        absent_lifetime: match c.absent_lifetime {
            Some(d) => Some(span("JobConfig.absent_lifetime", d, true)?),
            None => defaults.absent_lifetime,
        },
        error_ttl: match c.error_ttl {
            Some(d) => Some(span("JobConfig.error_ttl", d, false)?),
            None => defaults.error_ttl,
        },
        ..config
    })
}

/// The additions' settings as `Registered.config` echoes them: `absent_lifetime` filled in
/// (the job's lifetime when unset), `early_refresh_beta` and `error_ttl` unset when off.
pub fn job_settings_to_proto(c: &JobConfig, out: &mut pb::JobConfig) {
    let d = |x: Duration| prost_types::Duration::try_from(x).unwrap_or_default();
    out.early_refresh_beta = c.early_refresh_beta.map(Beta::get);
    out.absent_lifetime = Some(d(c.absent_lifetime()));
    out.error_ttl = c.error_ttl.map(d);
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
        let err = outcome(value(vec![0; 257], vec![]), &limits()).unwrap_err();
        assert_eq!(err, "validator is 257 bytes, over the limit of 256 bytes");
        assert!(outcome(value(vec![0; 256], vec![]), &limits()).is_ok());
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(
            outcome(value(vec![], many), &limits()).unwrap_err(),
            "33 tags on one item, over the limit of 32"
        );
        assert_eq!(
            outcome(value(vec![], vec!["a b".into()]), &limits()).unwrap_err(),
            "tag \"a b\" has the character ' '; allowed are [A-Za-z0-9_.:-]"
        );
        assert_eq!(
            outcome(
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
    }

    #[test]
    fn registered_config_fills_absent_lifetime_and_leaves_the_off_settings_unset() {
        let config = JobConfig {
            lifetime: Duration::from_secs(42),
            ..JobConfig::default()
        };
        let mut out = pb::JobConfig::default();
        job_settings_to_proto(&config, &mut out);
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
        assert!(job_settings(&bad, config, &JobConfig::default()).is_err());
    }
}
