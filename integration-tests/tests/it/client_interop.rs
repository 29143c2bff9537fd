//! The Rust client shares items with any other gRPC client: args and data follow the
//! convention of PROTOCOL.md byte for byte. Also: the client's two kinds of URL.

use std::collections::BTreeMap;

use cacheback::{Client, Job, Worker};
use tonic::Code;

use crate::{
    client_support::{connect, start, Probe, Tweets},
    harness::{self, free_port, Daemon, TestWorker},
};

/// Read from Rust, fetched by a worker written on the raw generated stubs.
struct RawTweets;

impl Job for RawTweets {
    type Args = String;
    /// The raw worker answers `{"args": <the args it received>}`.
    type Output = BTreeMap<String, Vec<String>>;
    type Error = String;

    const NAME: &'static str = "interop.RawTweets";

    async fn fetch(&self, _: String) -> Result<Self::Output, String> {
        Err("served by the raw worker only".to_owned())
    }
}

#[tokio::test]
async fn a_worker_on_the_raw_stubs_fills_items_the_rust_client_reads() {
    let daemon = Daemon::start().await;
    let raw_worker = TestWorker::builder(RawTweets::NAME)
        .auto(|args| Ok(format!(r#"{{"args":{}}}"#, String::from_utf8_lossy(args)).into_bytes()))
        .connect(&daemon.endpoint())
        .await;
    let client = connect(&daemon).await;
    let tweets = client.job(&RawTweets);

    let got = tweets.get(&"café".to_owned()).await.unwrap().unwrap();
    assert_eq!(
        got,
        BTreeMap::from([("args".to_owned(), vec!["café".to_owned()])])
    );
    // The args bytes are Python's `json.dumps(["café"], separators=(",", ":"))`.
    let fetches = raw_worker.fetches();
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].args, br#"["caf\u00e9"]"#);
    assert_eq!(tweets.get(&"café".to_owned()).await.unwrap().unwrap(), got);
    assert_eq!(raw_worker.fetch_count(), 1);
}

/// Two positional arguments: `fetch(username, page)`.
struct Pages(Probe);

impl Job for Pages {
    type Args = (String, u32);
    type Output = String;
    type Error = String;

    const NAME: &'static str = "interop.Pages";

    async fn fetch(&self, (username, page): (String, u32)) -> Result<String, String> {
        let visit = self.0.enter().await;
        Ok(format!("{username} page {page} #{}", visit.number))
    }
}

#[tokio::test]
async fn the_rust_worker_fills_items_any_grpc_client_reads() {
    let daemon = Daemon::start().await;
    let client = connect(&daemon).await;
    let (tweets, pages) = (Probe::default(), Probe::default());
    let worker = Worker::new(client.clone())
        .serve(Tweets(tweets.clone()))
        .serve(Pages(pages.clone()));
    let worker = start(worker).await;
    let mut raw = daemon.client();

    let read = harness::get(&mut raw, Tweets::NAME, br#"["bob"]"#).await;
    assert!(read.fetched);
    assert_eq!(read.data, br#"["bob #1"]"#);
    let read = harness::get(&mut raw, Pages::NAME, br#"["bob",2]"#).await;
    assert_eq!(read.data, br#""bob page 2 #1""#);

    // Written raw, read from Rust: the same item.
    harness::set(
        &mut raw,
        Tweets::NAME,
        br#"["alice"]"#,
        br#"["set raw"]"#.to_vec(),
        None,
    )
    .await;
    let job = Tweets(tweets.clone());
    let alice = client.job(&job).get(&"alice".to_owned()).await.unwrap();
    assert_eq!(alice.unwrap(), ["set raw"]);
    let page = client
        .job(&Pages(pages.clone()))
        .get(&("bob".to_owned(), 2))
        .await
        .unwrap();
    assert_eq!(page.as_deref(), Some("bob page 2 #1"));
    assert_eq!((tweets.fetches(), pages.fetches()), (1, 1));
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_client_connects_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix:{}", dir.path().join("cachebackd.sock").display());
    let daemon = Daemon::builder().listen(url.clone()).start().await;
    let client = Client::connect(&url).await.unwrap();
    let probe = Probe::default();
    let worker = start(Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;

    let job = Tweets(probe.clone());
    let got = client.job(&job).get(&"bob".to_owned()).await.unwrap();
    assert_eq!(got.unwrap(), ["bob #1"]);
    assert_eq!(probe.fetches(), 1);
    worker.stop().await.unwrap();
    drop(daemon);
}

#[tokio::test]
async fn connecting_where_no_daemon_listens_fails_with_a_connect_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let error = Client::connect(&url).await.unwrap_err();
    assert!(
        matches!(&error, cacheback::Error::Connect { .. }),
        "{error}"
    );
    assert_eq!(error.code(), None::<Code>);
}
