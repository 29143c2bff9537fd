//! The daemon's side of the near cache (PROTOCOL.md, "Near cache"): the `Subscribe` RPC,
//! one event per change of a subscribed item in the order the changes happened, its limits,
//! and a slow subscriber reset rather than waited for.

use std::collections::BTreeSet;

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, DeleteJobRequest, InvalidateJobRequest,
    ItemEvent, ItemEventKind, ItemRef, JobConfig, SubscribeRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};

use crate::harness::*;
use crate::ops_support::*;

const JOB: &str = "near";

/// A raw Subscribe stream.
pub struct Subscriber {
    tx: Option<mpsc::Sender<SubscribeRequest>>,
    events: Streaming<ItemEvent>,
}

pub fn item(job: &str, args: &[u8]) -> ItemRef {
    ItemRef {
        job: job.into(),
        args: args.to_vec(),
    }
}

impl Subscriber {
    /// Opens a stream on a new connection.
    pub async fn open(d: &Daemon) -> Subscriber {
        Subscriber::open_with(d.connect().await).await
    }

    /// Opens a stream whose transport buffers little (HTTP/2 windows of 64 KiB), so that
    /// a reader that reads nothing is soon behind.
    pub async fn open_small(d: &Daemon) -> Subscriber {
        let channel = Endpoint::from_shared(d.endpoint())
            .expect("endpoint")
            .initial_stream_window_size(65_535)
            .connect()
            .await
            .expect("connect");
        Subscriber::open_with(client_for(channel)).await
    }

    async fn open_with(mut client: Client) -> Subscriber {
        let (tx, rx) = mpsc::channel(16);
        let events = within("Subscribe call", client.subscribe(ReceiverStream::new(rx)))
            .await
            .expect("Subscribe")
            .into_inner();
        Subscriber {
            tx: Some(tx),
            events,
        }
    }

    /// Adds `items` to the stream's subscriptions.
    pub async fn add(&self, items: Vec<ItemRef>) {
        self.send(SubscribeRequest {
            add: items,
            remove: vec![],
        })
        .await;
    }

    pub async fn send(&self, request: SubscribeRequest) {
        self.tx
            .as_ref()
            .expect("open")
            .send(request)
            .await
            .expect("send on the Subscribe stream");
    }

    /// The next event (`None` at a clean end), or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Option<ItemEvent>, Status> {
        within("an event on the Subscribe stream", self.events.message()).await
    }

    /// The next event, which must be there: (args, kind).
    pub async fn event(&mut self) -> (Vec<u8>, ItemEventKind) {
        let e = self
            .next()
            .await
            .expect("the stream is open")
            .expect("an event");
        assert_eq!(e.item.as_ref().expect("an item").job, JOB);
        assert!(e.at.is_some(), "every event says when");
        let kind = e.kind();
        (e.item.unwrap().args, kind)
    }
}

/// Waits until the daemon holds `n` subscribed items: the signal that the stream's adds
/// have been applied (they travel on their own stream, so a write on another connection
/// could otherwise overtake them).
pub async fn await_subscribed(metrics: &str, n: f64) {
    eventually(WAIT, || async {
        (scrape(metrics).await.get("cachebackd_subscribed_items") == n).then_some(())
    })
    .await
}

/// A daemon with a metrics listener; its address.
pub async fn daemon_with_metrics(extra: &[&str]) -> (Daemon, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--metrics-listen", &metrics])
        .args(extra.iter().copied())
        .start()
        .await;
    (d, metrics)
}

#[tokio::test]
async fn subscribe_tells_each_change_of_a_subscribed_item_in_order() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut s = Subscriber::open(&d).await;
    s.add(vec![
        item(JOB, b"[1]"),
        item(JOB, b"[2]"),
        item(JOB, b"[1]"),
    ])
    .await;
    await_subscribed(&metrics, 2.0).await;

    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
    invalidate(&mut c, JOB, b"[1]").await;
    // The refresh the Invalidate started is stored: CHANGED.
    let f = w.next_fetch().await;
    w.reply_value(&f.request_id, b"11".to_vec(), None).await;
    // Nothing for an item nobody subscribed to, nor for deleting what is not there.
    set(&mut c, JOB, b"[3]", b"3".to_vec(), None).await;
    delete(&mut c, JOB, b"[2]").await;
    // A synchronous fetch stored: CHANGED.
    let pending = spawn_get(&c, JOB, b"[2]", None);
    let f = w.next_fetch().await;
    w.reply_value(&f.request_id, b"2".to_vec(), None).await;
    join_get(pending).await.expect("Get");
    delete(&mut c, JOB, b"[1]").await;

    use ItemEventKind::*;
    let expected = [
        (b"[1]", Changed),
        (b"[1]", Invalidated),
        (b"[1]", Changed),
        (b"[2]", Changed),
        (b"[1]", Removed),
    ];
    for (args, kind) in expected {
        assert_eq!(s.event().await, (args.to_vec(), kind));
    }

    // A removed item is no longer told of.
    s.send(SubscribeRequest {
        add: vec![],
        remove: vec![item(JOB, b"[1]")],
    })
    .await;
    await_subscribed(&metrics, 1.0).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
    set(&mut c, JOB, b"[2]", b"22".to_vec(), None).await;
    assert_eq!(s.event().await, (b"[2]".to_vec(), Changed));

    // A reader that goes leaves no subscription behind.
    drop(s);
    await_subscribed(&metrics, 0.0).await;
}

#[tokio::test]
async fn invalidate_job_and_delete_job_tell_every_subscribed_item() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let mut c = d.client();
    let mut admin = CachebackAdminClient::new(channel(&d).await);
    {
        let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
        set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
    }
    let mut s = Subscriber::open(&d).await;
    s.add(vec![
        item(JOB, b"[1]"),
        item(JOB, b"[2]"),
        item("other", b"[1]"),
    ])
    .await;
    await_subscribed(&metrics, 3.0).await;

    admin
        .invalidate_job(InvalidateJobRequest { job: JOB.into() })
        .await
        .expect("InvalidateJob");
    let two = BTreeSet::from([s.event().await, s.event().await]);
    use ItemEventKind::*;
    assert_eq!(
        two,
        BTreeSet::from([
            (b"[1]".to_vec(), Invalidated),
            (b"[2]".to_vec(), Invalidated)
        ])
    );
    admin
        .delete_job(DeleteJobRequest { job: JOB.into() })
        .await
        .expect("DeleteJob");
    let two = BTreeSet::from([s.event().await, s.event().await]);
    assert_eq!(
        two,
        BTreeSet::from([(b"[1]".to_vec(), Removed), (b"[2]".to_vec(), Removed)])
    );
}

#[tokio::test]
async fn the_cache_ttl_sweep_tells_removed() {
    let (d, metrics) = daemon_with_metrics(&["--sweep-interval", "200ms"]).await;
    let mut c = d.client();
    let short = JobConfig {
        fetch_on_miss: Some(false),
        cache_ttl: Some(dur(1.0)),
        ..job_config(1.0, 30.0)
    };
    let _w = TestWorker::register(&d, JOB, short).await;
    let mut s = Subscriber::open(&d).await;
    s.add(vec![item(JOB, b"[1]")]).await;
    await_subscribed(&metrics, 1.0).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
    use ItemEventKind::*;
    assert_eq!(s.event().await, (b"[1]".to_vec(), Changed));
    // The next event comes from the sweeper, about a second later.
    assert_eq!(s.event().await, (b"[1]".to_vec(), Removed));
    assert_eq!(get(&mut c, JOB, b"[1]").await.data, b"");
}

#[tokio::test]
async fn subscribe_refuses_bad_items_and_more_than_the_limit() {
    let d = Daemon::start().await;
    for (bad, code) in [
        (item("bad job", b"[1]"), Code::InvalidArgument),
        (item("", b"[1]"), Code::InvalidArgument),
        (item(JOB, &vec![b'1'; 64 * 1024 + 1]), Code::InvalidArgument),
    ] {
        let mut s = Subscriber::open(&d).await;
        s.add(vec![bad]).await;
        let status = s.next().await.expect_err("the stream ends with an error");
        assert_eq!(status.code(), code, "{status:?}");
    }
    let mut s = Subscriber::open(&d).await;
    let many: Vec<ItemRef> = (0..100_000)
        .map(|i| item(JOB, format!("[{i}]").as_bytes()))
        .collect();
    s.add(many).await;
    s.add(vec![item(JOB, b"[0]")]).await;
    s.add(vec![item(JOB, b"[100000]")]).await;
    let status = s.next().await.expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("100000"), "{status:?}");
    // The daemon serves on.
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_reset_and_dropped_and_writes_go_on() {
    let (d, metrics) = daemon_with_metrics(&[]).await;
    let mut c = d.client();
    let mut admin = CachebackAdminClient::new(channel(&d).await);
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    let mut s = Subscriber::open_small(&d).await;
    const ITEMS: usize = 100_000;
    s.add(
        (0..ITEMS)
            .map(|i| item(JOB, format!("[{i}]").as_bytes()))
            .collect(),
    )
    .await;
    await_subscribed(&metrics, ITEMS as f64).await;

    // One InvalidateJob tells all of them at once: far more than the stream's queue and
    // the transport's buffers hold. The write is answered all the same.
    admin
        .invalidate_job(InvalidateJobRequest { job: JOB.into() })
        .await
        .expect("InvalidateJob");
    let after = scrape(&metrics).await;
    assert_eq!(after.get("cachebackd_subscribers_reset_total"), 1.0);
    assert_eq!(after.get("cachebackd_subscribed_items"), 0.0);

    // The stream holds some of the events, then RESET, then ends.
    let mut told = 0;
    let last = loop {
        let e = s
            .next()
            .await
            .expect("no error")
            .expect("an event before the end");
        if e.kind() == ItemEventKind::Invalidated {
            told += 1;
        } else {
            break e;
        }
    };
    assert_eq!(last.kind(), ItemEventKind::Reset);
    assert!(last.item.is_none());
    assert!(told < ITEMS, "{told} events were queued");
    assert!(s.next().await.expect("a clean end").is_none());
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;
}

#[tokio::test]
async fn eviction_for_max_bytes_tells_removed() {
    let (d, metrics) = daemon_with_metrics(&["--max-bytes", "100KiB"]).await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(3600.0, 30.0)).await;
    let mut s = Subscriber::open(&d).await;
    s.add(vec![item(JOB, b"[0]")]).await;
    await_subscribed(&metrics, 1.0).await;
    set(&mut c, JOB, b"[0]", vec![b'1'; 1024], None).await;
    use ItemEventKind::*;
    assert_eq!(s.event().await, (b"[0]".to_vec(), Changed));
    // Far more than 100 KiB of other items: the least recently used, [0], goes first.
    for i in 1..=200 {
        set(
            &mut c,
            JOB,
            format!("[{i}]").as_bytes(),
            vec![b'1'; 1024],
            None,
        )
        .await;
    }
    assert_eq!(s.event().await, (b"[0]".to_vec(), Removed));
    assert_eq!(get_no_wait(&mut c, JOB, b"[0]").await.data, b"");
}
