//! The Rust client's side of the protocol's additions through the real daemon: absences
//! read as `None`, validators and NotModified, tags and `invalidate_tags`, `peek`,
//! `get_max_age`, early refresh and error_ttl settings, and `fetch_many` for batches.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use cacheback::{FetchContext, FetchReason, Fetched, ItemState, Job, Worker};

use crate::{
    client_support::{connect, start},
    harness::{eventually, sleep_until_wall, Daemon, WAIT},
};

/// Users by id: 0 is nobody; every user is at version "v1"; tagged by user; records the
/// contexts it was called with and the batch sizes it saw.
#[derive(Clone, Default)]
struct Users {
    contexts: Arc<Mutex<Vec<FetchContext>>>,
    batches: Arc<Mutex<Vec<usize>>>,
    fetches: Arc<AtomicUsize>,
}

impl Job for Users {
    type Args = u64;
    type Output = String;
    type Error = String;
    const NAME: &'static str = "client.Users";
    const ABSENT_LIFETIME: Option<Duration> = Some(Duration::from_secs(60));
    const ERROR_TTL: Option<Duration> = Some(Duration::from_secs(60));
    const EARLY_REFRESH_BETA: Option<f64> = Some(1.0);
    const MAX_BATCH: u32 = 16;

    async fn fetch(&self, id: u64) -> Result<String, String> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if id == 13 {
            return Err("user 13 is cursed".into());
        }
        Ok(format!("user {id}"))
    }

    async fn fetch_with(&self, id: u64, context: FetchContext) -> Result<Fetched<String>, String> {
        self.contexts.lock().unwrap().push(context.clone());
        if id == 0 {
            return Ok(Fetched::Absent { tags: vec![] });
        }
        if context.validator.as_deref() == Some(b"v1") {
            return Ok(Fetched::NotModified);
        }
        Ok(Fetched::value(self.fetch(id).await?).with_validator(b"v1".to_vec()))
    }

    async fn fetch_many(&self, ids: Vec<u64>) -> Vec<Result<Fetched<String>, String>> {
        self.batches.lock().unwrap().push(ids.len());
        ids.into_iter()
            .map(|id| Ok(Fetched::value(format!("batched {id}"))))
            .collect()
    }

    fn tags(&self, id: &u64) -> Vec<String> {
        vec![format!("user:{id}"), "users".to_string()]
    }
}

#[tokio::test]
async fn an_absence_reads_as_none_and_shows_in_get_item() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let job = Users::default();
    let worker = start(Worker::new(client.clone()).serve(job.clone())).await;
    let users = client.job(&job);
    assert_eq!(users.get(&0).await.unwrap(), None);
    let item = users.get_item(&0).await.unwrap();
    assert_eq!(
        (item.state, item.absent, item.data),
        (ItemState::Fresh, true, None)
    );
    assert_eq!(item.tags, vec!["user:0", "users"]);
    let lifetime = item
        .expires_at
        .unwrap()
        .duration_since(item.stored_at.unwrap())
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(60), "ABSENT_LIFETIME");
    assert_eq!(
        job.contexts.lock().unwrap().len(),
        1,
        "the absence was cached"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_refresh_gets_the_validator_and_not_modified_keeps_the_data() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let job = Users::default();
    let worker = start(Worker::new(client.clone()).serve(job.clone())).await;
    let users = client.job(&job);
    let first = users.get_item(&7).await.unwrap();
    assert_eq!(first.data.as_deref(), Some("user 7"));
    sleep_until_wall(first.stored_at.unwrap() + Duration::from_millis(20)).await;
    assert!(users.invalidate(&7).await.unwrap().refresh_scheduled);
    let item = eventually(WAIT, || {
        let users = client.job(&job);
        async move {
            let item = users.get_item(&7).await.unwrap();
            (item.state == ItemState::Fresh).then_some(item)
        }
    })
    .await;
    assert_eq!(item.data.as_deref(), Some("user 7"));
    assert!(item.stored_at > first.stored_at, "confirmed now");
    let contexts = job.contexts.lock().unwrap().clone();
    assert_eq!(contexts.len(), 2);
    assert_eq!(
        (contexts[0].reason, contexts[0].validator.clone()),
        (FetchReason::Miss, None)
    );
    assert_eq!(contexts[1].reason, FetchReason::Invalidated);
    assert_eq!(contexts[1].validator.as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        job.fetches.load(Ordering::SeqCst),
        1,
        "the data was fetched once"
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn invalidate_tags_peek_and_get_max_age() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let job = Users::default();
    let users = client.job(&job);
    // Without a worker yet: a set stores the job's tags with the data.
    let worker = start(Worker::new(client.clone()).serve(job.clone())).await;
    users.set(&5, &"set by hand".to_string()).await.unwrap();
    assert_eq!(users.peek(&5).await.unwrap().tags, vec!["user:5", "users"]);
    let peeked = users.peek(&6).await.unwrap();
    assert_eq!(
        (peeked.state, peeked.fetched),
        (ItemState::Miss, false),
        "a peek fetches nothing"
    );

    client.invalidate_tags(&["user:5"]).await.unwrap();
    let item = users.peek(&5).await.unwrap();
    assert_eq!(
        (item.state, item.data.as_deref()),
        (ItemState::Stale, Some("set by hand"))
    );
    assert!(!item.refresh_scheduled);

    // max_age: an item older than it is fetched before the read answers.
    users.set(&8, &"old".to_string()).await.unwrap();
    let stored_at = users.peek(&8).await.unwrap().stored_at.unwrap();
    sleep_until_wall(stored_at + Duration::from_millis(300)).await;
    assert_eq!(
        users
            .get_max_age(&8, Duration::from_secs(60))
            .await
            .unwrap()
            .as_deref(),
        Some("old")
    );
    assert_eq!(
        users
            .get_max_age(&8, Duration::from_millis(200))
            .await
            .unwrap()
            .as_deref(),
        Some("user 8")
    );
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn error_ttl_spares_the_origin_and_a_batch_goes_to_fetch_many() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let job = Users::default();
    let worker = start(Worker::new(client.clone()).serve(job.clone())).await;
    let users = client.job(&job);
    for _ in 0..3 {
        let error = users.get(&13).await.unwrap_err();
        assert!(error.to_string().contains("user 13 is cursed"), "{error}");
    }
    assert_eq!(
        job.fetches.load(Ordering::SeqCst),
        1,
        "ERROR_TTL: the origin was asked once"
    );

    // Fetches that wait for a worker together reach the next one as one batch.
    worker.stop().await.unwrap();
    let ids: Vec<u64> = (100..120).collect();
    for id in &ids {
        let r = client
            .raw()
            .get(cachebackd_proto::v1::GetRequest {
                job: Users::NAME.into(),
                args: cacheback::encode_args(id).unwrap(),
                fetch_on_miss: Some(false),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.state(), cachebackd_proto::v1::ItemState::Miss);
    }
    // Room for all 20 at once: a batch of 16 and one of 4.
    let worker = start(
        Worker::new(client.clone())
            .max_in_flight(32)
            .serve(job.clone()),
    )
    .await;
    for id in &ids {
        let data = eventually(WAIT, || {
            let users = client.job(&job);
            async move { users.peek(id).await.unwrap().data }
        })
        .await;
        assert_eq!(data, format!("batched {id}"));
    }
    assert_eq!(job.batches.lock().unwrap().clone(), vec![16, 4]);
    worker.stop().await.unwrap();
}
