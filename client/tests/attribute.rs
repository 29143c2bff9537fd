//! What `#[cacheback]` generates, checked without a daemon (the integration tests
//! drive the same functions through the real one).

use std::time::Duration;

use cacheback::{Client, Job, JobConfig};

mod tweets {
    use cacheback::cacheback;

    /// The seed's first example: `@cacheback()`.
    #[cacheback]
    pub async fn fetch_tweets(username: &str) -> Result<Vec<String>, std::io::Error> {
        Ok(vec![format!("{username}: hello")])
    }

    /// The seed's second example: `@cacheback(lifetime=1200, fetch_on_miss=False)`.
    #[cacheback(lifetime = 1200, fetch_on_miss = false)]
    pub async fn fetch_followers(username: String, page: u32) -> std::io::Result<Vec<String>> {
        Ok(vec![format!("{username} follower {page}")])
    }

    #[cacheback(
        name = "tweets.count",
        refresh_timeout = std::time::Duration::from_millis(1500),
        fetch_on_stale_threshold = 60,
        cache_ttl = 3600
    )]
    pub(crate) async fn count() -> Result<u64, String> {
        Err("the API is down".to_owned())
    }

    #[cacheback(early_refresh_beta = 1.5, absent_lifetime = 30, error_ttl = 5)]
    pub async fn hot() -> Result<u8, String> {
        Ok(1)
    }
}

use tweets::{count, fetch_followers, fetch_tweets, hot};

#[test]
fn the_job_is_named_after_the_function_path() {
    assert_eq!(fetch_tweets::JOB.name(), "attribute::tweets::fetch_tweets");
    assert_eq!(
        <fetch_followers as Job>::NAME,
        "attribute::tweets::fetch_followers"
    );
    assert_eq!(<count as Job>::NAME, "tweets.count");
}

#[test]
fn options_become_the_job_config() {
    assert_eq!(fetch_tweets::JOB.config(), JobConfig::DEFAULT);
    assert_eq!(
        fetch_followers::JOB.config(),
        JobConfig {
            lifetime: Duration::from_secs(1200),
            fetch_on_miss: false,
            ..JobConfig::DEFAULT
        }
    );
    assert_eq!(
        count::JOB.config(),
        JobConfig {
            refresh_timeout: Duration::from_millis(1500),
            fetch_on_stale_threshold: Some(Duration::from_secs(60)),
            cache_ttl: Duration::from_secs(3600),
            ..JobConfig::DEFAULT
        }
    );
    assert_eq!(
        hot::JOB.config(),
        JobConfig {
            early_refresh_beta: Some(1.5),
            absent_lifetime: Some(Duration::from_secs(30)),
            error_ttl: Some(Duration::from_secs(5)),
            ..JobConfig::DEFAULT
        }
    );
}

#[test]
fn the_args_are_the_owned_parameters_in_order() {
    let args: <fetch_tweets as Job>::Args = ("bob".to_string(),);
    assert_eq!(cacheback::encode_args(&args).unwrap(), br#"["bob"]"#);
    let args: <fetch_followers as Job>::Args = ("bob".to_string(), 2);
    assert_eq!(cacheback::encode_args(&args).unwrap(), br#"["bob",2]"#);
    let args: <count as Job>::Args = ();
    assert_eq!(cacheback::encode_args(&args).unwrap(), b"[]");
}

#[tokio::test]
async fn the_job_fetches_with_the_function_body() {
    let tweets = fetch_tweets::JOB.fetch(("bob".into(),)).await.unwrap();
    assert_eq!(tweets, ["bob: hello"]);
    let followers = fetch_followers::JOB.fetch(("bob".into(), 3)).await.unwrap();
    assert_eq!(followers, ["bob follower 3"]);
    assert_eq!(count::JOB.fetch(()).await.unwrap_err(), "the API is down");
}

#[tokio::test]
async fn the_missing_item_decision_follows_fetch_on_miss() {
    let bob = ("bob".to_string(),);
    assert!(fetch_tweets::JOB.should_missing_item_be_fetched_synchronously(&bob));
    let bob_page = ("bob".to_string(), 1);
    assert!(!fetch_followers::JOB.should_missing_item_be_fetched_synchronously(&bob_page));
}

#[tokio::test]
async fn calling_the_function_reads_through_the_current_client() {
    let nowhere = Client::connect_lazy("unix:/nonexistent/cachebackd.sock").unwrap();
    let error = cacheback::with_client(nowhere, fetch_tweets("bob"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(tonic::Code::Unavailable), "{error}");
}
