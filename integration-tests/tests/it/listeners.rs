//! The process around the engine: Unix-socket and multiple listeners, shutdown on SIGTERM
//! (PROTOCOL.md, "The daemon's command line").

use cachebackd_proto::v1::ItemState;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};

use crate::harness::*;

const JOB: &str = "listeners";

#[tokio::test]
async fn unix_socket_listener() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cachebackd.sock");
    let d = Daemon::builder()
        .listen(format!("unix:{}", socket.display()))
        .start()
        .await;

    // The URI is a placeholder: the connector ignores it and dials the socket.
    let channel = Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
        .expect("connect over the Unix socket");
    let mut unix = client_for(channel);

    // A worker over the socket serves a Get over TCP.
    let mut w = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .try_connect_with(unix.clone())
        .await
        .expect("register over the Unix socket");
    let tcp = d.client();
    let pending = spawn_get(&tcp, JOB, b"[1]", None);
    let f = w.next_fetch().await;
    w.reply_value(&f.request_id, b"\"via unix\"".to_vec(), None)
        .await;
    assert_eq!(join_get(pending).await.expect("Get").data, b"\"via unix\"");

    set(&mut unix, JOB, b"[2]", b"2".to_vec(), None).await;
    let r = get(&mut unix, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"via unix\"");
    let mut tcp = tcp;
    assert_eq!(get(&mut tcp, JOB, b"[2]").await.data, b"2");
}

#[tokio::test]
async fn multiple_listeners() {
    let second_port = free_port();
    let d = Daemon::builder()
        .listen(format!("127.0.0.1:{second_port}"))
        .start()
        .await;
    let second = format!("http://127.0.0.1:{second_port}");
    let mut first_client = d.client();
    let mut second_client = connect(&second).await;

    let mut w = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .connect(&second)
        .await;
    let pending = spawn_get(&first_client, JOB, b"[1]", None);
    let f = w.next_fetch().await;
    w.reply_value(&f.request_id, b"1".to_vec(), None).await;
    assert_eq!(join_get(pending).await.expect("Get").data, b"1");

    set(&mut second_client, JOB, b"[2]", b"2".to_vec(), None).await;
    assert_eq!(get(&mut first_client, JOB, b"[2]").await.data, b"2");
    assert_eq!(get(&mut second_client, JOB, b"[1]").await.data, b"1");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;

    // Our side of the worker stream stays open: the daemon must end it itself.
    let (status, end) = tokio::join!(d.stop(), w.wait_closed());
    assert!(status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(0));
    assert!(end.is_ok(), "worker stream ended cleanly: {end:?}");
    assert!(d.stdout_log().is_empty(), "stdout stays empty");
    assert!(!d.stderr_log().is_empty(), "logs go to stderr");
}
