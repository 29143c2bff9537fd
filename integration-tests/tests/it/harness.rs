//! The test harness: start the real `cachebackd` binary, talk to it over gRPC, and play
//! the part of a worker on a `RegisterJob` stream.
//!
//! Every test module (the engine's and the Rust client's) goes through this file, so its
//! API is kept stable:
//!
//! - [`Daemon`]: one daemon process per test, on a free port of 127.0.0.1 and a temp
//!   data dir; `stop` (SIGTERM), `kill` (SIGKILL), `restart` (same port and data dir);
//!   its stderr is kept in a file and printed when a test panics.
//! - [`TestWorker`]: a scripted worker. Manual mode hands each `FetchRequest` to the test
//!   (`next_fetch`) and lets it answer (`reply_value`, `reply_error`) or stay silent; auto
//!   mode answers every fetch with a closure and counts them exactly.
//! - [`RawStream`]: a `RegisterJob` stream with no rules, for the error rows.
//! - small helpers: [`dur`], [`job_config`], [`eventually`], RPC shorthands.
//!
//! Waiting is always on a signal (a message, an exit, a response) with a generous cap
//! ([`WAIT`]); the only polling is where time passing is the point.

// Not every helper is used by every test module.
#![allow(dead_code)]

use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cachebackd_proto::v1::{
    cacheback_client::CachebackClient, daemon_message, fetch_result, worker_message, DaemonMessage,
    DeleteRequest, DeleteResponse, FetchError, FetchRequest, FetchResult, FetchedValue, GetRequest,
    GetResponse, InvalidateRequest, InvalidateResponse, JobConfig, Register, Registered,
    SetRequest, SetResponse, WorkerMessage,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Status, Streaming,
};

/// The gRPC client type every test uses.
pub type Client = CachebackClient<Channel>;

/// Send and receive limit of every client the harness makes: above the daemon's 4 MiB data
/// limit, so items of exactly that size can be written and read back.
pub const MAX_MESSAGE_BYTES: usize = cachebackd_proto::wire::CLIENT_MAX_MESSAGE_BYTES;

/// The generous cap on anything a test waits for (a fetch, a response, an exit).
pub const WAIT: Duration = Duration::from_secs(30);

/// How long the daemon may take to answer its first RPC.
pub const READY_CAP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The daemon binary
// ---------------------------------------------------------------------------------------

/// Path of the `cachebackd` binary: `$CACHEBACKD_BIN` if set, else built once per test
/// process with `$CARGO build -p cachebackd --bin cachebackd` from the workspace root, so
/// that `cargo test --workspace` alone runs everything on a clean clone. (Cargo releases
/// its build lock before it runs test binaries, so this nested build does not deadlock.)
pub fn daemon_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("CACHEBACKD_BIN") {
        Some(path) => PathBuf::from(path),
        None => build_daemon(),
    })
}

/// The workspace root: the parent of this crate.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests sits inside the workspace")
        .to_path_buf()
}

fn build_daemon() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let root = workspace_root();
    let output = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "cachebackd",
            "--bin",
            "cachebackd",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} build: {e}"));
    if !output.status.success() {
        panic!(
            "building cachebackd failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Cargo names the binary it built; that covers every way of moving the target dir.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let from_cargo = stdout
        .lines()
        .filter(|line| line.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(|line| json_string_field(line, "executable"))
        .find(|exe| {
            Path::new(exe)
                .file_name()
                .is_some_and(|name| name == "cachebackd")
        });
    let bin = match from_cargo {
        Some(exe) => PathBuf::from(exe),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(|dir| root.join(dir))
                .unwrap_or_else(|| root.join("target"));
            target.join("debug").join("cachebackd")
        }
    };
    assert!(
        bin.exists(),
        "cachebackd binary not found at {}",
        bin.display()
    );
    bin
}

/// The value of a string field in one line of cargo's JSON messages (no JSON crate needed
/// for one field; cargo escapes only `"` and `\` in paths).
fn json_string_field(line: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------------------

/// Options for starting a daemon; see [`Daemon::builder`].
#[derive(Default)]
pub struct DaemonBuilder {
    args: Vec<OsString>,
    data_dir: Option<PathBuf>,
    envs: Vec<(OsString, OsString)>,
    probe_tls: Option<ClientTlsConfig>,
}

impl DaemonBuilder {
    /// An extra command-line argument, after `--listen 127.0.0.1:PORT --data-dir DIR`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Extra command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Another listener besides the harness's own TCP one (`host:port` or `unix:/path`).
    pub fn listen(self, addr: impl Into<String>) -> Self {
        self.arg("--listen").arg(addr.into())
    }

    /// Use this data dir instead of a fresh temp dir (it is not removed afterwards).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// An environment variable for the daemon (it always gets `RUST_LOG=info`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The daemon serves TLS on its TCP listener: probe its readiness over
    /// `https://localhost:PORT` with `tls` (the CA, and a client identity under mTLS).
    pub fn probe_tls(mut self, tls: ClientTlsConfig) -> Self {
        self.probe_tls = Some(tls);
        self
    }

    /// Spawn the daemon and wait until it answers gRPC (up to [`READY_CAP`]).
    pub async fn start(self) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("cachebackd-it-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = self.data_dir.unwrap_or_else(|| tmp.path().join("data"));
        fs::create_dir_all(&data_dir).expect("create data dir");
        let mut daemon = Daemon {
            child: None,
            port: 0,
            data_dir,
            stderr_path: tmp.path().join("stderr.log"),
            stdout_path: tmp.path().join("stdout.log"),
            tmp,
            args: self.args,
            envs: self.envs,
            probe_tls: self.probe_tls,
        };
        // Another process may take the port between our probe and the daemon's bind: then
        // try another one.
        for attempt in 1..=5 {
            daemon.port = free_port();
            daemon.spawn();
            match daemon.wait_ready().await {
                Ok(()) => return daemon,
                Err(e) if attempt < 5 && daemon.port_was_taken() => {
                    eprintln!("daemon could not bind port {}: {e}; retrying", daemon.port);
                }
                Err(e) => daemon.fail(&e),
            }
        }
        unreachable!()
    }
}

/// A running `cachebackd` process. Dropping it kills the process; if the test is
/// panicking, the daemon's stderr is printed first.
pub struct Daemon {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    tmp: tempfile::TempDir,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    probe_tls: Option<ClientTlsConfig>,
}

impl Daemon {
    /// Start a daemon with default flags.
    pub async fn start() -> Daemon {
        Daemon::builder().start().await
    }

    /// Start a daemon with extra flags, listeners, data dir or environment.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The harness's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client over a lazily connected channel, message limits raised to 16 MiB.
    pub fn client(&self) -> Client {
        client_for(
            Endpoint::from_shared(self.endpoint())
                .expect("valid endpoint")
                .connect_lazy(),
        )
    }

    /// A client on a connection of its own (the h2 stream limit is per connection).
    pub async fn connect(&self) -> Client {
        connect(&self.endpoint()).await
    }

    /// The daemon's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A temp dir that lives as long as this daemon (for sockets and scratch files).
    pub fn scratch_dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon wrote to stderr so far (all runs of it).
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything the daemon wrote to stdout so far (all runs of it).
    pub fn stdout_log(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// SIGTERM, then wait (up to [`WAIT`]) for the process to exit; its exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGTERM).await
    }

    /// SIGKILL, then wait for the process to exit; its exit status.
    pub async fn kill(&mut self) -> ExitStatus {
        self.signal_and_wait(libc::SIGKILL).await
    }

    /// Stop (SIGTERM) if running, then start again on the same port and data dir; returns
    /// the exit status of the stop, if there was one.
    pub async fn restart(&mut self) -> Option<ExitStatus> {
        let status = match self.child {
            Some(_) => Some(self.stop().await),
            None => None,
        };
        self.start_again().await;
        status
    }

    /// Start again on the same port and data dir after `stop` or `kill`.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "daemon is still running");
        for attempt in 1..=20 {
            self.spawn();
            match self.wait_ready().await {
                Ok(()) => return,
                // The old process's sockets may linger a moment.
                Err(e) if attempt < 20 && self.port_was_taken() => {
                    eprintln!("port {} still taken on restart: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    fn spawn(&mut self) {
        let log = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open daemon log")
        };
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log(&self.stdout_path))
            .stderr(log(&self.stderr_path));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", daemon_bin().display()));
        self.child = Some(child);
    }

    /// Poll a connect + Get until the daemon answers with any gRPC status that is not
    /// UNAVAILABLE (NOT_FOUND for the probe's unregistered job is the usual answer).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let endpoint = match &self.probe_tls {
            Some(tls) => Endpoint::from_shared(format!("https://localhost:{}", self.port))
                .expect("valid endpoint")
                .tls_config(tls.clone())
                .expect("probe TLS config"),
            None => Endpoint::from_shared(self.endpoint()).expect("valid endpoint"),
        }
        .connect_timeout(Duration::from_secs(2));
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("daemon exited during startup with {status}"));
            }
            if let Ok(channel) = endpoint.connect().await {
                let mut client = client_for(channel);
                let mut req = tonic::Request::new(GetRequest {
                    job: "cachebackd-harness-probe".into(),
                    args: b"[]".to_vec(),
                    fetch_on_miss: Some(false),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(2));
                match tokio::time::timeout(Duration::from_secs(3), client.get(req)).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(s)) if s.code() != Code::Unavailable => return Ok(()),
                    _ => {}
                }
            }
            if start.elapsed() > READY_CAP {
                return Err(format!("daemon not ready after {READY_CAP:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn port_was_taken(&self) -> bool {
        let log = self.stderr_log().to_lowercase();
        self.child.is_none() && (log.contains("in use") || log.contains("addrinuse"))
    }

    fn fail(&mut self, why: &str) -> ! {
        panic!(
            "{why}\n--- cachebackd stderr ({}) ---\n{}",
            self.stderr_path.display(),
            self.stderr_log()
        );
    }

    async fn signal_and_wait(&mut self, signal: libc::c_int) -> ExitStatus {
        let mut child = self.child.take().expect("daemon is not running");
        send_signal(&child, signal);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                return status;
            }
            if start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(&format!(
                    "daemon did not exit within {WAIT:?} of signal {signal}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- cachebackd stderr ({}) ---\n{}--- end of cachebackd stderr ---",
                self.stderr_path.display(),
                self.stderr_log()
            );
        }
    }
}

fn send_signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on a child we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A client over `channel` with message limits raised to [`MAX_MESSAGE_BYTES`].
pub fn client_for(channel: Channel) -> Client {
    CachebackClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A client on a new connection to `endpoint`.
pub async fn connect(endpoint: &str) -> Client {
    let channel = Endpoint::from_shared(endpoint.to_string())
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
    client_for(channel)
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// A protobuf Duration of `secs` seconds.
pub fn dur(secs: f64) -> prost_types::Duration {
    let d = Duration::from_secs_f64(secs);
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Seconds in a protobuf Duration.
pub fn secs(d: &prost_types::Duration) -> f64 {
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

/// A job config with `lifetime` and `refresh_timeout` (seconds) and everything else unset;
/// set the rest with struct update syntax.
pub fn job_config(lifetime: f64, refresh_timeout: f64) -> JobConfig {
    JobConfig {
        lifetime: Some(dur(lifetime)),
        refresh_timeout: Some(dur(refresh_timeout)),
        ..JobConfig::default()
    }
}

/// A protobuf Timestamp as wall-clock time.
pub fn wall(ts: &prost_types::Timestamp) -> SystemTime {
    let nanos = ts.seconds as i128 * 1_000_000_000 + ts.nanos as i128;
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).expect("timestamp after 1970"))
}

/// Seconds from `a` to `b` (negative if `b` is earlier).
pub fn seconds_between(a: &prost_types::Timestamp, b: &prost_types::Timestamp) -> f64 {
    (b.seconds - a.seconds) as f64 + f64::from(b.nanos - a.nanos) / 1e9
}

/// Seconds from now to `ts` (negative if it is past).
pub fn seconds_from_now(ts: &prost_types::Timestamp) -> f64 {
    match wall(ts).duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Sleep until the wall clock has passed `t` (used where time passing is the point: an
/// item's expiry, a threshold).
pub async fn sleep_until_wall(t: SystemTime) {
    if let Ok(d) = t.duration_since(SystemTime::now()) {
        tokio::time::sleep(d).await;
    }
}

/// Poll `f` every 50 ms until it returns `Some`, for at most `cap`; panics at the cap.
/// For conditions that only time makes true; prefer awaiting a signal.
pub async fn eventually<T, F, Fut>(cap: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < cap,
            "condition not met within {cap:?} (eventually)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Await `fut` for at most [`WAIT`]; panics with `what` at the cap.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

// ---------------------------------------------------------------------------------------
// RPC shorthands
// ---------------------------------------------------------------------------------------

/// `Get` with an optional per-call `fetch_on_miss`.
pub async fn try_get(
    client: &mut Client,
    job: &str,
    args: impl AsRef<[u8]>,
    fetch_on_miss: Option<bool>,
) -> Result<GetResponse, Status> {
    client
        .get(GetRequest {
            job: job.into(),
            args: args.as_ref().to_vec(),
            fetch_on_miss,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `Get` with the job's own miss policy; panics on an error status.
pub async fn get(client: &mut Client, job: &str, args: impl AsRef<[u8]>) -> GetResponse {
    try_get(client, job, args, None)
        .await
        .unwrap_or_else(|s| panic!("Get {job}: {s:?}"))
}

/// `Get` that never waits for a fetch (`fetch_on_miss = false`); panics on an error.
pub async fn get_no_wait(client: &mut Client, job: &str, args: impl AsRef<[u8]>) -> GetResponse {
    try_get(client, job, args, Some(false))
        .await
        .unwrap_or_else(|s| panic!("Get {job}: {s:?}"))
}

/// `Set`, optionally with a per-item lifetime.
pub async fn try_set(
    client: &mut Client,
    job: &str,
    args: impl AsRef<[u8]>,
    data: impl Into<Vec<u8>>,
    lifetime: Option<prost_types::Duration>,
) -> Result<SetResponse, Status> {
    client
        .set(SetRequest {
            job: job.into(),
            args: args.as_ref().to_vec(),
            data: data.into(),
            lifetime,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `Set`; panics on an error status.
pub async fn set(
    client: &mut Client,
    job: &str,
    args: impl AsRef<[u8]>,
    data: impl Into<Vec<u8>>,
    lifetime: Option<prost_types::Duration>,
) -> SetResponse {
    try_set(client, job, args, data, lifetime)
        .await
        .unwrap_or_else(|s| panic!("Set {job}: {s:?}"))
}

/// `Invalidate`.
pub async fn try_invalidate(
    client: &mut Client,
    job: &str,
    args: impl AsRef<[u8]>,
) -> Result<InvalidateResponse, Status> {
    client
        .invalidate(InvalidateRequest {
            job: job.into(),
            args: args.as_ref().to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `Invalidate`; panics on an error status.
pub async fn invalidate(
    client: &mut Client,
    job: &str,
    args: impl AsRef<[u8]>,
) -> InvalidateResponse {
    try_invalidate(client, job, args)
        .await
        .unwrap_or_else(|s| panic!("Invalidate {job}: {s:?}"))
}

/// `Delete`.
pub async fn try_delete(
    client: &mut Client,
    job: &str,
    args: impl AsRef<[u8]>,
) -> Result<DeleteResponse, Status> {
    client
        .delete(DeleteRequest {
            job: job.into(),
            args: args.as_ref().to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `Delete`; panics on an error status.
pub async fn delete(client: &mut Client, job: &str, args: impl AsRef<[u8]>) -> DeleteResponse {
    try_delete(client, job, args)
        .await
        .unwrap_or_else(|s| panic!("Delete {job}: {s:?}"))
}

/// Spawn a `Get` (so the test can answer the fetch it waits for) with an optional per-call
/// `fetch_on_miss`.
pub fn spawn_get(
    client: &Client,
    job: &str,
    args: impl AsRef<[u8]>,
    fetch_on_miss: Option<bool>,
) -> JoinHandle<Result<GetResponse, Status>> {
    let mut client = client.clone();
    let job = job.to_string();
    let args = args.as_ref().to_vec();
    tokio::spawn(async move { try_get(&mut client, &job, args, fetch_on_miss).await })
}

/// Await a spawned `Get` (capped at [`WAIT`]).
pub async fn join_get(
    handle: JoinHandle<Result<GetResponse, Status>>,
) -> Result<GetResponse, Status> {
    within("spawned Get", handle)
        .await
        .expect("Get task panicked")
}

// ---------------------------------------------------------------------------------------
// Worker messages
// ---------------------------------------------------------------------------------------

/// A `Register` message.
pub fn register_msg(job: &str, config: JobConfig, max_in_flight: u32, name: &str) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Register(Register {
            job: job.into(),
            config: Some(config),
            max_in_flight,
            worker_name: name.into(),
            ..Default::default()
        })),
    }
}

/// A `FetchResult` carrying a value.
pub fn value_msg(
    request_id: &str,
    data: impl Into<Vec<u8>>,
    lifetime: Option<prost_types::Duration>,
) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Result(FetchResult {
            request_id: request_id.into(),
            outcome: Some(fetch_result::Outcome::Value(FetchedValue {
                data: data.into(),
                lifetime,
                ..Default::default()
            })),
        })),
    }
}

/// A `FetchResult` carrying an error.
pub fn error_msg(request_id: &str, message: &str) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Result(FetchResult {
            request_id: request_id.into(),
            outcome: Some(fetch_result::Outcome::Error(FetchError {
                message: message.into(),
            })),
        })),
    }
}

// ---------------------------------------------------------------------------------------
// RawStream: a RegisterJob stream with no rules
// ---------------------------------------------------------------------------------------

/// A `RegisterJob` stream driven message by message, for protocol violations.
pub struct RawStream {
    tx: Option<mpsc::Sender<WorkerMessage>>,
    response: Result<Streaming<DaemonMessage>, Status>,
}

impl RawStream {
    /// Open a stream on a new connection, with `first` queued before the call is made
    /// (the daemon answers the call only once it has read the first message).
    pub async fn open(endpoint: &str, first: Vec<WorkerMessage>) -> RawStream {
        let mut client = connect(endpoint).await;
        let (tx, rx) = mpsc::channel(64);
        for msg in first {
            tx.send(msg).await.expect("queue first messages");
        }
        let response = within(
            "RegisterJob call",
            client.register_job(ReceiverStream::new(rx)),
        )
        .await
        .map(tonic::Response::into_inner);
        RawStream {
            tx: Some(tx),
            response,
        }
    }

    /// Send one more message; false if the stream is gone.
    pub async fn send(&self, msg: WorkerMessage) -> bool {
        match &self.tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }

    /// End our side of the stream.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The next message from the daemon, `Ok(None)` at a clean end, or the status the
    /// stream (or the call) ended with. Capped at [`WAIT`].
    pub async fn next(&mut self) -> Result<Option<DaemonMessage>, Status> {
        match &mut self.response {
            Ok(stream) => within("message on RegisterJob stream", stream.message()).await,
            Err(status) => Err(status.clone()),
        }
    }

    /// Read until the stream ends; the status it ended with (`Ok` for a clean end) and the
    /// messages read on the way.
    pub async fn end(&mut self) -> (Result<(), Status>, Vec<DaemonMessage>) {
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Ok(Some(msg)) => seen.push(msg),
                Ok(None) => return (Ok(()), seen),
                Err(status) => return (Err(status), seen),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// TestWorker
// ---------------------------------------------------------------------------------------

type Handler = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// State shared by a worker's reader task, its auto-answer tasks and the test.
struct Shared {
    /// Our half of the stream; `None` once closed.
    tx: Mutex<Option<mpsc::Sender<WorkerMessage>>>,
    /// Every FetchRequest received, in order.
    log: Mutex<Vec<FetchRequest>>,
    /// Messages other than FetchRequest received after `Registered` (should stay empty).
    unexpected: Mutex<Vec<DaemonMessage>>,
    /// The size of every FetchBatch received, in order (its fetches join `log`).
    batches: Mutex<Vec<usize>>,
    count: AtomicUsize,
}

impl Shared {
    async fn send(&self, msg: WorkerMessage) -> bool {
        // Clone the sender out: no lock is held across the await.
        let tx = self.tx.lock().unwrap().clone();
        match tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }
}

/// How to register a [`TestWorker`]; see [`TestWorker::builder`].
pub struct WorkerBuilder {
    job: String,
    config: JobConfig,
    max_in_flight: u32,
    max_batch: u32,
    name: String,
    handler: Option<Handler>,
    delay: Duration,
}

impl WorkerBuilder {
    /// The config sent in `Register` (default: all unset, so the daemon's defaults).
    pub fn config(mut self, config: JobConfig) -> Self {
        self.config = config;
        self
    }

    /// `Register.max_in_flight` (default 0, which the daemon reads as 16).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// `Register.max_batch` (default 0: one FetchRequest per message).
    pub fn max_batch(mut self, n: u32) -> Self {
        self.max_batch = n;
        self
    }

    /// `Register.worker_name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Answer every fetch automatically with `handler(args)`: `Ok(data)` becomes a
    /// `FetchedValue`, `Err(msg)` a `FetchError`. `next_fetch` is then unavailable; use
    /// `fetch_count` and `fetches`.
    pub fn auto<F>(mut self, handler: F) -> Self
    where
        F: Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync + 'static,
    {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// In auto mode, wait this long before answering each fetch.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Register on a new connection to `endpoint`; panics if registration fails.
    pub async fn connect(self, endpoint: &str) -> TestWorker {
        let job = self.job.clone();
        self.try_connect(endpoint)
            .await
            .unwrap_or_else(|s| panic!("registering a worker for {job:?}: {s:?}"))
    }

    /// Register on a new connection to `endpoint`; the status if the daemon refuses.
    pub async fn try_connect(self, endpoint: &str) -> Result<TestWorker, Status> {
        let client = connect(endpoint).await;
        self.try_connect_with(client).await
    }

    /// Register through `client` (for listeners the harness does not know, such as a Unix
    /// socket).
    pub async fn try_connect_with(self, mut client: Client) -> Result<TestWorker, Status> {
        let (tx, rx) = mpsc::channel(256);
        let mut register = register_msg(&self.job, self.config, self.max_in_flight, &self.name);
        if let Some(worker_message::Kind::Register(r)) = &mut register.kind {
            r.max_batch = self.max_batch;
        }
        tx.send(register).await.expect("queue Register");
        let mut stream = within(
            "RegisterJob call",
            client.register_job(ReceiverStream::new(rx)),
        )
        .await?
        .into_inner();
        let registered = match within("Registered", stream.message()).await? {
            Some(DaemonMessage {
                kind: Some(daemon_message::Kind::Registered(r)),
            }) => r,
            Some(other) => panic!("first message on RegisterJob stream is {other:?}"),
            None => return Err(Status::unknown("stream ended before Registered")),
        };

        let shared = Arc::new(Shared {
            tx: Mutex::new(Some(tx)),
            log: Mutex::new(Vec::new()),
            unexpected: Mutex::new(Vec::new()),
            batches: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
        });
        let (fetch_tx, fetch_rx) = mpsc::unbounded_channel();
        let (end_tx, end_rx) = watch::channel(None);
        let reader = tokio::spawn(read_daemon_messages(
            stream,
            shared.clone(),
            fetch_tx,
            end_tx,
        ));
        let mut tasks = vec![reader];
        let fetches = match self.handler {
            None => Some(fetch_rx),
            Some(handler) => {
                tasks.push(tokio::spawn(auto_answer(
                    fetch_rx,
                    shared.clone(),
                    handler,
                    self.delay,
                )));
                None
            }
        };
        Ok(TestWorker {
            registered,
            shared,
            fetches,
            end: end_rx,
            tasks,
            _client: client,
        })
    }
}

async fn read_daemon_messages(
    mut stream: Streaming<DaemonMessage>,
    shared: Arc<Shared>,
    fetch_tx: mpsc::UnboundedSender<FetchRequest>,
    end_tx: watch::Sender<Option<Result<(), Status>>>,
) {
    let end = loop {
        match stream.message().await {
            Ok(Some(DaemonMessage {
                kind: Some(daemon_message::Kind::Fetch(fetch)),
            })) => {
                shared.count.fetch_add(1, Ordering::SeqCst);
                shared.log.lock().unwrap().push(fetch.clone());
                let _ = fetch_tx.send(fetch);
            }
            Ok(Some(DaemonMessage {
                kind: Some(daemon_message::Kind::Batch(batch)),
            })) => {
                shared.batches.lock().unwrap().push(batch.fetches.len());
                for fetch in batch.fetches {
                    shared.count.fetch_add(1, Ordering::SeqCst);
                    shared.log.lock().unwrap().push(fetch.clone());
                    let _ = fetch_tx.send(fetch);
                }
            }
            Ok(Some(other)) => shared.unexpected.lock().unwrap().push(other),
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    let _ = end_tx.send(Some(end));
}

async fn auto_answer(
    mut fetches: mpsc::UnboundedReceiver<FetchRequest>,
    shared: Arc<Shared>,
    handler: Handler,
    delay: Duration,
) {
    while let Some(fetch) = fetches.recv().await {
        let shared = shared.clone();
        let handler = handler.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let msg = match handler(&fetch.args) {
                Ok(data) => value_msg(&fetch.request_id, data, None),
                Err(message) => error_msg(&fetch.request_id, &message),
            };
            shared.send(msg).await;
        });
    }
}

/// A worker registered for one job over its own connection. Dropping it ends the stream
/// abruptly (both directions); [`TestWorker::close`] ends it cleanly from our side.
pub struct TestWorker {
    /// The daemon's `Registered` answer (worker id, effective config).
    pub registered: Registered,
    shared: Arc<Shared>,
    fetches: Option<mpsc::UnboundedReceiver<FetchRequest>>,
    end: watch::Receiver<Option<Result<(), Status>>>,
    tasks: Vec<JoinHandle<()>>,
    _client: Client,
}

impl TestWorker {
    /// Start describing a worker for `job`.
    pub fn builder(job: &str) -> WorkerBuilder {
        WorkerBuilder {
            job: job.into(),
            config: JobConfig::default(),
            max_in_flight: 0,
            max_batch: 0,
            name: format!("test-worker-{job}"),
            handler: None,
            delay: Duration::ZERO,
        }
    }

    /// A manual worker for `job` with `config` and the default `max_in_flight`.
    pub async fn register(daemon: &Daemon, job: &str, config: JobConfig) -> TestWorker {
        TestWorker::builder(job)
            .config(config)
            .connect(&daemon.endpoint())
            .await
    }

    /// The next FetchRequest (waits up to [`WAIT`]); panics at the cap or if the stream
    /// ended. Manual mode only.
    pub async fn next_fetch(&mut self) -> FetchRequest {
        match self.next_fetch_within(WAIT).await {
            Some(fetch) => fetch,
            None => panic!(
                "no FetchRequest within {WAIT:?}; stream end: {:?}",
                self.end.borrow().clone()
            ),
        }
    }

    /// The next FetchRequest if one comes within `wait`. Manual mode only.
    pub async fn next_fetch_within(&mut self, wait: Duration) -> Option<FetchRequest> {
        let rx = self.fetches.as_mut().expect("next_fetch on an auto worker");
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }

    /// A FetchRequest already received and not yet taken, if any. Manual mode only.
    pub fn try_next_fetch(&mut self) -> Option<FetchRequest> {
        let rx = self
            .fetches
            .as_mut()
            .expect("try_next_fetch on an auto worker");
        rx.try_recv().ok()
    }

    /// Send any message on the stream; false if the stream is closed.
    pub async fn send(&self, msg: WorkerMessage) -> bool {
        self.shared.send(msg).await
    }

    /// Answer `request_id` with data and an optional per-item lifetime.
    pub async fn reply_value(
        &self,
        request_id: &str,
        data: impl Into<Vec<u8>>,
        lifetime: Option<prost_types::Duration>,
    ) {
        assert!(
            self.send(value_msg(request_id, data, lifetime)).await,
            "worker stream closed: cannot answer {request_id}"
        );
    }

    /// Answer `request_id` with a FetchError.
    pub async fn reply_error(&self, request_id: &str, message: &str) {
        assert!(
            self.send(error_msg(request_id, message)).await,
            "worker stream closed: cannot answer {request_id}"
        );
    }

    /// Number of FetchRequests received so far (exact, both modes).
    pub fn fetch_count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// Every FetchRequest received so far, in order (both modes).
    pub fn fetches(&self) -> Vec<FetchRequest> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The size of every FetchBatch received so far, in order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.shared.batches.lock().unwrap().clone()
    }

    /// Messages other than FetchRequest received after `Registered` (should be none).
    pub fn unexpected_messages(&self) -> Vec<DaemonMessage> {
        self.shared.unexpected.lock().unwrap().clone()
    }

    /// Whether the daemon has ended the stream.
    pub fn is_closed(&self) -> bool {
        self.end.borrow().is_some()
    }

    /// Wait (up to [`WAIT`]) for the daemon to end the stream: `Ok` for a clean end.
    pub async fn wait_closed(&mut self) -> Result<(), Status> {
        let end = within(
            "end of the worker stream",
            self.end.wait_for(Option::is_some),
        )
        .await
        .expect("reader task gone");
        end.clone().expect("checked is_some")
    }

    /// End our side of the stream cleanly (half-close); the daemon's side stays readable.
    pub fn close(&self) {
        self.shared.tx.lock().unwrap().take();
    }

    /// Prove that no fetch is pending or about to arrive: a synchronous Get of a fresh
    /// barrier item must be the very next fetch this worker sees (fetches of one job leave
    /// in the order they were scheduled). Panics on any other fetch. Manual mode only; the
    /// worker needs a free slot.
    pub async fn assert_no_fetch(&mut self, client: &Client, job: &str) {
        static BARRIER: AtomicUsize = AtomicUsize::new(0);
        let args = format!("[\"barrier\",{}]", BARRIER.fetch_add(1, Ordering::SeqCst));
        let get = spawn_get(client, job, &args, Some(true));
        let fetch = self.next_fetch().await;
        assert_eq!(
            String::from_utf8_lossy(&fetch.args),
            args,
            "a fetch arrived that should not exist: {fetch:?}"
        );
        self.reply_value(&fetch.request_id, b"barrier".to_vec(), None)
            .await;
        let resp = join_get(get).await.expect("barrier Get");
        assert_eq!(resp.data, b"barrier");
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.close();
        for task in &self.tasks {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Assertions on times
// ---------------------------------------------------------------------------------------

/// Assert that a span computed by the daemon (say `expires_at - stored_at`) is `expected`
/// seconds, give or take the rounding of two clock reads (1 s).
pub fn assert_span(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1.0,
        "{what}: {actual} s, expected {expected} s"
    );
}

/// Assert that two timestamps name the same instant (up to storage rounding, 250 ms):
/// used to show that bookkeeping did not move `stored_at` or `expires_at`.
pub fn assert_same_instant(a: &prost_types::Timestamp, b: &prost_types::Timestamp, what: &str) {
    let diff = seconds_between(a, b);
    assert!(
        diff.abs() <= 0.25,
        "{what}: {a:?} vs {b:?} ({diff} s apart)"
    );
}
