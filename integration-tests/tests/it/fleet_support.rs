//! Fixtures of the fleet tests (`fleet`, `fleet_cluster`): real `redis-server` processes on
//! free loopback ports without persistence — a standalone one and a 3-master Redis Cluster —
//! stopped by pid when dropped; daemons started on them; a daemon started without the
//! harness's readiness probe (for a Redis that is down at start). Additive to the harness.
//!
//! If `redis-server` is not installed, the first fixture of the test process installs it
//! from Debian (`apt-get update && apt-get install -y redis-server`, behind a lock), so
//! that `cargo test --workspace` on a fresh machine needs nothing else.
//!
//! A module shares one Redis (or one Cluster) among its tests through [`Shared`]: each
//! test holds it while it runs and the last one to finish stops it, so nothing outlives
//! the test process. Tests keep apart by unique job names.

#![allow(dead_code)]

use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    thread,
    time::{Duration, Instant},
};

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::*;
use crate::ops_support::{health_check, scrape};

/// How long a redis-server may take to answer PING, and a cluster to reach
/// `cluster_state:ok`.
const REDIS_READY_CAP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The redis-server and redis-cli binaries
// ---------------------------------------------------------------------------------------

/// Paths of `redis-server` and `redis-cli`.
pub struct RedisBins {
    pub server: PathBuf,
    pub cli: PathBuf,
}

/// `redis-server` and `redis-cli` from PATH, installed from Debian first if either is
/// missing (once per test process; other tests wait on the lock meanwhile).
pub fn redis_bins() -> &'static RedisBins {
    static BINS: OnceLock<RedisBins> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Some(bins) = find_redis() {
            return bins;
        }
        eprintln!("redis-server is not installed: installing it with apt-get");
        apt(&["update"]);
        apt(&["install", "-y", "redis-server"]);
        find_redis().expect("apt-get installed redis-server, but it is not on PATH")
    })
}

fn find_redis() -> Option<RedisBins> {
    Some(RedisBins {
        server: on_path("redis-server")?,
        cli: on_path("redis-cli")?,
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn apt(args: &[&str]) {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run apt-get {args:?} to install redis-server: {e}"));
    assert!(
        out.status.success(),
        "apt-get {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS…`; its output.
pub fn redis_cli(port: u16, args: &[&str]) -> Output {
    Command::new(&redis_bins().cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli")
}

/// `redis-cli … ARGS` that must succeed; its stdout, trimmed.
pub fn redis_cli_ok(port: u16, args: &[&str]) -> String {
    let out = redis_cli(port, args);
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------------------------------
// One redis-server process
// ---------------------------------------------------------------------------------------

/// A `redis-server` on a free port of 127.0.0.1, with no persistence (`--save ""
/// --appendonly no`), its files in a temp dir. Dropping it kills the process (by pid); if
/// the test is panicking, its log is printed first.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// `--cluster-port`, for a Cluster node (the bus port; set explicitly, since port+10000
    /// of an ephemeral port may not exist).
    bus_port: Option<u16>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A standalone redis-server, answering PING.
    pub fn standalone() -> RedisServer {
        RedisServer::start(false)
    }

    fn start(cluster: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("cachebackd-it-redis-")
            .tempdir()
            .expect("create temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            bus_port: None,
            dir,
        };
        // Another process may take the port between our probe and redis's bind.
        for attempt in 1..=5 {
            server.port = free_port();
            server.bus_port = cluster.then(free_port);
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return server,
                Err(e) if attempt < 5 => eprintln!("redis-server did not start ({e}); retrying"),
                Err(e) => server.fail(&e),
            }
        }
        unreachable!()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The daemon's store URL for it: `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything redis-server logged so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `redis-cli` against this server; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli_ok(self.port, args)
    }

    /// SIGKILL by pid and reap: Redis is gone at once, as in a crash (there is nothing to
    /// save anyway).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on a child we spawned and have not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill redis");
        child.wait().expect("reap redis-server");
    }

    /// Start again on the same port (after [`RedisServer::stop`]), empty: nothing was
    /// persisted.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        let start = Instant::now();
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                // The old process's socket may linger a moment.
                Err(e) if start.elapsed() < REDIS_READY_CAP => {
                    eprintln!("redis-server did not start again on {} ({e})", self.port);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => self.fail(&e),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open redis log");
        let mut cmd = Command::new(&redis_bins().server);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(bus) = self.bus_port {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", redis_bins().server.display()));
        self.child = Some(child);
    }

    /// Poll PING until PONG; an error if the process exits first or the cap passes.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("redis-server exited with {status}"));
            }
            let out = redis_cli(self.port, &["ping"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return Ok(());
            }
            if start.elapsed() > REDIS_READY_CAP {
                return Err(format!("no PONG within {REDIS_READY_CAP:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        panic!("redis-server on {}: {why}\n{}", self.port, self.log());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- redis-server {} log ---\n{}--- end of redis log ---",
                self.port,
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A Redis Cluster
// ---------------------------------------------------------------------------------------

/// A Redis Cluster of three masters and no replicas, made with `redis-cli --cluster
/// create`, every node reporting `cluster_state:ok`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three cluster-enabled nodes and join them.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(true)).collect();
        let mut args = vec!["--cluster".to_owned(), "create".to_owned()];
        args.extend(nodes.iter().map(RedisServer::addr));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = redis_cli(nodes[0].port, &args);
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let start = Instant::now();
        for node in &self.nodes {
            loop {
                let info = node.cli(&["cluster", "info"]);
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(
                    start.elapsed() < REDIS_READY_CAP,
                    "cluster not ok within {REDIS_READY_CAP:?}; node {}:\n{info}",
                    node.port
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The daemon's store URL: `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(RedisServer::addr).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

// ---------------------------------------------------------------------------------------
// Sharing one Redis among the tests of a module
// ---------------------------------------------------------------------------------------

/// One `T` (a Redis or a Cluster) shared by the tests that run at the same time: a test
/// takes it with [`Shared::get`] and holds the `Arc` while it runs; when the last holder
/// drops it, it is stopped, and the next test starts a new one.
pub struct Shared<T> {
    current: Mutex<Weak<T>>,
    start: fn() -> T,
}

impl<T> Shared<T> {
    pub const fn new(start: fn() -> T) -> Shared<T> {
        Shared {
            current: Mutex::new(Weak::new()),
            start,
        }
    }

    /// The running one, or a new one.
    pub fn get(&self) -> Arc<T> {
        // A test that panicked while starting one leaves the lock poisoned; the Weak is
        // still sound.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = current.upgrade() {
            return running;
        }
        let fresh = Arc::new((self.start)());
        *current = Arc::downgrade(&fresh);
        fresh
    }
}

// ---------------------------------------------------------------------------------------
// Daemons on a Redis
// ---------------------------------------------------------------------------------------

/// A job name no other test uses: `PREFIX-N`.
pub fn unique_job(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A daemon on the store at `url`, with a metrics listener; (daemon, metrics address).
pub async fn fleet_daemon(url: &str) -> (Daemon, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--store", url, "--metrics-listen", &metrics])
        .start()
        .await;
    (d, metrics)
}

/// `cachebackd_gets_total{job=JOB,outcome=OUTCOME}` of the daemon whose metrics listen at
/// `metrics`.
pub async fn gets_counted(metrics: &str, job: &str, outcome: &str) -> f64 {
    scrape(metrics).await.get(&format!(
        "cachebackd_gets_total{{job=\"{job}\",outcome=\"{outcome}\"}}"
    ))
}

/// gRPC health of the whole server (service "") of the daemon at `endpoint`.
pub async fn health(endpoint: &str) -> ServingStatus {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"));
    health_check(channel, "").await
}

/// Poll health (service "") until it is `want` (cap [`WAIT`]).
pub async fn await_health(endpoint: &str, want: ServingStatus) {
    eventually(WAIT, || async {
        (health(endpoint).await == want).then_some(())
    })
    .await
}

/// A `cachebackd` started without the harness's probe (which waits for an item call to
/// answer, and so never returns while the store is down); it is ready once gRPC health
/// answers at all. Killed by pid when dropped.
pub struct BareDaemon {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl BareDaemon {
    /// Spawn `cachebackd --listen 127.0.0.1:PORT --data-dir DIR ARGS…` and wait for its
    /// health service to answer.
    pub async fn start(args: &[&str]) -> BareDaemon {
        let dir = tempfile::Builder::new()
            .prefix("cachebackd-it-bare-")
            .tempdir()
            .expect("create temp dir");
        let port = free_port();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .expect("open daemon log");
        let child = Command::new(daemon_bin())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cachebackd");
        let mut d = BareDaemon {
            child: Some(child),
            port,
            dir,
        };
        let start = Instant::now();
        loop {
            assert!(d.is_running(), "cachebackd exited:\n{}", d.stderr_log());
            if let Ok(channel) = Endpoint::from_shared(d.endpoint())
                .expect("endpoint")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let probe = health.check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), probe).await {
                    return d;
                }
            }
            assert!(
                start.elapsed() < READY_CAP,
                "cachebackd health not answering within {READY_CAP:?}:\n{}",
                d.stderr_log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client over a lazily connected channel.
    pub fn client(&self) -> Client {
        client_for(
            Endpoint::from_shared(self.endpoint())
                .expect("endpoint")
                .connect_lazy(),
        )
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("wait for cachebackd").is_none(),
            None => false,
        }
    }

    /// What it logged so far.
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for BareDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- cachebackd stderr ---\n{}--- end of cachebackd stderr ---",
                self.stderr_log()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fixtures' own tests
// ---------------------------------------------------------------------------------------

#[test]
fn redis_fixture_starts_answers_and_restarts_on_the_same_port() {
    let mut r = RedisServer::standalone();
    assert_eq!(r.cli(&["set", "k", "v"]), "OK");
    assert_eq!(r.cli(&["get", "k"]), "v");
    let port = r.port();
    let pid = r.pid().expect("running");
    r.stop();
    assert!(!redis_cli(port, &["ping"]).status.success(), "stopped");
    // SAFETY: kill(2) with signal 0 only asks whether the pid exists.
    assert_ne!(unsafe { libc::kill(pid as libc::pid_t, 0) }, 0, "reaped");
    r.start_again();
    assert_eq!(r.port(), port);
    assert_eq!(r.cli(&["get", "k"]), "", "nothing was persisted");
}

#[test]
fn cluster_fixture_has_three_masters_covering_every_slot() {
    let c = RedisCluster::start();
    for node in c.nodes() {
        let info = node.cli(&["cluster", "info"]);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
    }
    // A key is served by the cluster whichever node is asked first (-c follows MOVED).
    let port = c.nodes()[0].port();
    assert_eq!(redis_cli_ok(port, &["-c", "set", "{a}x", "1"]), "OK");
    assert_eq!(
        redis_cli_ok(c.nodes()[2].port(), &["-c", "get", "{a}x"]),
        "1"
    );
    assert!(c.url().starts_with("redis+cluster://127.0.0.1:"));
    assert_eq!(c.url().matches(',').count(), 2);
}

#[test]
fn shared_redis_is_one_while_held_and_stopped_after_the_last() {
    static ONE: Shared<RedisServer> = Shared::new(RedisServer::standalone);
    let a = ONE.get();
    let b = ONE.get();
    assert_eq!(a.port(), b.port(), "one Redis while held");
    let port = a.port();
    drop(a);
    assert!(
        redis_cli(port, &["ping"]).status.success(),
        "still held by b"
    );
    drop(b);
    assert!(
        !redis_cli(port, &["ping"]).status.success(),
        "stopped after the last holder"
    );
}
