//! Batched fetches (PROTOCOL.md, "Additions: Batched fetches"): a worker with
//! `max_batch` > 1 gets the fetches that are ready in FetchBatch messages of at most that
//! many, each answered by its own FetchResult, in any order.

use cachebackd_proto::v1::{ItemState, JobConfig};

use crate::harness::*;
use crate::ops_support::scrape;

const JOB: &str = "policy-batch";

fn lazy() -> JobConfig {
    JobConfig {
        fetch_on_miss: Some(false),
        ..job_config(300.0, 30.0)
    }
}

/// Registers the job, then leaves it without a worker and misses `n` items, so that `n`
/// fetches wait in its queue for the next worker.
async fn queue_fetches(d: &Daemon, c: &mut Client, n: usize) {
    let mut first = TestWorker::register(d, JOB, lazy()).await;
    // The daemon ends its side once it has forgotten the worker.
    first.close();
    first.wait_closed().await.expect("a clean end");
    for i in 0..n {
        let r = get(c, JOB, format!("[{i}]")).await;
        assert_eq!(r.state(), ItemState::Miss);
    }
}

#[tokio::test]
async fn max_batch_sends_the_ready_fetches_in_batches_of_at_most_max_batch() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--metrics-listen", &metrics])
        .start()
        .await;
    let mut c = d.client();
    queue_fetches(&d, &mut c, 40).await;

    let mut w = TestWorker::builder(JOB)
        .config(lazy())
        .max_in_flight(64)
        .max_batch(32)
        .connect(&d.endpoint())
        .await;
    let mut fetches = Vec::new();
    for _ in 0..40 {
        fetches.push(w.next_fetch().await);
    }
    assert_eq!(w.batch_sizes(), vec![32, 8]);
    // Each fetch has its own id and is answered alone, here in reverse order.
    let mut ids: Vec<_> = fetches.iter().map(|f| f.request_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    for f in fetches.iter().rev() {
        let data = format!("\"{}\"", String::from_utf8_lossy(&f.args));
        w.reply_value(&f.request_id, data.into_bytes(), None).await;
    }
    for i in 0..40 {
        let args = format!("[{i}]");
        let r = eventually(WAIT, || {
            let (mut c, args) = (c.clone(), args.clone());
            async move {
                let r = get(&mut c, JOB, &args).await;
                (r.state() == ItemState::Fresh).then_some(r)
            }
        })
        .await;
        assert_eq!(r.data, format!("\"{args}\"").into_bytes());
    }
    let m = scrape(&metrics).await;
    assert_eq!(
        m.get(&format!(
            "cachebackd_fetch_batch_size_count{{job=\"{JOB}\"}}"
        )),
        2.0
    );
    assert_eq!(
        m.get(&format!("cachebackd_fetch_batch_size_sum{{job=\"{JOB}\"}}")),
        40.0
    );
}

#[tokio::test]
async fn every_fetch_of_a_batch_counts_against_max_in_flight_and_the_backlog_goes_in_batches() {
    let d = Daemon::start().await;
    let mut c = d.client();
    queue_fetches(&d, &mut c, 10).await;
    let mut w = TestWorker::builder(JOB)
        .config(lazy())
        .max_in_flight(4)
        .max_batch(32)
        .connect(&d.endpoint())
        .await;
    let mut batch = Vec::new();
    for _ in 0..4 {
        batch.push(w.next_fetch().await);
    }
    assert_eq!(w.batch_sizes(), vec![4], "four slots: a batch of four");
    // Half the batch answered: two slots free, less than a batch, so the backlog waits.
    for f in &batch[..2] {
        w.reply_value(&f.request_id, b"1".to_vec(), None).await;
    }
    assert!(w
        .next_fetch_within(std::time::Duration::from_millis(300))
        .await
        .is_none());
    // The rest answered: the next batch of four, then the last two.
    for f in &batch[2..] {
        w.reply_value(&f.request_id, b"1".to_vec(), None).await;
    }
    let mut batch = Vec::new();
    for _ in 0..4 {
        batch.push(w.next_fetch().await);
    }
    for f in &batch {
        w.reply_value(&f.request_id, b"1".to_vec(), None).await;
    }
    w.next_fetch().await;
    w.next_fetch().await;
    assert_eq!(w.batch_sizes(), vec![4, 4, 2]);
    assert_eq!(w.fetch_count(), 10);
}

#[tokio::test]
async fn without_max_batch_every_fetch_is_its_own_fetch_request() {
    let d = Daemon::start().await;
    let mut c = d.client();
    queue_fetches(&d, &mut c, 5).await;
    let mut w = TestWorker::builder(JOB)
        .config(lazy())
        .max_batch(1)
        .connect(&d.endpoint())
        .await;
    for _ in 0..5 {
        w.next_fetch().await;
    }
    assert!(w.batch_sizes().is_empty());
    assert!(w.unexpected_messages().is_empty());
}
