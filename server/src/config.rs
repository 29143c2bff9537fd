//! The daemon's settings: built-in defaults, then a TOML file (`--config FILE`), then the
//! command line (`cachebackd --help`), each overriding the one before.
//!
//! Every setting has one name: the flag `--max-args-bytes` is the key `max_args_bytes`, the
//! flag `--job-lifetime` is `lifetime` in the `[job_defaults]` table. A file is checked in
//! full before anything starts: an unknown key or a bad value is refused with the file's
//! name, the line and the key (`toml` reports where; the deserializers below say what).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::engine::EngineSettings;
use crate::model::{JobConfig, Limits, MAX_SPAN};
use crate::store::Durability;
use crate::tls::TlsFiles;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
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
fn positive(s: &str) -> Result<Duration, String> {
    let d = span(s)?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A span of time, written as humantime does (`100ms`, `10s`, `5m`, `30days`).
fn span(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write it as in \"100ms\", \"10s\", \"5m\" or \"30days\""))?;
    if d > MAX_SPAN {
        return Err(format!("{s:?} is over the limit of 100 years"));
    }
    Ok(d)
}

/// A threshold: a span, or `never`.
fn threshold(s: &str) -> Result<Option<Duration>, String> {
    if s == "never" {
        return Ok(None);
    }
    span(s).map(Some)
}

/// A tracing filter, as RUST_LOG takes it.
fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter ({e}); write it as in \"info\" or \"warn,cachebackd=debug\""))
}

fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// cachebackd: serves cached data at once and refreshes it in the background through the
/// workers that app servers register.
///
/// Settings come from the built-in defaults, then `--config FILE` (TOML; every key is the
/// flag's name with `_` for `-`), then the flags given here.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cachebackd",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The settings, when serving.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// What `cachebackd` can do besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Check a config file (every key and value) without serving; print the settings it
    /// gives on stdout; exit 78 (EX_CONFIG) with the key and line of the first problem.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Talk to a running daemon: jobs, stats, get, set, invalidate, delete.
    Ctl(crate::ctl::CtlArgs),
    /// Read a bearer token on stdin and print its sha256 in hex (for `token_sha256`).
    HashToken,
    /// Print a new random bearer token (32 bytes, base64url) and, on stderr, its sha256.
    GenToken,
}

/// The settings on the command line; each one given overrides the file.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// Read settings from this TOML file (see packaging/cachebackd.toml); the flags below
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve gRPC on: host:port or unix:/path/to.sock. Repeat to listen on
    /// several. Sockets passed by systemd (LISTEN_FDS) are used instead when present.
    /// [default: 127.0.0.1:7070]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,

    /// Permission bits of Unix socket files, in octal. [default: 0660]
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<SocketMode>,

    /// Directory of the store (created if missing). [default: ./cachebackd-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// When writes reach the disk: `interval` (every --flush-interval) or `always` (before
    /// every write is acknowledged). [default: interval]
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,

    /// How often the store is flushed with `--durability interval`. [default: 100ms]
    #[arg(long, value_name = "DUR", value_parser = positive)]
    pub flush_interval: Option<Duration>,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish before the daemon
    /// exits. Keep systemd's TimeoutStopSec above it. [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = span)]
    pub drain_grace: Option<Duration>,

    /// How often items past their job's cache_ttl are removed from the store. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = positive)]
    pub sweep_interval: Option<Duration>,

    /// First backoff delay after a failed refresh; it doubles up to the job's
    /// refresh_timeout. [default: 1s]
    #[arg(long, value_name = "DUR", value_parser = positive)]
    pub retry_base: Option<Duration>,

    /// Fetches of one job that may wait for a free worker before Gets get
    /// RESOURCE_EXHAUSTED. [default: 10000]
    #[arg(long, value_name = "N", value_parser = count)]
    pub queue_capacity: Option<usize>,

    /// Longest job name accepted, in bytes. [default: 128]
    #[arg(long, value_name = "N", value_parser = count)]
    pub max_job_name_bytes: Option<usize>,

    /// Longest args accepted, in bytes. [default: 4096]
    #[arg(long, value_name = "N", value_parser = count)]
    pub max_args_bytes: Option<usize>,

    /// Longest data accepted, in bytes (gRPC message limits are raised to fit).
    /// [default: 4194304]
    #[arg(long, value_name = "N", value_parser = count)]
    pub max_data_bytes: Option<usize>,

    /// Default lifetime of a job whose worker's Register leaves it unset. [default: 300s]
    #[arg(long, value_name = "DUR", value_parser = span)]
    pub job_lifetime: Option<Duration>,

    /// Default refresh_timeout of a job. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = positive)]
    pub job_refresh_timeout: Option<Duration>,

    /// Default fetch_on_miss of a job. [default: true]
    #[arg(long, value_name = "BOOL")]
    pub job_fetch_on_miss: Option<bool>,

    /// Default fetch_on_stale_threshold of a job: a duration, or `never`. [default: never]
    #[arg(long, value_name = "DUR")]
    pub job_fetch_on_stale_threshold: Option<Threshold>,

    /// Default cache_ttl of a job. [default: 30days]
    #[arg(long, value_name = "DUR", value_parser = positive)]
    pub job_cache_ttl: Option<Duration>,

    /// Log lines as `plain` text or `json`, on stderr. RUST_LOG, when set, overrides
    /// --log-level. [default: plain]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// Which events are logged, as a tracing filter (`info`, `warn,cachebackd=debug`).
    /// [default: info]
    #[arg(long, value_name = "FILTER", value_parser = log_filter)]
    pub log_level: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics, or `off`. [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<MetricsListen>,

    /// Serve TLS on every TCP listener with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA bundle (PEM): mTLS.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The daemon's effective settings, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Addresses to serve gRPC on.
    pub listen: Vec<ListenAddr>,
    /// Permission bits of Unix socket files.
    pub socket_mode: SocketMode,
    /// Directory of the store.
    pub data_dir: PathBuf,
    /// When writes reach the disk.
    pub durability: Durability,
    /// How often the store is flushed with `Durability::Interval`.
    pub flush_interval: Duration,
    /// How long in-flight calls may take to finish on shutdown.
    pub drain_grace: Duration,
    /// How often items past their cache_ttl are swept.
    pub sweep_interval: Duration,
    /// First backoff delay after a failed refresh.
    pub retry_base: Duration,
    /// Capacity of each job's queue of fetches waiting for a worker.
    pub queue_capacity: usize,
    /// Longest job name, in bytes.
    pub max_job_name_bytes: usize,
    /// Longest args, in bytes.
    pub max_args_bytes: usize,
    /// Longest data, in bytes.
    pub max_data_bytes: usize,
    /// What a Register leaves unset.
    pub job_defaults: JobConfig,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The default log filter (RUST_LOG overrides it).
    pub log_level: String,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Who may call, and what they may do (`[auth]`).
    pub auth: AuthConfig,
    /// TLS on the TCP listeners (`[tls]`, `--tls-*`).
    pub tls: TlsFiles,
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
            max_job_name_bytes: limits.max_job_name_bytes,
            max_args_bytes: limits.max_args_bytes,
            max_data_bytes: limits.max_data_bytes,
            job_defaults: JobConfig::default(),
            log_format: LogFormat::Plain,
            log_level: "info".into(),
            metrics_listen: None,
            auth: AuthConfig::default(),
            tls: TlsFiles::default(),
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
    /// The settings from the defaults, the file named by `--config` (if any), then the flags.
    pub fn load(args: &SettingsArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_args(args);
        Ok(config)
    }

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
        let file: FileConfig = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        let mut config = Config::default();
        file.apply(&mut config);
        Ok(config)
    }

    fn apply_args(&mut self, a: &SettingsArgs) {
        if !a.listen.is_empty() {
            self.listen = a.listen.clone();
        }
        set(&mut self.socket_mode, a.socket_mode);
        set(&mut self.data_dir, a.data_dir.clone());
        set(&mut self.durability, a.durability);
        set(&mut self.flush_interval, a.flush_interval);
        set(&mut self.drain_grace, a.drain_grace);
        set(&mut self.sweep_interval, a.sweep_interval);
        set(&mut self.retry_base, a.retry_base);
        set(&mut self.queue_capacity, a.queue_capacity);
        set(&mut self.max_job_name_bytes, a.max_job_name_bytes);
        set(&mut self.max_args_bytes, a.max_args_bytes);
        set(&mut self.max_data_bytes, a.max_data_bytes);
        let j = &mut self.job_defaults;
        set(&mut j.lifetime, a.job_lifetime);
        set(&mut j.refresh_timeout, a.job_refresh_timeout);
        set(&mut j.fetch_on_miss, a.job_fetch_on_miss);
        set(
            &mut j.fetch_on_stale_threshold,
            a.job_fetch_on_stale_threshold.map(|t| t.0),
        );
        set(&mut j.cache_ttl, a.job_cache_ttl);
        set(&mut self.log_format, a.log_format);
        set(&mut self.log_level, a.log_level.clone());
        set(&mut self.metrics_listen, a.metrics_listen.map(|m| m.0));
        set(&mut self.tls.cert, a.tls_cert.clone().map(Some));
        set(&mut self.tls.key, a.tls_key.clone().map(Some));
        set(&mut self.tls.client_ca, a.tls_client_ca.clone().map(Some));
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
        let file = FileConfig::from(self);
        toml::to_string(&file).expect("the settings are plain TOML values")
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Turns a `toml` error into one line that says where and which key: toml's message has
/// the line and column; the key is read off the offending line.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
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

// ---------------------------------------------------------------------------------------
// The file format
// ---------------------------------------------------------------------------------------

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<Text<ListenAddr>>>,
    socket_mode: Option<FileMode>,
    data_dir: Option<PathBuf>,
    durability: Option<FileDurability>,
    flush_interval: Option<Positive>,
    drain_grace: Option<Span>,
    sweep_interval: Option<Positive>,
    retry_base: Option<Positive>,
    queue_capacity: Option<Count>,
    max_job_name_bytes: Option<Count>,
    max_args_bytes: Option<Count>,
    max_data_bytes: Option<Count>,
    log_format: Option<LogFormat>,
    log_level: Option<Text<LogFilter>>,
    metrics_listen: Option<Text<MetricsListen>>,
    job_defaults: Option<FileJobDefaults>,
    auth: Option<AuthConfig>,
    tls: Option<TlsFiles>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJobDefaults {
    lifetime: Option<Span>,
    refresh_timeout: Option<Positive>,
    fetch_on_miss: Option<bool>,
    fetch_on_stale_threshold: Option<Text<Threshold>>,
    cache_ttl: Option<Positive>,
}

impl FileConfig {
    fn apply(self, c: &mut Config) {
        if let Some(listen) = self.listen {
            c.listen = listen.into_iter().map(|t| t.0).collect();
        }
        set(
            &mut c.socket_mode,
            self.socket_mode.map(|m| SocketMode(m.0)),
        );
        set(&mut c.data_dir, self.data_dir);
        set(&mut c.durability, self.durability.map(|d| d.0));
        set(&mut c.flush_interval, self.flush_interval.map(|d| d.0));
        set(&mut c.drain_grace, self.drain_grace.map(|d| d.0));
        set(&mut c.sweep_interval, self.sweep_interval.map(|d| d.0));
        set(&mut c.retry_base, self.retry_base.map(|d| d.0));
        set(&mut c.queue_capacity, self.queue_capacity.map(|n| n.0));
        set(
            &mut c.max_job_name_bytes,
            self.max_job_name_bytes.map(|n| n.0),
        );
        set(&mut c.max_args_bytes, self.max_args_bytes.map(|n| n.0));
        set(&mut c.max_data_bytes, self.max_data_bytes.map(|n| n.0));
        set(&mut c.log_format, self.log_format);
        set(&mut c.log_level, self.log_level.map(|l| l.0 .0));
        set(&mut c.metrics_listen, self.metrics_listen.map(|m| m.0 .0));
        if let Some(j) = self.job_defaults {
            let d = &mut c.job_defaults;
            set(&mut d.lifetime, j.lifetime.map(|x| x.0));
            set(&mut d.refresh_timeout, j.refresh_timeout.map(|x| x.0));
            set(&mut d.fetch_on_miss, j.fetch_on_miss);
            set(
                &mut d.fetch_on_stale_threshold,
                j.fetch_on_stale_threshold.map(|x| x.0 .0),
            );
            set(&mut d.cache_ttl, j.cache_ttl.map(|x| x.0));
        }
        set(&mut c.auth, self.auth);
        set(&mut c.tls, self.tls);
    }
}

impl From<&Config> for FileConfig {
    fn from(c: &Config) -> Self {
        let j = &c.job_defaults;
        FileConfig {
            listen: Some(c.listen.iter().cloned().map(Text).collect()),
            socket_mode: Some(FileMode(c.socket_mode.0)),
            data_dir: Some(c.data_dir.clone()),
            durability: Some(FileDurability(c.durability)),
            flush_interval: Some(Positive(c.flush_interval)),
            drain_grace: Some(Span(c.drain_grace)),
            sweep_interval: Some(Positive(c.sweep_interval)),
            retry_base: Some(Positive(c.retry_base)),
            queue_capacity: Some(Count(c.queue_capacity)),
            max_job_name_bytes: Some(Count(c.max_job_name_bytes)),
            max_args_bytes: Some(Count(c.max_args_bytes)),
            max_data_bytes: Some(Count(c.max_data_bytes)),
            log_format: Some(c.log_format),
            log_level: Some(Text(LogFilter(c.log_level.clone()))),
            metrics_listen: Some(Text(MetricsListen(c.metrics_listen))),
            job_defaults: Some(FileJobDefaults {
                lifetime: Some(Span(j.lifetime)),
                refresh_timeout: Some(Positive(j.refresh_timeout)),
                fetch_on_miss: Some(j.fetch_on_miss),
                fetch_on_stale_threshold: Some(Text(Threshold(j.fetch_on_stale_threshold))),
                cache_ttl: Some(Positive(j.cache_ttl)),
            }),
            auth: Some(c.auth.clone()),
            tls: c.tls.is_enabled().then(|| c.tls.clone()),
        }
    }
}

/// A value written in the file as a string and parsed with its `FromStr`.
#[derive(Debug)]
struct Text<T>(T);

impl<'de, T: FromStr<Err = String>> Deserialize<'de> for Text<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Text).map_err(serde::de::Error::custom)
    }
}

impl<T: fmt::Display> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
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

/// A log filter, checked.
#[derive(Debug)]
struct LogFilter(String);

impl FromStr for LogFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        log_filter(s).map(LogFilter)
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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

/// A duration written as a string (`"10s"`).
#[derive(Debug)]
struct Span(Duration);
/// A duration that may not be zero.
#[derive(Debug)]
struct Positive(Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        span(&s).map(Span).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        positive(&s).map(Positive).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl Serialize for Positive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

/// A count of at least 1.
#[derive(Debug)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match usize::try_from(n) {
            Ok(n) if n >= 1 => Ok(Count(n)),
            _ => Err(serde::de::Error::custom(format!(
                "{n} is out of range: must be at least 1"
            ))),
        }
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0 as u64)
    }
}

/// A file mode: a TOML octal integer (`0o660`) or a string of octal digits (`"0660"`).
#[derive(Debug)]
struct FileMode(u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
            Raw::Int(n) if (0..=0o777).contains(&n) => Ok(FileMode(n as u32)),
            Raw::Int(n) => Err(bad(n.to_string())),
            Raw::Str(s) => s
                .parse::<SocketMode>()
                .map(|m| FileMode(m.0))
                .map_err(|_| bad(format!("{s:?}"))),
        }
    }
}

impl Serialize for FileMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&SocketMode(self.0))
    }
}

#[derive(Debug)]
struct FileDurability(Durability);

impl<'de> Deserialize<'de> for FileDurability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Durability::from_str(&s, false)
            .map(FileDurability)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a durability: write \"interval\" or \"always\""
                ))
            })
    }
}

impl Serialize for FileDurability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = self
            .0
            .to_possible_value()
            .expect("every durability has a name");
        s.serialize_str(name.get_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("cachebackd").chain(args.iter().copied()))
    }

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
        let c = Config::load(&cli(&[]).settings).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.limits(), Limits::default());
        assert_eq!(c.durability, Durability::Interval);
        assert_eq!(c.flush_interval, Duration::from_millis(100));
        assert_eq!(c.queue_capacity, 10_000);
        assert_eq!(c.job_defaults, JobConfig::default());
        assert_eq!(c.listen, vec!["127.0.0.1:7070".parse().unwrap()]);
        assert_eq!(c.metrics_listen, None);
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
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "durability = \"always\"\nqueue_capacity = 5\nmax_args_bytes = 100\n",
        )
        .unwrap();
        let c = Config::load(
            &cli(&[
                "--config",
                path.to_str().unwrap(),
                "--queue-capacity",
                "7",
                "--listen",
                "unix:/tmp/x.sock",
            ])
            .settings,
        )
        .unwrap();
        assert_eq!(c.durability, Durability::Always);
        assert_eq!(c.queue_capacity, 7);
        assert_eq!(c.max_args_bytes, 100);
        assert_eq!(c.listen, vec!["unix:/tmp/x.sock".parse().unwrap()]);
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

    #[test]
    fn command_line_values_are_checked() {
        for args in [
            ["--flush-interval", "0s"],
            ["--queue-capacity", "0"],
            ["--socket-mode", "rw"],
            ["--durability", "never"],
        ] {
            let full = std::iter::once("cachebackd").chain(args);
            assert!(Cli::try_parse_from(full).is_err(), "{args:?}");
        }
        let c = Config::load(&cli(&["--job-fetch-on-stale-threshold", "never"]).settings).unwrap();
        assert_eq!(c.job_defaults.fetch_on_stale_threshold, None);
        let c = Config::load(&cli(&["--metrics-listen", "off"]).settings).unwrap();
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn check_config_and_ctl_are_subcommands() {
        assert!(matches!(
            cli(&["check-config", "/etc/c.toml"]).command,
            Some(Command::CheckConfig { .. })
        ));
    }
}
