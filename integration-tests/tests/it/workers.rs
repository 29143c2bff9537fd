//! Dispatch to workers: `max_in_flight`, least loaded first, failover when a worker goes
//! away, oversized answers (PROTOCOL.md, "Registration", "A worker that goes away", "A
//! worker's oversized answer").

use std::time::Duration;

use cachebackd_proto::v1::{FetchRequest, ItemState, JobConfig};
use tonic::Code;

use crate::harness::*;

const JOB: &str = "workers";

fn async_config() -> JobConfig {
    JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, 30.0)
    }
}

/// The next fetch to reach either worker: 0 for `a`, 1 for `b`.
async fn next_fetch_of_either(a: &mut TestWorker, b: &mut TestWorker) -> (usize, FetchRequest) {
    tokio::select! {
        f = a.next_fetch() => (0, f),
        f = b.next_fetch() => (1, f),
    }
}

#[tokio::test]
async fn max_in_flight_is_respected() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::builder(JOB)
        .config(async_config())
        .max_in_flight(2)
        .connect(&d.endpoint())
        .await;
    for i in 0..5 {
        let r = get(&mut c, JOB, format!("[{i}]")).await;
        assert_eq!(r.state(), ItemState::Miss);
        assert!(r.refresh_scheduled);
    }
    let mut open = vec![w.next_fetch().await, w.next_fetch().await];
    let mut seen = 2;
    while !open.is_empty() {
        assert!(
            w.next_fetch_within(Duration::from_millis(300))
                .await
                .is_none(),
            "more than max_in_flight = 2 fetches unanswered"
        );
        let done = open.remove(0);
        w.reply_value(&done.request_id, done.args.clone(), None)
            .await;
        if seen < 5 {
            open.push(w.next_fetch().await);
            seen += 1;
        }
    }
    let mut args: Vec<_> = w.fetches().into_iter().map(|f| f.args).collect();
    args.sort();
    let mut want: Vec<_> = (0..5).map(|i| format!("[{i}]").into_bytes()).collect();
    want.sort();
    assert_eq!(args, want, "each item fetched once");
}

#[tokio::test]
async fn max_in_flight_zero_means_sixteen() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::builder(JOB)
        .config(async_config())
        .max_in_flight(0)
        .connect(&d.endpoint())
        .await;
    for i in 0..20 {
        get(&mut c, JOB, format!("[{i}]")).await;
    }
    let mut open = Vec::new();
    for _ in 0..16 {
        open.push(w.next_fetch().await);
    }
    assert!(
        w.next_fetch_within(Duration::from_millis(500))
            .await
            .is_none(),
        "more than 16 fetches unanswered"
    );
    w.reply_value(&open[0].request_id, b"0".to_vec(), None)
        .await;
    w.next_fetch().await;
}

#[tokio::test]
async fn least_loaded_worker_gets_the_fetch() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut a = TestWorker::builder(JOB)
        .config(async_config())
        .max_in_flight(4)
        .name("a")
        .connect(&d.endpoint())
        .await;
    let mut b = TestWorker::builder(JOB)
        .config(async_config())
        .max_in_flight(4)
        .name("b")
        .connect(&d.endpoint())
        .await;

    get(&mut c, JOB, b"[1]").await;
    let (first, f1) = next_fetch_of_either(&mut a, &mut b).await;
    get(&mut c, JOB, b"[2]").await;
    let (second, f2) = next_fetch_of_either(&mut a, &mut b).await;
    assert_ne!(first, second, "the idle worker gets the second fetch");

    // Whoever answers first is the less loaded one for the next fetch.
    let (f1_worker, f2_worker) = if first == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    f2_worker
        .reply_value(&f2.request_id, b"2".to_vec(), None)
        .await;
    // The answer travels on the worker's stream, the next Get on another connection: wait
    // until the daemon has taken the answer in (its item is stored) before asking again.
    eventually(WAIT, || {
        let mut c = c.clone();
        async move { (get(&mut c, JOB, b"[2]").await.state() == ItemState::Fresh).then_some(()) }
    })
    .await;
    f2_worker.assert_no_fetch(&c, JOB).await;
    get(&mut c, JOB, b"[3]").await;
    let f3 = f2_worker.next_fetch().await;
    assert_eq!(f3.args, b"[3]", "the worker with nothing in flight gets it");
    assert!(f1_worker.try_next_fetch().is_none());
    f1_worker
        .reply_value(&f1.request_id, b"1".to_vec(), None)
        .await;
    f2_worker
        .reply_value(&f3.request_id, b"3".to_vec(), None)
        .await;
}

#[tokio::test]
async fn worker_going_away_fails_over_in_flight_fetches() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut a = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .name("a")
        .connect(&d.endpoint())
        .await;
    let waiting = spawn_get(&c, JOB, b"[\"sync\"]", None);
    a.next_fetch().await;
    for args in [b"[\"x\"]", b"[\"y\"]"] {
        assert!(get_no_wait(&mut c, JOB, args).await.refresh_scheduled);
        a.next_fetch().await;
    }
    let mut b = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .name("b")
        .connect(&d.endpoint())
        .await;

    // a ends its stream with three fetches unanswered: all three move to b at once.
    a.close();
    let mut moved = Vec::new();
    for _ in 0..3 {
        let f = b.next_fetch().await;
        b.reply_value(
            &f.request_id,
            [b"from b ".as_slice(), &f.args].concat(),
            None,
        )
        .await;
        moved.push(f.args);
    }
    moved.sort();
    assert_eq!(
        moved,
        vec![
            b"[\"sync\"]".to_vec(),
            b"[\"x\"]".to_vec(),
            b"[\"y\"]".to_vec()
        ]
    );
    let r = join_get(waiting).await.expect("Get survives the failover");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"from b [\"sync\"]");
    assert!(r.fetched);
}

#[tokio::test]
async fn worker_connection_drop_fails_over_in_flight_fetches() {
    let d = Daemon::start().await;
    let mut a = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .name("a")
        .connect(&d.endpoint())
        .await;
    let mut b = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .name("b")
        .max_in_flight(1)
        .connect(&d.endpoint())
        .await;
    // Keep b busy, so the fetch under test goes to a.
    let c = d.client();
    let busy = spawn_get(&c, JOB, b"[\"busy\"]", None);
    let (who, busy_fetch) = next_fetch_of_either(&mut a, &mut b).await;
    let waiting = spawn_get(&c, JOB, b"[\"moved\"]", None);
    let (who2, moved_fetch) = next_fetch_of_either(&mut a, &mut b).await;
    assert_ne!(who, who2);
    let (mut gone, mut stays) = if who2 == 0 { (a, b) } else { (b, a) };
    assert_eq!(moved_fetch.args, b"[\"moved\"]");
    stays
        .reply_value(&busy_fetch.request_id, b"\"busy\"".to_vec(), None)
        .await;
    assert_eq!(join_get(busy).await.expect("busy Get").data, b"\"busy\"");

    // The connection of the worker holding the fetch drops without a word.
    assert!(gone.try_next_fetch().is_none());
    drop(gone);
    let f = stays.next_fetch().await;
    assert_eq!(f.args, b"[\"moved\"]");
    stays
        .reply_value(&f.request_id, b"\"rescued\"".to_vec(), None)
        .await;
    let r = join_get(waiting).await.expect("Get survives the failover");
    assert_eq!(r.data, b"\"rescued\"");
    assert!(r.fetched);
}

#[tokio::test]
async fn oversized_worker_answer_fails_fetch_and_stream_stays_open() {
    const LIMIT: usize = 4 * 1024 * 1024;
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, vec![b'x'; LIMIT + 1], None)
        .await;
    let err = join_get(pending).await.expect_err("oversized answer");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let msg = err.message().to_lowercase();
    assert!(
        ["large", "limit", "size", "exceed", "bytes"]
            .iter()
            .any(|w| msg.contains(w)),
        "the message says the answer was too big: {msg:?}"
    );
    assert_eq!(
        get_no_wait(&mut c, JOB, b"[1]").await.state(),
        ItemState::Miss
    );

    // Same stream, next fetch: exactly the limit is fine.
    let pending = spawn_get(&c, JOB, b"[1]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, vec![b'y'; LIMIT], None)
        .await;
    let r = join_get(pending)
        .await
        .expect("answer of exactly the limit");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data.len(), LIMIT);
    assert!(!w.is_closed());
}
