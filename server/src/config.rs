//! The daemon's settings: the command line (`cachebackd --help`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::engine::EngineSettings;
use crate::model::Limits;
use crate::store::Durability;

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

/// cachebackd: serves cached data at once and refreshes it in the background through the
/// workers that app servers register.
#[derive(Debug, Clone, Parser)]
#[command(name = "cachebackd", version, about, long_about = None)]
pub struct Config {
    /// Address to serve gRPC on: host:port or unix:/path/to.sock. Repeat to listen on several.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: Vec<ListenAddr>,

    /// Directory of the store (created if missing).
    #[arg(long, value_name = "DIR", default_value = "./cachebackd-data")]
    pub data_dir: PathBuf,

    /// When writes reach the disk: `interval` (every --flush-interval) or `always` (before
    /// every write is acknowledged).
    #[arg(long, value_enum, default_value_t = Durability::Interval)]
    pub durability: Durability,

    /// How often the store is flushed with `--durability interval`.
    #[arg(long, value_name = "DUR", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the daemon exits.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,

    /// How often items past their job's cache_ttl are removed from the store.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sweep_interval: Duration,

    /// First backoff delay after a failed refresh; it doubles up to the job's refresh_timeout.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,

    /// Fetches of one job that may wait for a free worker before Gets get RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub queue_capacity: usize,

    /// Longest job name accepted, in bytes.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_job_name_bytes: usize,

    /// Longest args accepted, in bytes.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_args_bytes: usize,

    /// Longest data accepted, in bytes (gRPC message limits are raised to fit).
    #[arg(long, value_name = "N", default_value_t = 4 * 1024 * 1024)]
    pub max_data_bytes: usize,
}

impl Config {
    /// The size limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_job_name_bytes: self.max_job_name_bytes,
            max_args_bytes: self.max_args_bytes,
            max_data_bytes: self.max_data_bytes,
        }
    }

    /// The engine's settings.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            durability: self.durability,
            retry_base: self.retry_base,
            queue_capacity: self.queue_capacity,
            sweep_interval: self.sweep_interval,
            limits: self.limits(),
        }
    }

    /// Largest gRPC message the daemon must carry: data plus args plus framing.
    pub fn max_message_bytes(&self) -> usize {
        self.max_data_bytes
            .saturating_add(self.max_args_bytes)
            .saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_tcp_and_unix() {
        assert_eq!(
            "127.0.0.1:7070".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:7070".parse().unwrap()))
        );
        assert_eq!(
            "unix:/run/c.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/c.sock".into()))
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = Config::parse_from(["cachebackd"]);
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.durability, Durability::Interval);
        assert_eq!(c.flush_interval, Duration::from_millis(100));
        assert_eq!(c.queue_capacity, 10_000);
        assert_eq!(c.listen, vec!["127.0.0.1:7070".parse().unwrap()]);
    }
}
