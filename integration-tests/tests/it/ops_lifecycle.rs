//! Running under a service manager: gRPC health through the drain, readiness and stopping
//! notifications, the watchdog, socket activation (issue "run it as a real daemon").

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use cachebackd_proto::v1::ItemState;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::*;
use crate::ops_support::*;

const JOB: &str = "ops-lifecycle";

#[tokio::test]
async fn sigterm_flips_health_drains_gets_ends_workers_cleanly_and_keeps_data() {
    let mut d = Daemon::builder()
        .args(["--drain-grace", "60s"])
        .start()
        .await;
    let mut client = d.client();
    let mut worker = TestWorker::register(&d, JOB, job_config(300.0, 60.0)).await;
    set(
        &mut client,
        JOB,
        b"[\"kept\"]",
        b"\"written before SIGTERM\"".to_vec(),
        None,
    )
    .await;

    // Health watchers on their own connection, opened while the daemon serves.
    let ch = channel(&d).await;
    let mut server = health_watch(ch.clone(), "").await;
    let mut service = health_watch(ch.clone(), "cacheback.v1.Cacheback").await;
    assert_eq!(next_status(&mut server).await, Some(ServingStatus::Serving));
    assert_eq!(
        next_status(&mut service).await,
        Some(ServingStatus::Serving)
    );
    assert_eq!(
        health_check(ch.clone(), "cacheback.v1.CachebackAdmin").await,
        ServingStatus::Serving
    );

    // A Get in flight: it waits for the worker's answer.
    let pending = spawn_get(&client, JOB, b"[\"in flight\"]", Some(true));
    let fetch = worker.next_fetch().await;

    sigterm(&d);
    // The drain has started: health says so at once, on both names.
    assert_eq!(
        next_status(&mut server).await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        next_status(&mut service).await,
        Some(ServingStatus::NotServing)
    );

    // The worker is still connected during the drain and answers; the Get completes.
    worker
        .reply_value(
            &fetch.request_id,
            b"\"answered while draining\"".to_vec(),
            None,
        )
        .await;
    let r = join_get(pending)
        .await
        .expect("the in-flight Get finishes within the grace");
    assert_eq!(r.state(), ItemState::Fresh);
    assert!(r.fetched);
    assert_eq!(r.data, b"\"answered while draining\"");

    // Then every stream ends cleanly: the worker's, and the health watches.
    if let Err(status) = worker.wait_closed().await {
        panic!("the worker stream ended with {status:?}, not cleanly");
    }
    assert_eq!(next_status(&mut server).await, None);
    assert_eq!(next_status(&mut service).await, None);

    let status = d.stop().await;
    assert!(status.success(), "exit status {status}");
    assert!(!d.stderr_log().contains("cut off"), "{}", d.stderr_log());

    // Both the item set before SIGTERM and the one fetched during the drain are kept.
    d.start_again().await;
    let mut client = d.client();
    let kept = get(&mut client, JOB, b"[\"kept\"]").await;
    assert_eq!(kept.state(), ItemState::Fresh);
    assert_eq!(kept.data, b"\"written before SIGTERM\"");
    let fetched = get_no_wait(&mut client, JOB, b"[\"in flight\"]").await;
    assert_eq!(fetched.state(), ItemState::Fresh);
    assert_eq!(fetched.data, b"\"answered while draining\"");
}

#[tokio::test]
async fn systemd_hears_ready_only_once_listening_then_stopping() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let notify = NotifySocket::bind(tmp.path());
    let (port, metrics_port) = (free_port(), free_port());
    let child = Command::new(daemon_bin())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cachebackd");
    let mut child = KillOnDrop(Some(child));

    let before_ready = notify.wait_for("READY=1").await;
    assert!(
        before_ready.iter().flatten().all(|l| l == "WATCHDOG=1"),
        "only watchdog pings may come before READY=1: {before_ready:?}"
    );
    // READY=1 means every listener is bound: both accept a connection right away.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("gRPC listener bound at READY");
    std::net::TcpStream::connect(("127.0.0.1", metrics_port))
        .expect("metrics listener bound at READY");
    let mut client = connect(&format!("http://127.0.0.1:{port}")).await;
    let err = try_get(&mut client, "never-registered", b"[]", None)
        .await
        .expect_err("an unknown job");
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The watchdog is pinged (WATCHDOG_USEC was set).
    notify.wait_for("WATCHDOG=1").await;

    // SIGTERM: STOPPING=1, then a clean exit.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.pid(), libc::SIGTERM) }, 0);
    notify.wait_for("STOPPING=1").await;
    let (status, _) = child.wait().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn socket_activation_serves_on_the_passed_sockets() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let grpc = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let grpc_addr = grpc.local_addr().unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let (grpc_fd, metrics_fd) = (grpc.as_raw_fd(), metrics.as_raw_fd());
    // systemd's protocol: the sockets at fds 3 and 4, LISTEN_PID the daemon's own pid
    // (the shell execs the daemon, keeping its pid), LISTEN_FDS and LISTEN_FDNAMES.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
        .arg(daemon_bin())
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        // Never bound under socket activation.
        .args(["--listen", "unix:/nonexistent-dir/cachebackd.sock"])
        .env("LISTEN_FDS", "2")
        .env("LISTEN_FDNAMES", "grpc:metrics")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let a = libc::fcntl(grpc_fd, libc::F_DUPFD, 10);
            let b = libc::fcntl(metrics_fd, libc::F_DUPFD, 10);
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = KillOnDrop(Some(cmd.spawn().expect("spawn cachebackd under sh")));
    drop((grpc, metrics));

    // The daemon answers on the passed gRPC socket (polling until it accepts calls).
    let endpoint = format!("http://{grpc_addr}");
    let ch = eventually(READY_CAP, || {
        let endpoint = endpoint.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(endpoint)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            let r = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .ok()?;
            (r.into_inner().status() == ServingStatus::Serving).then_some(ch)
        }
    })
    .await;
    let mut client = client_for(ch);
    let err = try_get(&mut client, "never-registered", b"[]", None)
        .await
        .expect_err("an unknown job");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // ... and serves metrics on the socket named "metrics".
    let scraped = scrape(&metrics_addr.to_string()).await;
    assert!(scraped.has("cachebackd_uptime_seconds"), "{scraped:?}");

    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.pid(), libc::SIGTERM) }, 0);
    let output = child.wait().await;
    assert!(
        output.0.success(),
        "exit status {}; stderr:\n{}",
        output.0,
        output.1
    );
    assert!(
        output.1.contains("serving on a socket passed by systemd"),
        "{}",
        output.1
    );
}

/// A daemon spawned by hand; killed if the test fails before it exits.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn pid(&self) -> libc::pid_t {
        self.0.as_ref().expect("running").id() as libc::pid_t
    }

    /// Waits (up to [`WAIT`]) for the exit: its status and its stderr, if piped.
    async fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.0.take().expect("running");
        within(
            "the daemon's exit",
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    pipe.read_to_string(&mut stderr).expect("read stderr");
                }
                (child.wait().expect("wait"), stderr)
            }),
        )
        .await
        .expect("wait task")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
