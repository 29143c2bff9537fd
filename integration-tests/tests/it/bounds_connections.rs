//! Bounds on connections: MAX_CONCURRENT_STREAMS is advertised, idle connections are
//! closed (a connection with a call open is not), at most `max_connections` are served
//! (the rest wait, with a log line), and running out of file descriptors is met with
//! back-off and a log line, after which the daemon serves again.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;

use crate::bounds_support::*;
use crate::harness::*;
use crate::ops_support::scrape;

const JOB: &str = "conns";

/// A TCP connection that has sent the HTTP/2 preface and an empty SETTINGS frame, and
/// nothing else.
async fn raw_h2(d: &Daemon) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", d.port()))
        .await
        .expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    s
}

/// The settings of the server's first SETTINGS frame.
async fn server_settings(s: &mut TcpStream) -> Vec<(u16, u32)> {
    loop {
        let mut header = [0u8; 9];
        within("a frame", s.read_exact(&mut header))
            .await
            .expect("read");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0; len];
        within("a frame", s.read_exact(&mut payload))
            .await
            .expect("read");
        let (kind, flags) = (header[3], header[4]);
        if kind == 4 && flags & 1 == 0 {
            return payload
                .chunks(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect();
        }
    }
}

#[tokio::test]
async fn max_concurrent_streams_is_advertised() {
    let d = Daemon::start().await;
    let mut s = raw_h2(&d).await;
    let settings = server_settings(&mut s).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS is 0x3.
    assert!(settings.contains(&(3, 1000)), "{settings:?}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_one_with_a_call_open_is_not() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--idle-timeout", "1s", "--metrics-listen", &metrics])
        .start()
        .await;
    let worker = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut idle = raw_h2(&d).await;
    // Read until the daemon closes the connection (end of file or a reset).
    let mut sink = vec![0u8; 4096];
    loop {
        match within("the idle connection to close", idle.read(&mut sink)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(
        !worker.is_closed(),
        "a worker's stream is a call open: kept"
    );
    assert!(
        scrape(&metrics)
            .await
            .get("cachebackd_idle_connections_closed_total")
            >= 1.0
    );
    // Two idle timeouts later the worker still serves.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut c = d.client();
    set(&mut c, JOB, "[1]", "x", None).await;
    assert!(!worker.is_closed());
}

#[tokio::test]
async fn past_max_connections_new_ones_wait_until_one_closes() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--max-connections", "2", "--metrics-listen", &metrics])
        .start()
        .await;
    let first = raw_h2(&d).await;
    let mut second = raw_h2(&d).await;
    // Both are served (each gets the server's SETTINGS) ...
    server_settings(&mut second).await;
    // ... and a third waits: a call on it does not get through.
    {
        let waiting = Endpoint::from_shared(d.endpoint())
            .unwrap()
            .timeout(Duration::from_millis(500))
            .connect_lazy();
        let mut c = client_for(waiting);
        let status = try_get(&mut c, JOB, b"[]", Some(false)).await.unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
            ),
            "{status:?}"
        );
    }
    assert!(
        d.stderr_log().contains("the connection limit is reached"),
        "{}",
        d.stderr_log()
    );
    assert!(
        scrape(&metrics)
            .await
            .get("cachebackd_connection_limit_hits_total")
            >= 1.0
    );
    drop(first);
    let mut c = client_for(Endpoint::from_shared(d.endpoint()).unwrap().connect_lazy());
    let status = try_get(&mut c, JOB, b"[]", Some(false)).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "served once a place is free"
    );
    drop(second);
}

#[tokio::test]
async fn out_of_file_descriptors_the_daemon_backs_off_and_serves_again() {
    let d = Daemon::start().await;
    let pid = d.pid().unwrap().to_string();
    run("prlimit", &["--nofile=64:64", "--pid", &pid]);
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", d.port())).await {
            held.push(s);
        }
    }
    until("the accept failure is logged", || {
        d.stderr_log().contains("cannot accept a connection")
    })
    .await;
    let lines = d
        .stderr_log()
        .lines()
        .filter(|l| l.contains("cannot accept a connection"))
        .count();
    assert!(lines <= 2, "{lines} lines: the failure is rate-limited");
    drop(held);
    let mut c = d.connect().await;
    let status = try_get(&mut c, JOB, b"[]", Some(false)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "served again");
}
