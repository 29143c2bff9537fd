//! How fetches run: one per item at a time, lost after `refresh_timeout`, queued while no
//! worker can take them, failing to UNAVAILABLE, held back by backoff only when
//! asynchronous (PROTOCOL.md, "At most one fetch per item" to "Backoff").

use std::time::{Duration, Instant, SystemTime};

use cachebackd_proto::v1::{FetchReason, GetRequest, ItemState, JobConfig};
use tonic::Code;

use crate::harness::*;

const JOB: &str = "fetching";

fn async_config(refresh_timeout: f64) -> JobConfig {
    JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, refresh_timeout)
    }
}

/// Register `job` with `config`, then restart the daemon: the job is known (its config is
/// durable) and no worker is connected, with no doubt about when the daemon noticed.
async fn job_without_workers(d: &mut Daemon, job: &str, config: JobConfig) {
    let w = TestWorker::register(d, job, config).await;
    drop(w);
    let status = d.restart().await.expect("was running");
    assert!(status.success(), "clean stop: {status}");
}

#[tokio::test]
async fn at_most_one_fetch_per_item_in_flight() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, async_config(30.0)).await;

    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss);
    let fetch = w.next_fetch().await;
    for _ in 0..10 {
        let r = get(&mut c, JOB, b"[1]").await;
        assert_eq!(r.state(), ItemState::Miss);
        assert!(r.refresh_scheduled);
    }
    // A synchronous Get joins too, and so does an Invalidate of the absent item.
    let joined = spawn_get(&c, JOB, b"[1]", Some(true));
    let inv = invalidate(&mut c, JOB, b"[1]").await;
    assert!(!inv.found);
    w.assert_no_fetch(&c, JOB).await;

    w.reply_value(&fetch.request_id, b"1".to_vec(), None).await;
    let r = join_get(joined).await.expect("joined Get");
    assert_eq!(r.data, b"1");
    assert!(r.fetched);
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[1]").count(), 1);
}

#[tokio::test]
async fn lost_fetch_after_refresh_timeout_allows_another() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::builder(JOB)
        .config(async_config(1.0))
        .max_in_flight(2)
        .connect(&d.endpoint())
        .await;

    assert_eq!(get(&mut c, JOB, b"[2]").await.state(), ItemState::Miss);
    let first = w.next_fetch().await;
    let first_deadline = wall(first.deadline.as_ref().expect("deadline"));

    // Once the first fetch is lost, the next Get starts another.
    let start = Instant::now();
    let second = loop {
        let r = get(&mut c, JOB, b"[2]").await;
        assert_eq!(r.state(), ItemState::Miss);
        if let Some(f) = w.next_fetch_within(Duration::from_millis(100)).await {
            break f;
        }
        assert!(
            start.elapsed() < WAIT,
            "no second fetch after the first was lost"
        );
    };
    assert!(
        SystemTime::now() >= first_deadline,
        "a second fetch started before the first one's deadline"
    );
    assert_eq!(second.args, b"[2]");
    assert_ne!(second.request_id, first.request_id);

    w.reply_value(&second.request_id, b"\"second\"".to_vec(), None)
        .await;
    // The lost fetch's late answer is dropped.
    w.reply_value(&first.request_id, b"\"late\"".to_vec(), None)
        .await;
    w.assert_no_fetch(&c, JOB).await;
    let r = get(&mut c, JOB, b"[2]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"second\"");
}

#[tokio::test]
async fn lost_fetch_keeps_its_slot() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let cfg = async_config(3.0);
    let mut a = TestWorker::builder(JOB)
        .config(cfg)
        .max_in_flight(1)
        .name("a")
        .connect(&d.endpoint())
        .await;
    assert_eq!(get(&mut c, JOB, b"[1]").await.state(), ItemState::Miss);
    let lost = a.next_fetch().await;
    let mut b = TestWorker::builder(JOB)
        .config(cfg)
        .max_in_flight(1)
        .name("b")
        .connect(&d.endpoint())
        .await;

    // After the deadline, a new fetch of the item goes to b: a's slot is still taken.
    let start = Instant::now();
    let on_b = loop {
        get(&mut c, JOB, b"[1]").await;
        if let Some(f) = b.next_fetch_within(Duration::from_millis(100)).await {
            break f;
        }
        assert!(
            start.elapsed() < WAIT,
            "no new fetch after the first was lost"
        );
    };
    assert_eq!(on_b.args, b"[1]");
    assert!(a.try_next_fetch().is_none(), "a stuck worker got more work");

    // Both workers full: another item waits in the queue...
    assert!(get(&mut c, JOB, b"[2]").await.refresh_scheduled);
    assert!(
        a.next_fetch_within(Duration::from_millis(500))
            .await
            .is_none(),
        "a got a fetch while its lost fetch held its only slot"
    );
    // ...until a's late answer (dropped) frees its slot.
    a.reply_value(&lost.request_id, b"\"late\"".to_vec(), None)
        .await;
    let on_a = a.next_fetch().await;
    assert_eq!(on_a.args, b"[2]");
    let r = get(&mut c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss, "the late answer was not stored");

    b.reply_value(&on_b.request_id, b"\"one\"".to_vec(), None)
        .await;
    a.reply_value(&on_a.request_id, b"\"two\"".to_vec(), None)
        .await;
    for (args, data) in [(&b"[1]"[..], &b"\"one\""[..]), (b"[2]", b"\"two\"")] {
        let r = eventually(WAIT, || {
            let mut c = c.clone();
            async move {
                let r = get_no_wait(&mut c, JOB, args).await;
                (r.state() == ItemState::Fresh).then_some(r)
            }
        })
        .await;
        assert_eq!(r.data, data);
    }
}

#[tokio::test]
async fn unanswered_fetch_fails_waiting_get_with_unavailable() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 1.0)).await;
    let pending = spawn_get(&c, JOB, b"[3]", None);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[3]");
    let err = join_get(pending).await.expect_err("no answer in time");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().is_empty());
    assert_eq!(
        get_no_wait(&mut c, JOB, b"[3]").await.state(),
        ItemState::Miss
    );
}

#[tokio::test]
async fn fetch_waits_in_queue_for_a_worker() {
    let mut d = Daemon::start().await;
    job_without_workers(&mut d, JOB, job_config(300.0, 20.0)).await;
    let mut c = d.client();

    let scheduled_after = SystemTime::now();
    let r = get_no_wait(&mut c, JOB, b"[4]").await;
    let scheduled_before = SystemTime::now();
    assert_eq!(r.state(), ItemState::Miss);
    assert!(r.refresh_scheduled, "queued for a worker");
    let pending = spawn_get(&c, JOB, b"[4]", None);
    // Let the queueing take time, to see that the deadline counts it.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 20.0)).await;
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[4]");
    assert_eq!(fetch.reason(), FetchReason::Miss);
    let deadline = wall(fetch.deadline.as_ref().expect("deadline"));
    let slack = Duration::from_millis(250);
    assert!(
        deadline + slack >= scheduled_after + Duration::from_secs(20)
            && deadline <= scheduled_before + Duration::from_secs(20) + slack,
        "deadline is refresh_timeout after the fetch was first scheduled"
    );
    w.reply_value(&fetch.request_id, b"\"queued\"".to_vec(), None)
        .await;
    let r = join_get(pending)
        .await
        .expect("Get waiting on the queued fetch");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"queued\"");
    assert!(r.fetched);
    assert_eq!(w.fetch_count(), 1);
}

#[tokio::test]
async fn queued_fetch_with_no_worker_fails_unavailable_at_its_deadline() {
    let mut d = Daemon::start().await;
    job_without_workers(&mut d, JOB, job_config(300.0, 1.0)).await;
    let mut c = d.client();
    let err = within("Get with no worker", try_get(&mut c, JOB, b"[5]", None))
        .await
        .expect_err("no worker within the deadline");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(!err.message().is_empty());
}

#[tokio::test]
async fn full_queue_answers_resource_exhausted() {
    let mut d = Daemon::builder()
        .args(["--queue-capacity", "2"])
        .start()
        .await;
    job_without_workers(&mut d, JOB, job_config(300.0, 30.0)).await;
    let mut c = d.client();

    for args in [b"[\"a\"]", b"[\"b\"]"] {
        let r = get_no_wait(&mut c, JOB, args).await;
        assert_eq!(r.state(), ItemState::Miss);
        assert!(r.refresh_scheduled);
    }
    let err = try_get(&mut c, JOB, b"[\"c\"]", None)
        .await
        .expect_err("the queue is full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // An asynchronous miss is not refused, but promises no refresh it could not queue.
    let r = get_no_wait(&mut c, JOB, b"[\"d\"]").await;
    assert_eq!(r.state(), ItemState::Miss);
    assert!(!r.refresh_scheduled, "nothing could be queued");

    // Nothing queued was lost, and there is room again once a worker drains the queue.
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut queued = vec![w.next_fetch().await, w.next_fetch().await];
    queued.sort_by(|x, y| x.args.cmp(&y.args));
    assert_eq!(queued[0].args, b"[\"a\"]");
    assert_eq!(queued[1].args, b"[\"b\"]");
    for f in &queued {
        w.reply_value(&f.request_id, f.args.clone(), None).await;
    }
    let pending = spawn_get(&c, JOB, b"[\"c\"]", None);
    let f = w.next_fetch().await;
    assert_eq!(f.args, b"[\"c\"]");
    w.reply_value(&f.request_id, b"\"c\"".to_vec(), None).await;
    assert_eq!(join_get(pending).await.expect("Get c").data, b"\"c\"");
    assert_eq!(get_no_wait(&mut c, JOB, b"[\"a\"]").await.data, b"[\"a\"]");
}

#[tokio::test]
async fn caller_deadline_exceeded_does_not_cancel_shared_fetch() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let mut req = tonic::Request::new(GetRequest {
        job: JOB.into(),
        args: b"[6]".to_vec(),
        fetch_on_miss: None,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(500));
    let mut impatient = c.clone();
    let call = tokio::spawn(async move { impatient.get(req).await });
    let fetch = w.next_fetch().await;
    let err = within("Get with a 500 ms deadline", call)
        .await
        .expect("task")
        .expect_err("the caller's deadline passes first");
    // The daemon answers DEADLINE_EXCEEDED at the deadline; tonic's channel keeps a timer
    // of the same deadline and, on a loaded machine, may fire first (CANCELLED "Timeout
    // expired"). Either way the caller's deadline passed; what matters is below.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );

    // The fetch goes on: a later Get joins it and gets its result.
    let joined = spawn_get(&c, JOB, b"[6]", None);
    w.assert_no_fetch(&c, JOB).await;
    w.reply_value(&fetch.request_id, b"\"patient\"".to_vec(), None)
        .await;
    let r = join_get(joined).await.expect("joined Get");
    assert_eq!(r.data, b"\"patient\"");
    assert!(r.fetched);
    let r = get(&mut c, JOB, b"[6]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"patient\"");
    assert_eq!(w.fetches().iter().filter(|f| f.args == b"[6]").count(), 1);
}

#[tokio::test]
async fn fetch_error_gives_unavailable_with_worker_message() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let pending = spawn_get(&c, JOB, b"[7]", None);
    let fetch = w.next_fetch().await;
    w.reply_error(&fetch.request_id, "database on fire").await;
    let err = join_get(pending).await.expect_err("the fetch failed");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("database on fire"),
        "the worker's message is passed on: {:?}",
        err.message()
    );
    assert_eq!(
        get_no_wait(&mut c, JOB, b"[7]").await.state(),
        ItemState::Miss,
        "nothing was stored"
    );
}

#[tokio::test]
async fn failed_refresh_keeps_stale_data_served() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let s = set(&mut c, JOB, b"[8]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    sleep_until_wall(wall(s.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;

    let r = get(&mut c, JOB, b"[8]").await;
    assert_eq!(r.state(), ItemState::Stale);
    assert!(r.refresh_scheduled);
    let fetch = w.next_fetch().await;
    w.reply_error(&fetch.request_id, "no luck").await;
    // The failure does not remove or change the data.
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, JOB, b"[8]").await;
            (!r.refresh_scheduled).then_some(r)
        }
    })
    .await;
    for r in [r, get(&mut c, JOB, b"[8]").await] {
        assert_eq!(r.state(), ItemState::Stale);
        assert_eq!(r.data, b"\"old\"");
        assert!(!r.fetched);
    }
}

#[tokio::test]
async fn backoff_gates_async_refreshes_only() {
    let d = Daemon::builder().args(["--retry-base", "3s"]).start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let s = set(&mut c, JOB, b"[9]", b"\"old\"".to_vec(), Some(dur(1.0))).await;
    sleep_until_wall(wall(s.expires_at.as_ref().unwrap()) + Duration::from_millis(50)).await;

    assert!(get(&mut c, JOB, b"[9]").await.refresh_scheduled);
    let fetch = w.next_fetch().await;
    w.reply_error(&fetch.request_id, "try later").await;

    // Right after the failure, stale hits start no refresh.
    eventually(WAIT, || {
        let mut c = c.clone();
        async move { (!get(&mut c, JOB, b"[9]").await.refresh_scheduled).then_some(()) }
    })
    .await;
    for _ in 0..3 {
        let r = get(&mut c, JOB, b"[9]").await;
        assert_eq!(r.state(), ItemState::Stale);
        assert!(!r.refresh_scheduled, "backoff holds the refresh back");
    }
    w.assert_no_fetch(&c, JOB).await;

    // Nothing is retried for an item nobody reads.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(w.try_next_fetch().is_none(), "a refresh started unasked");

    // After the delay, the next Get starts one.
    let start = Instant::now();
    loop {
        let r = get(&mut c, JOB, b"[9]").await;
        assert_eq!(r.state(), ItemState::Stale);
        if r.refresh_scheduled {
            break;
        }
        assert!(start.elapsed() < WAIT, "backoff never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[9]");
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_value(&fetch.request_id, b"\"new\"".to_vec(), None)
        .await;
}

#[tokio::test]
async fn sync_fetch_not_held_back_by_backoff() {
    // A backoff far longer than the harness waits: a held-back fetch would never show up.
    let d = Daemon::builder()
        .args(["--retry-base", "100s"])
        .start()
        .await;
    let c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 120.0)).await;

    let pending = spawn_get(&c, JOB, b"[10]", None);
    let fetch = w.next_fetch().await;
    w.reply_error(&fetch.request_id, "first try fails").await;
    let err = join_get(pending).await.expect_err("failed fetch");
    assert_eq!(err.code(), Code::Unavailable);

    let pending = spawn_get(&c, JOB, b"[10]", None);
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.args, b"[10]");
    assert_eq!(fetch.reason(), FetchReason::Miss);
    w.reply_value(&fetch.request_id, b"\"second try\"".to_vec(), None)
        .await;
    let r = join_get(pending).await.expect("second synchronous fetch");
    assert_eq!(r.state(), ItemState::Fresh);
    assert_eq!(r.data, b"\"second try\"");
    assert!(r.fetched);
}
