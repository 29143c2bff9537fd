//! How the settings are written in the TOML file: the serde glue of [`Config`]'s fields.
//! `Config` derives `Serialize` and `Deserialize` itself, so a setting is written once (its
//! field) and these functions only say how its value is read and written. Reading goes
//! through the parsers of `values`, not humantime-serde's, because ours say what was
//! expected with an example; writing spans uses humantime-serde, which prints them as
//! humantime reads them back (`100ms`, `5m`). [`describe_toml_error`] adds the line and
//! the key to every error.
//!
//! [`Config`]: super::Config

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::values::{self, MetricsListen, SocketMode, Threshold};
use crate::model::{Beta, JobConfig};
use crate::store::Durability;

/// A value written as a string and read with a parser of `values`.
fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// A value written as a string and read with its `FromStr`.
struct Text<T>(T);

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, str::parse).map(Text)
    }
}

fn as_text<S: Serializer>(value: &impl Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// A span that may be zero (`drain_grace`, a job's `lifetime`).
pub(super) mod span {
    use super::*;
    pub(in crate::config) use humantime_serde::serialize;
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        parsed(d, values::span)
    }
}

/// A span that may not be zero.
pub(super) mod positive {
    use super::*;
    pub(in crate::config) use humantime_serde::serialize;
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        parsed(d, values::positive)
    }
}

/// A count of at least 1, written as a TOML integer.
pub(super) mod count {
    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n as u64)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<usize, D::Error> {
        let n = i64::deserialize(d)?;
        match usize::try_from(n) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(serde::de::Error::custom(format!(
                "{n} is out of range: must be at least 1"
            ))),
        }
    }
}

/// A size: a TOML integer of bytes, or a string as `--max-bytes` takes it (`"4GiB"`).
pub(super) mod size {
    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 1 => Ok(n as u64),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "{n} is out of range: must be at least 1 byte"
            ))),
            Raw::Str(s) => values::size(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The listen addresses, each a string.
pub(super) mod listen {
    use super::*;
    use crate::config::ListenAddr;
    pub(in crate::config) fn serialize<S: Serializer>(
        addrs: &[ListenAddr],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(addrs.iter().map(ToString::to_string))
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ListenAddr>, D::Error> {
        let addrs = Vec::<Text<ListenAddr>>::deserialize(d)?;
        Ok(addrs.into_iter().map(|t| t.0).collect())
    }
}

/// A file mode: a TOML octal integer (`0o660`) or a string of octal digits (`"0660"`).
pub(super) mod socket_mode {
    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(
        m: &SocketMode,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        as_text(m, s)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<SocketMode, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        let bad = |what: String| {
            serde::de::Error::custom(format!(
                "{what} is not a file mode: write \"0660\" or 0o660 (octal, at most 0777)"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) if (0..=0o777).contains(&n) => Ok(SocketMode(n as u32)),
            Raw::Int(n) => Err(bad(n.to_string())),
            Raw::Str(s) => s.parse::<SocketMode>().map_err(|_| bad(format!("{s:?}"))),
        }
    }
}

/// `interval` or `always`.
pub(super) mod durability {
    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(
        d: &Durability,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        as_text(d, s)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Durability, D::Error> {
        parsed(d, str::parse)
    }
}

/// A tracing filter, checked.
pub(super) mod log_level {
    use super::*;
    pub(in crate::config) fn serialize<S: Serializer>(l: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(l)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<String, D::Error> {
        parsed(d, values::log_filter)
    }
}

/// An address, or `off`.
pub(super) mod metrics_listen {
    use super::*;
    use std::net::SocketAddr;
    pub(in crate::config) fn serialize<S: Serializer>(
        a: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        as_text(&MetricsListen(*a), s)
    }
    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        Text::<MetricsListen>::deserialize(d).map(|t| t.0 .0)
    }
}

/// A span, or `never`.
mod threshold {
    use super::*;
    pub(super) fn serialize<S: Serializer>(t: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        as_text(&Threshold(*t), s)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Text::<Threshold>::deserialize(d).map(|t| t.0 .0)
    }
}

/// The `[job_defaults]` table: [`JobConfig`] as the file writes it, every key optional
/// (serde's remote derive, so the model type needs no serde of its own).
#[derive(Serialize, Deserialize)]
#[serde(
    remote = "JobConfig",
    default = "JobConfig::default",
    deny_unknown_fields
)]
pub(super) struct JobDefaults {
    #[serde(with = "span")]
    lifetime: Duration,
    #[serde(with = "positive")]
    refresh_timeout: Duration,
    fetch_on_miss: bool,
    #[serde(with = "threshold")]
    fetch_on_stale_threshold: Option<Duration>,
    #[serde(with = "positive")]
    cache_ttl: Duration,
    // The additions' settings are the job's own (its worker sets them): no daemon-wide
    // default is read from the file, and off stays off.
    #[serde(skip)]
    early_refresh_beta: Option<Beta>,
    #[serde(skip)]
    absent_lifetime: Option<Duration>,
    #[serde(skip)]
    error_ttl: Option<Duration>,
}

/// Turns a `toml` error into one line that says where and which key: toml's message has
/// the line and column; the key is read off the offending line.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().to_owned();
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (key, table) {
        (Some(key), Some(table)) => format!("line {line_no}: key `{table}.{key}`: {message}"),
        (Some(key), None) => format!("line {line_no}: key `{key}`: {message}"),
        (None, _) => format!("line {line_no}: {message} (at `{line}`)"),
    }
}
