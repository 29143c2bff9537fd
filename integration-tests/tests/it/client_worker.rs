//! The `cacheback::Worker` runtime against the real daemon: reconnection after a
//! restart, two workers sharing a job, failing and panicking fetches, bounded
//! concurrency, graceful stop, and a refused registration.

use std::{collections::BTreeSet, time::Duration};

use cacheback::{ItemState, Job, Worker};
use tonic::Code;

use crate::{
    client_support::{connect, spawn, start, Probe, Tweets},
    harness::{within, Daemon},
};

/// Reconnection attempts close together, so a restart is noticed quickly.
fn quick_worker(client: cacheback::Client) -> Worker {
    Worker::new(client).reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))
}

#[tokio::test]
async fn a_worker_registers_again_after_the_daemon_restarts() {
    let mut daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(quick_worker(client.clone()).serve(Tweets(probe.clone()))).await;
    assert_eq!(worker.handle.registrations(), 1);
    let job = Tweets(probe.clone());
    let tweets = client.job(&job);
    assert_eq!(
        tweets.get(&"bob".to_owned()).await.unwrap().unwrap(),
        ["bob #1"]
    );

    daemon.restart().await;
    within(
        "the worker to register again",
        worker.handle.wait_for_registrations(2),
    )
    .await
    .unwrap();

    // The item survived the restart; a new one is fetched by the re-registered worker.
    let kept = tweets.get_item(&"bob".to_owned()).await.unwrap();
    assert_eq!(kept.state, ItemState::Fresh);
    assert_eq!(kept.data.unwrap(), ["bob #1"]);
    let alice = tweets.get_item(&"alice".to_owned()).await.unwrap();
    assert!(alice.fetched);
    assert_eq!(alice.data.unwrap(), ["alice #2"]);
    assert_eq!(probe.fetches(), 2);
    assert_eq!(worker.handle.registrations(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_registers_again_after_its_connection_drops() {
    let mut daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    let worker = start(quick_worker(client.clone()).serve(Tweets(probe.clone()))).await;

    // SIGKILL: no goodbye on the stream, the connection just drops.
    daemon.kill().await;
    daemon.start_again().await;
    within(
        "the worker to register again",
        worker.handle.wait_for_registrations(2),
    )
    .await
    .unwrap();

    let job = Tweets(probe.clone());
    let item = client
        .job(&job)
        .get_item(&"carol".to_owned())
        .await
        .unwrap();
    assert!(item.fetched);
    assert_eq!(item.data.unwrap(), ["carol #1"]);
    assert_eq!(probe.fetches(), 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn two_workers_share_a_job() {
    let daemon = Daemon::start().await;
    let (a, b) = (Probe::default(), Probe::default());
    a.hold();
    b.hold();
    // Two app servers, each on its own connection, each taking one fetch at a time.
    let worker_a = Worker::new(connect(&daemon).await).name("app-a");
    let worker_b = Worker::new(connect(&daemon).await).name("app-b");
    let worker_a = start(worker_a.serve_with(Tweets(a.clone()), 1)).await;
    let worker_b = start(worker_b.serve_with(Tweets(b.clone()), 1)).await;

    let client = connect(&daemon).await;
    let reads: Vec<_> = ["alice", "bob"]
        .into_iter()
        .map(|user| {
            let client = client.clone();
            tokio::spawn(async move {
                let job = Tweets(Probe::default());
                client.job(&job).get(&user.to_owned()).await
            })
        })
        .collect();
    // Each worker holds one fetch: the daemon gave the second to the other worker.
    a.started(1).await;
    b.started(1).await;
    a.release(1);
    b.release(1);

    let mut got = BTreeSet::new();
    for read in reads {
        let tweets = within("a read", read).await.unwrap().unwrap().unwrap();
        got.extend(tweets);
    }
    assert_eq!(
        got,
        BTreeSet::from(["alice #1".to_owned(), "bob #1".to_owned()])
    );
    assert_eq!((a.fetches(), b.fetches()), (1, 1));
    worker_a.stop().await.unwrap();
    worker_b.stop().await.unwrap();
}

/// Fails on "fail", panics on "boom", fetches anything else.
struct Faulty;

impl Job for Faulty {
    type Args = String;
    type Output = String;
    type Error = std::io::Error;

    const NAME: &'static str = "tweets.Faulty";

    async fn fetch(&self, username: String) -> Result<String, std::io::Error> {
        match username.as_str() {
            "fail" => Err(std::io::Error::other("the API said no")),
            "boom" => panic!("boom while fetching {username}"),
            _ => Ok(format!("{username}'s tweets")),
        }
    }
}

#[tokio::test]
async fn a_failing_or_panicking_fetch_is_a_fetch_error_and_the_worker_serves_on() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let worker = start(Worker::new(client.clone()).serve(Faulty)).await;
    let faulty = client.job(&Faulty);

    let failed = faulty.get(&"fail".to_owned()).await.unwrap_err();
    assert_eq!(failed.code(), Some(Code::Unavailable), "{failed}");
    let message = failed.status().unwrap().message();
    assert!(message.contains("the API said no"), "{message}");

    let panicked = faulty.get(&"boom".to_owned()).await.unwrap_err();
    assert_eq!(panicked.code(), Some(Code::Unavailable), "{panicked}");
    let message = panicked.status().unwrap().message();
    assert!(
        message.contains("fetch panicked: boom while fetching boom"),
        "{message}"
    );

    // Same worker, same stream: it serves on.
    let ok = faulty.get(&"bob".to_owned()).await.unwrap();
    assert_eq!(ok.as_deref(), Some("bob's tweets"));
    assert_eq!(worker.handle.registrations(), 1);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_worker_runs_at_most_max_in_flight_fetches_of_a_job_at_once() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    probe.hold();
    let worker = start(Worker::new(client.clone()).serve_with(Tweets(probe.clone()), 2)).await;

    let reads: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|user| {
            let client = client.clone();
            tokio::spawn(async move {
                let job = Tweets(Probe::default());
                client.job(&job).get(&user.to_owned()).await
            })
        })
        .collect();
    probe.started(2).await;
    probe.release(3);
    for read in reads {
        within("a read", read).await.unwrap().unwrap().unwrap();
    }
    assert_eq!(probe.fetches(), 3);
    assert_eq!(probe.peak(), 2);
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn stop_finishes_the_fetches_in_flight_first() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let probe = Probe::default();
    probe.hold();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;

    let read = {
        let client = client.clone();
        tokio::spawn(async move {
            let job = Tweets(Probe::default());
            client.job(&job).get_item(&"bob".to_owned()).await
        })
    };
    probe.started(1).await;
    worker.handle.stop();
    probe.release(1);

    let item = within("the read", read).await.unwrap().unwrap();
    assert_eq!(item.state, ItemState::Fresh);
    assert!(item.fetched);
    assert_eq!(item.data.unwrap(), ["bob #1"]);
    worker.finished().await.unwrap();
    assert_eq!(probe.fetches(), 1);
}

/// A job whose name the daemon refuses.
struct BadName;

impl Job for BadName {
    type Args = ();
    type Output = String;
    type Error = std::convert::Infallible;

    const NAME: &'static str = "user tweets";

    async fn fetch(&self, (): ()) -> Result<String, Self::Error> {
        Ok(String::new())
    }
}

#[tokio::test]
async fn a_refused_registration_stops_the_worker_with_the_daemons_status() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let worker = spawn(Worker::new(client).serve(BadName));
    let not_ready = within("ready to fail", worker.handle.ready()).await;
    assert!(matches!(not_ready, Err(cacheback::Error::WorkerStopped)));
    let error = worker.finished().await.unwrap_err();
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
}

/// Answers "big" with 200 KiB of data, anything else with a short string.
struct Sized;

impl Job for Sized {
    type Args = String;
    type Output = String;
    type Error = std::io::Error;

    const NAME: &'static str = "tweets.Sized";

    async fn fetch(&self, name: String) -> Result<String, std::io::Error> {
        Ok(match name.as_str() {
            "big" => "x".repeat(200 * 1024),
            _ => format!("{name}'s tweets"),
        })
    }
}

#[tokio::test]
async fn a_refused_answer_reaches_on_refused_and_the_worker_serves_on() {
    let daemon = Daemon::builder()
        .args(["--max-answer-bytes", "100KiB"])
        .start()
        .await;
    let client = connect(&daemon).await;
    let (tx, mut refusals) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::new(client.clone())
        .serve(Sized)
        .on_refused(move |r| {
            let _ = tx.send(r.clone());
        });
    let worker = start(worker).await;
    let sized = client.job(&Sized);

    let failed = sized.get(&"big".to_owned()).await.unwrap_err();
    assert_eq!(failed.code(), Some(Code::Unavailable), "{failed}");
    let refused = within("the refusal", refusals.recv()).await.unwrap();
    assert_eq!(refused.job, "tweets.Sized");
    assert_eq!(refused.code, Code::Unavailable);
    assert_eq!(refused.reason, failed.status().unwrap().message());
    assert!(refused.reason.contains("max_answer_bytes"), "{refused:?}");
    assert_eq!(
        uuid::Uuid::parse_str(&refused.request_id).map(|_| ()),
        Ok(()),
        "{refused:?}"
    );
    assert_eq!(worker.handle.answers_refused(), 1);

    // Same stream: the next answer is taken.
    let ok = sized.get(&"bob".to_owned()).await.unwrap();
    assert_eq!(ok.as_deref(), Some("bob's tweets"));
    assert_eq!(worker.handle.registrations(), 1);
    assert_eq!(worker.handle.answers_refused(), 1);
    assert!(refusals.try_recv().is_err(), "one refusal only");
    worker.stop().await.unwrap();
}
