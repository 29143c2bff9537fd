//! Helpers of the operations tests (`ops_*`): scraping `/metrics`, running `cachebackd ctl`,
//! gRPC health, signals, and the systemd notification socket. Additive to the harness.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    HealthCheckResponse,
};

use crate::harness::*;

/// One scrape of `/metrics`: every sample by its full name with labels, as written
/// (`cachebackd_gets_total{job="j",outcome="fresh"}`).
#[derive(Debug, Clone)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// A sample's value; 0 if the sample is absent.
    pub fn get(&self, sample: &str) -> f64 {
        self.0.get(sample).copied().unwrap_or(0.0)
    }

    /// Whether the sample is there at all.
    pub fn has(&self, sample: &str) -> bool {
        self.0.contains_key(sample)
    }
}

/// `GET /metrics` over a plain TCP connection (HTTP/1.1, `Connection: close`): the status
/// line, the Content-Type, and the samples.
pub async fn scrape_raw(addr: &str, accept: Option<&str>) -> (String, String, String) {
    let mut stream = within(
        "connect to the metrics endpoint",
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    within("metrics response", stream.read_to_string(&mut response))
        .await
        .expect("read the metrics response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("an HTTP response with a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// `GET /metrics`, parsed.
pub async fn scrape(addr: &str) -> Scrape {
    let (status, _, body) = scrape_raw(addr, None).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "metrics body: {body}");
    let mut samples = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("a number in {line:?}"));
        samples.insert(name.to_owned(), value);
    }
    Scrape(samples)
}

/// Runs `cachebackd ctl --addr ADDR ARGS…` to its end (off the async threads).
pub async fn ctl(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("ctl")
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("CACHEBACKD_URL");
    within(
        "cachebackd ctl",
        tokio::task::spawn_blocking(move || cmd.output().expect("run cachebackd ctl")),
    )
    .await
    .expect("ctl task")
}

/// Runs `cachebackd ctl … --json`, expects success, and parses its stdout.
pub async fn ctl_json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(addr, &all).await;
    assert!(
        out.status.success(),
        "cachebackd ctl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ctl {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A channel to the daemon's TCP listener.
pub async fn channel(d: &Daemon) -> Channel {
    Endpoint::from_shared(d.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// `grpc.health.v1.Health/Check` of `service`.
pub async fn health_check(channel: Channel, service: &str) -> ServingStatus {
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    r.status()
}

/// A `grpc.health.v1.Health/Watch` stream of `service`.
pub async fn health_watch(
    channel: Channel,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health watch")
        .into_inner()
}

/// The next status on a Watch stream (capped at [`WAIT`]); `None` when the stream ended
/// cleanly.
pub async fn next_status(
    watch: &mut tonic::Streaming<HealthCheckResponse>,
) -> Option<ServingStatus> {
    within("a health update", watch.message())
        .await
        .expect("the health stream ends cleanly")
        .map(|r| r.status())
}

/// Sends SIGTERM to the daemon without waiting for it to exit.
pub fn sigterm(d: &Daemon) {
    let pid = d.pid().expect("the daemon runs") as libc::pid_t;
    // SAFETY: kill(2) on our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// A stand-in for systemd's notification socket (`NOTIFY_SOCKET`).
pub struct NotifySocket {
    socket: UnixDatagram,
    /// Where it is bound.
    pub path: std::path::PathBuf,
}

impl NotifySocket {
    /// Binds a datagram socket in `dir`.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(WAIT)).expect("read timeout");
        NotifySocket { socket, path }
    }

    /// The next notification (blocking up to [`WAIT`], off the async threads): its
    /// `KEY=value` lines.
    pub async fn next(&self) -> Vec<String> {
        let socket = self.socket.try_clone().expect("clone the notify socket");
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 4096];
            let n = socket
                .recv(&mut buf)
                .expect("a notification within the cap");
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .await
        .expect("notify task")
    }

    /// Waits for a notification holding `line`, skipping others (watchdog pings); returns
    /// the skipped ones.
    pub async fn wait_for(&self, line: &str) -> Vec<Vec<String>> {
        let mut skipped = Vec::new();
        loop {
            let n = self.next().await;
            if n.iter().any(|l| l == line) {
                return skipped;
            }
            skipped.push(n);
        }
    }
}

/// A sample name for a job-labelled series.
pub fn job_sample(name: &str, job: &str) -> String {
    format!("{name}{{job=\"{job}\"}}")
}

/// How long the tests let a daemon drain.
pub const GRACE: Duration = Duration::from_secs(60);
