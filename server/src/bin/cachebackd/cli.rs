//! The `cachebackd` command line: the flags of `cachebackd` (serving), `check-config` and
//! `ctl`. It lives in the binary, not the library, because the library is the daemon and
//! knows nothing of how it is started: the flags only build a [`Config`], laid over the
//! file's, and every value is checked by the same parsers the file's values go through
//! (`cachebackd::config::values`), so a flag and a key can never disagree.

use std::path::PathBuf;
use std::time::Duration;

use cachebackd::config::values::{count, log_filter, positive, size, span};
use cachebackd::config::{
    Config, ConfigError, Durability, ListenAddr, LogFormat, MetricsListen, SocketMode, Threshold,
};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

/// A parser that takes one of `names` (listed in `--help`) and reads it with `T`'s
/// `FromStr`, the one the file uses.
/// A `--store` URL, refused at once with the parser's words.
fn store_url(s: &str) -> Result<cachebackd::config::StoreUrl, String> {
    s.parse()
}

fn one_of<T>(names: [&'static str; 2]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
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
pub(crate) struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The settings, when serving.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// What `cachebackd` can do besides serving.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct SettingsArgs {
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

    /// Where the items live: `sled` (under --data-dir), or a Redis shared by a fleet of
    /// daemons: `redis://HOST:PORT[/DB]`, `rediss://...` (TLS),
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]`. [default: sled]
    #[arg(long, value_name = "URL", value_parser = store_url)]
    pub store: Option<cachebackd::config::StoreUrl>,

    /// When writes reach the disk: `interval` (every --flush-interval) or `always` (before
    /// every write is acknowledged). [default: interval]
    #[arg(long, value_parser = one_of::<Durability>(["interval", "always"]))]
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

    /// The bound on stored items (keys and data): past it the least recently used items
    /// are evicted. A size, as in `1048576`, `512MiB`, `4GiB`. [default: 4GiB]
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_bytes: Option<u64>,

    /// Most jobs the daemon keeps: a Register of a new job past it ends with
    /// RESOURCE_EXHAUSTED. [default: 10000]
    #[arg(long, value_name = "N", value_parser = count)]
    pub max_jobs: Option<usize>,

    /// Most fetches waiting for a free worker across all jobs together, before Gets get
    /// RESOURCE_EXHAUSTED. [default: 100000]
    #[arg(long, value_name = "N", value_parser = count)]
    pub max_queued_fetches: Option<usize>,

    /// Most client connections served at once, across every gRPC listener; past it new connections
    /// wait in the kernel's backlog until one closes. [default: 4096]
    #[arg(long, value_name = "N", value_parser = count)]
    pub max_connections: Option<usize>,

    /// A TCP connection with no call open for this long is closed. [default: 5m]
    #[arg(long, value_name = "DUR", value_parser = positive)]
    pub idle_timeout: Option<Duration>,

    /// Bytes of workers' answers held at once, across every worker: an answer past it is
    /// refused as a failed fetch. A size. [default: 256MiB]
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_answer_bytes: Option<u64>,

    /// Bytes of Get and GetMany responses not yet taken by their clients, across every
    /// connection: a response past it answers RESOURCE_EXHAUSTED. A size. [default: 512MiB]
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub max_unsent_bytes: Option<u64>,

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
    #[arg(long, value_parser = one_of::<LogFormat>(["plain", "json"]))]
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

/// The settings from the defaults, the file named by `--config` (if any), then the flags.
pub(crate) fn load(args: &SettingsArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    apply_args(&mut config, args);
    Ok(config)
}

/// Lays the flags given over `config`.
fn apply_args(config: &mut Config, a: &SettingsArgs) {
    if !a.listen.is_empty() {
        config.listen = a.listen.clone();
    }
    set(&mut config.socket_mode, a.socket_mode);
    set(&mut config.data_dir, a.data_dir.clone());
    set(&mut config.store.url, a.store.clone());
    set(&mut config.durability, a.durability);
    set(&mut config.flush_interval, a.flush_interval);
    set(&mut config.drain_grace, a.drain_grace);
    set(&mut config.sweep_interval, a.sweep_interval);
    set(&mut config.retry_base, a.retry_base);
    set(&mut config.queue_capacity, a.queue_capacity);
    set(&mut config.max_bytes, a.max_bytes);
    set(&mut config.max_jobs, a.max_jobs);
    set(&mut config.max_queued_fetches, a.max_queued_fetches);
    set(&mut config.max_connections, a.max_connections);
    set(&mut config.idle_timeout, a.idle_timeout);
    set(&mut config.max_answer_bytes, a.max_answer_bytes);
    set(&mut config.max_unsent_bytes, a.max_unsent_bytes);
    set(&mut config.max_job_name_bytes, a.max_job_name_bytes);
    set(&mut config.max_args_bytes, a.max_args_bytes);
    set(&mut config.max_data_bytes, a.max_data_bytes);
    let j = &mut config.job_defaults;
    set(&mut j.lifetime, a.job_lifetime);
    set(&mut j.refresh_timeout, a.job_refresh_timeout);
    set(&mut j.fetch_on_miss, a.job_fetch_on_miss);
    set(
        &mut j.fetch_on_stale_threshold,
        a.job_fetch_on_stale_threshold.map(|t| t.0),
    );
    set(&mut j.cache_ttl, a.job_cache_ttl);
    set(&mut config.log_format, a.log_format);
    set(&mut config.log_level, a.log_level.clone());
    set(&mut config.metrics_listen, a.metrics_listen.map(|m| m.0));
    set(&mut config.tls.cert, a.tls_cert.clone().map(Some));
    set(&mut config.tls.key, a.tls_key.clone().map(Some));
    set(&mut config.tls.client_ca, a.tls_client_ca.clone().map(Some));
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachebackd::config::{JobConfig, Limits};

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("cachebackd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = load(&cli(&[]).settings).unwrap();
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
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "durability = \"always\"\nqueue_capacity = 5\nmax_args_bytes = 100\n",
        )
        .unwrap();
        let c = load(
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
        let c = load(&cli(&["--job-fetch-on-stale-threshold", "never"]).settings).unwrap();
        assert_eq!(c.job_defaults.fetch_on_stale_threshold, None);
        let c = load(&cli(&["--metrics-listen", "off"]).settings).unwrap();
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
