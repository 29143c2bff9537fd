//! The values a setting can take, each with one parser shared by the file and the flags,
//! so that `--drain-grace ten` and `drain_grace = "ten"` are refused with the same words.
//! Each error says what was expected and gives an example; the file's errors add the key
//! and the line (see `file`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::MAX_SPAN;

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address, `host:port`.
    Tcp(SocketAddr),
    /// A Unix domain socket, `unix:/path/to.sock`.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, as in unix:/run/cachebackd.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is neither an IP address with a port (127.0.0.1:7070, [::1]:7070) nor unix:/path")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; colours only when stderr is a terminal, so the
    /// journal gets plain text.
    #[default]
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The permission bits of a Unix socket file, written in octal (`0660`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl FromStr for SocketMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(SocketMode(mode)),
            _ => Err(format!(
                "{s:?} is not a file mode: write it in octal, from 0000 to 0777 (as in \"0660\")"
            )),
        }
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// The address of the Prometheus endpoint, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(MetricsListen(None));
        }
        s.parse().map(|a| MetricsListen(Some(a))).map_err(|_| {
            format!("{s:?} is neither an IP address with a port (127.0.0.1:9464) nor \"off\"")
        })
    }
}

/// A span of time that may not be zero.
pub fn positive(s: &str) -> Result<Duration, String> {
    let d = span(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A span of time, written as humantime does (`100ms`, `10s`, `5m`, `30days`).
pub fn span(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write it as in \"100ms\", \"10s\", \"5m\" or \"30days\""))?;
    if d > MAX_SPAN {
        return Err(format!("{s:?} is over the limit of 100 years"));
    }
    Ok(d)
}

/// A threshold: a span, or `never`.
pub fn threshold(s: &str) -> Result<Option<Duration>, String> {
    if s == "never" {
        return Ok(None);
    }
    span(s).map(Some)
}

/// A tracing filter, as RUST_LOG takes it.
pub fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter ({e}); write it as in \"info\" or \"warn,cachebackd=debug\""))
}

/// A size in bytes: `1048576`, `512MiB`, `4GiB` (bytesize's reading: `KiB`/`MiB`/`GiB` are
/// powers of 1024, `KB`/`MB`/`GB` of 1000).
pub fn size(s: &str) -> Result<u64, String> {
    match s.trim().parse::<bytesize::ByteSize>() {
        Ok(b) if b.0 >= 1 => Ok(b.0),
        Ok(_) => Err("must be at least 1 byte".into()),
        Err(_) => Err(format!(
            "{s:?} is not a size: write it as in \"1048576\", \"512MiB\" or \"4GiB\""
        )),
    }
}

/// A count of at least 1.
pub fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

impl fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("off"),
        }
    }
}

/// A `fetch_on_stale_threshold`: a duration, or `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold(pub Option<Duration>);

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        threshold(s).map(Threshold)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
            None => f.write_str("never"),
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(LogFormat::Plain),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "{s:?} is not a log format: write \"plain\" or \"json\""
            )),
        }
    }
}
