//! The daemon's settings: built-in defaults, then a TOML file, then (in the binary) the
//! command line, each overriding the one before.
//!
//! Every setting has one name: the flag `--max-args-bytes` is the key `max_args_bytes`, the
//! flag `--job-lifetime` is `lifetime` in the `[job_defaults]` table. A file is checked in
//! full before anything starts: an unknown key or a bad value is refused with the file's
//! name, the line and the key (`toml` reports where; [`values`] says what).
//!
//! [`values`] holds what a setting can be and its one parser; `file` how the TOML file
//! writes it. The command line lives in the binary (`src/bin/cachebackd/cli.rs`).

mod file;
pub mod store_url;
pub mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::auth::principals::AuthConfig;
use crate::engine::EngineSettings;
pub use crate::model::{JobConfig, Limits};
pub use crate::store::Durability;
pub use crate::tls::TlsFiles;
pub use store_url::{StoreConfig, StoreUrl};
pub use values::{ListenAddr, LogFormat, MetricsListen, SocketMode, Threshold};

/// The daemon's effective settings, every default filled in.
/// The TOML file is this struct as serde reads it: every key optional (`default`),
/// unknown keys refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to serve gRPC on.
    #[serde(with = "file::listen")]
    pub listen: Vec<ListenAddr>,
    /// Permission bits of Unix socket files.
    #[serde(with = "file::socket_mode")]
    pub socket_mode: SocketMode,
    /// Directory of the store.
    pub data_dir: PathBuf,
    /// When writes reach the disk.
    #[serde(with = "file::durability")]
    pub durability: Durability,
    /// How often the store is flushed with `Durability::Interval`.
    #[serde(with = "file::positive")]
    pub flush_interval: Duration,
    /// How long in-flight calls may take to finish on shutdown.
    #[serde(with = "file::span")]
    pub drain_grace: Duration,
    /// How often items past their cache_ttl are swept.
    #[serde(with = "file::positive")]
    pub sweep_interval: Duration,
    /// First backoff delay after a failed refresh.
    #[serde(with = "file::positive")]
    pub retry_base: Duration,
    /// Capacity of each job's queue of fetches waiting for a worker.
    #[serde(with = "file::count")]
    pub queue_capacity: usize,
    /// The bound on stored items (keys and data): past it the least recently used go.
    #[serde(with = "file::size")]
    pub max_bytes: u64,
    /// Most jobs kept.
    #[serde(with = "file::count")]
    pub max_jobs: usize,
    /// Most fetches waiting for a worker across all jobs.
    #[serde(with = "file::count")]
    pub max_queued_fetches: usize,
    /// Most client connections served at once, across every gRPC listener.
    #[serde(with = "file::count")]
    pub max_connections: usize,
    /// How long a TCP connection may hold no call before it is closed.
    #[serde(with = "file::positive")]
    pub idle_timeout: Duration,
    /// Bytes of workers' answers the daemon holds at once, across every worker stream:
    /// an answer past it is refused as a failed fetch (`crate::intake`).
    #[serde(with = "file::size")]
    pub max_answer_bytes: u64,
    /// Bytes of Get and GetMany responses not yet taken by their clients, across every
    /// connection: a response past it answers RESOURCE_EXHAUSTED (`crate::unsent`).
    #[serde(with = "file::size")]
    pub max_unsent_bytes: u64,
    /// Longest job name, in bytes.
    #[serde(with = "file::count")]
    pub max_job_name_bytes: usize,
    /// Longest args, in bytes.
    #[serde(with = "file::count")]
    pub max_args_bytes: usize,
    /// Longest data, in bytes.
    #[serde(with = "file::count")]
    pub max_data_bytes: usize,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The default log filter (RUST_LOG overrides it).
    #[serde(with = "file::log_level")]
    pub log_level: String,
    /// Where Prometheus metrics are served, if anywhere.
    #[serde(with = "file::metrics_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// What a Register leaves unset (the `[job_defaults]` table: last, as TOML tables
    /// follow the plain keys).
    #[serde(with = "file::JobDefaults")]
    pub job_defaults: JobConfig,
    /// Who may call, and what they may do (`[auth]`).
    pub auth: AuthConfig,
    /// TLS on the TCP listeners (`[tls]`; the `--tls-*` flags in the binary).
    #[serde(skip_serializing_if = "TlsFiles::is_unset")]
    pub tls: TlsFiles,
    /// Where the items live (`[store]`; `--store` in the binary): sled or a fleet's Redis.
    #[serde(skip_serializing_if = "StoreConfig::is_unset")]
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            listen: vec![ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 7070)))],
            socket_mode: SocketMode(0o660),
            data_dir: PathBuf::from("./cachebackd-data"),
            durability: Durability::Interval,
            flush_interval: Duration::from_millis(100),
            drain_grace: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            queue_capacity: 10_000,
            max_bytes: 4 << 30,
            max_jobs: 10_000,
            max_queued_fetches: 100_000,
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            max_answer_bytes: 256 << 20,
            max_unsent_bytes: 512 << 20,
            max_job_name_bytes: limits.max_job_name_bytes,
            max_args_bytes: limits.max_args_bytes,
            max_data_bytes: limits.max_data_bytes,
            job_defaults: JobConfig::default(),
            log_format: LogFormat::Plain,
            log_level: "info".into(),
            metrics_listen: None,
            auth: AuthConfig::default(),
            tls: TlsFiles::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid: the message names the line and the key.
    #[error("config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
}

impl Config {
    /// The settings from the defaults and the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// The settings from the defaults and a TOML document; the error names the line and
    /// the key of the first problem.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| file::describe_toml_error(text, &e))
    }

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
            max_jobs: self.max_jobs,
            max_queued_fetches: self.max_queued_fetches,
            sweep_interval: self.sweep_interval,
            limits: self.limits(),
            job_defaults: self.job_defaults,
        }
    }

    /// Largest gRPC message the daemon must carry (see [`Limits::max_message_bytes`]).
    pub fn max_message_bytes(&self) -> usize {
        self.limits().max_message_bytes()
    }

    /// The settings as a TOML document that `from_toml` reads back to the same settings
    /// (what `check-config` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the settings are plain TOML values")
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
    fn every_key_of_the_file_is_read() {
        let c = Config::from_toml(
            r#"
            listen = ["127.0.0.1:7000", "unix:/run/c.sock"]
            socket_mode = "0600"
            data_dir = "/var/lib/cachebackd"
            durability = "always"
            flush_interval = "250ms"
            drain_grace = "30s"
            sweep_interval = "5m"
            retry_base = "2s"
            queue_capacity = 5
            max_bytes = "512MiB"
            max_jobs = 7
            max_queued_fetches = 9
            max_connections = 11
            idle_timeout = "1m"
            max_job_name_bytes = 64
            max_args_bytes = 100
            max_data_bytes = 1000
            log_format = "json"
            log_level = "debug"
            metrics_listen = "127.0.0.1:9464"

            [job_defaults]
            lifetime = "20m"
            refresh_timeout = "5s"
            fetch_on_miss = false
            fetch_on_stale_threshold = "1h"
            cache_ttl = "7days"
            "#,
        )
        .unwrap();
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:7000".parse().unwrap(),
                "unix:/run/c.sock".parse().unwrap()
            ]
        );
        assert_eq!(c.socket_mode, SocketMode(0o600));
        assert_eq!(c.durability, Durability::Always);
        assert_eq!(c.flush_interval, Duration::from_millis(250));
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert_eq!(c.sweep_interval, Duration::from_secs(300));
        assert_eq!(c.retry_base, Duration::from_secs(2));
        assert_eq!(c.queue_capacity, 5);
        assert_eq!(c.max_bytes, 512 << 20);
        assert_eq!(
            (c.max_jobs, c.max_queued_fetches, c.max_connections),
            (7, 9, 11)
        );
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            c.limits(),
            Limits {
                max_job_name_bytes: 64,
                max_args_bytes: 100,
                max_data_bytes: 1000
            }
        );
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            c.job_defaults,
            JobConfig {
                lifetime: Duration::from_secs(1200),
                refresh_timeout: Duration::from_secs(5),
                fetch_on_miss: false,
                fetch_on_stale_threshold: Some(Duration::from_secs(3600)),
                cache_ttl: Duration::from_secs(7 * 86400),
                ..JobConfig::default()
            }
        );
        // What check-config prints reads back to the same settings.
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        assert_eq!(
            Config::from_toml(&Config::default().to_toml()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let e = Config::from_toml("durability = \"always\"\nqueue_capacty = 5\n").unwrap_err();
        assert!(e.starts_with("line 2: key `queue_capacty`:"), "{e}");
        assert!(e.contains("unknown field `queue_capacty`"), "{e}");
        let e = Config::from_toml("[job_defaults]\nlifetme = \"5s\"\n").unwrap_err();
        assert!(e.starts_with("line 2: key `job_defaults.lifetme`:"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_key_and_line() {
        let cases = [
            (
                "durability = \"sometimes\"",
                "durability",
                "not a durability",
            ),
            (
                "flush_interval = \"0s\"",
                "flush_interval",
                "more than zero",
            ),
            ("drain_grace = \"ten\"", "drain_grace", "not a duration"),
            ("queue_capacity = 0", "queue_capacity", "at least 1"),
            ("max_bytes = \"lots\"", "max_bytes", "not a size"),
            ("max_jobs = 0", "max_jobs", "at least 1"),
            ("socket_mode = \"0999\"", "socket_mode", "not a file mode"),
            (
                "listen = [\"localhost\"]",
                "listen",
                "neither an IP address",
            ),
            (
                "metrics_listen = \"9464\"",
                "metrics_listen",
                "neither an IP address",
            ),
            ("log_format = \"xml\"", "log_format", "xml"),
            ("log_level = \"info,[[\"", "log_level", "not a log filter"),
        ];
        for (text, key, why) in cases {
            let doc = format!("# settings\n{text}\n");
            let e = Config::from_toml(&doc).unwrap_err();
            assert!(
                e.starts_with(&format!("line 2: key `{key}`:")),
                "{text}: {e}"
            );
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
