//! GetMany: many Gets in one call, each behaving exactly as its own Get would.

use cachebackd_proto::v1::{get_result::Outcome, GetManyRequest, GetRequest, GetResult, ItemState};
use tonic::Code;

use crate::harness::*;

const JOB: &str = "get_many";

fn request(job: &str, args: &[u8]) -> GetRequest {
    GetRequest {
        job: job.into(),
        args: args.to_vec(),
        fetch_on_miss: None,
        ..Default::default()
    }
}

async fn get_many(client: &mut Client, requests: Vec<GetRequest>) -> Vec<GetResult> {
    client
        .get_many(GetManyRequest { requests })
        .await
        .expect("GetMany")
        .into_inner()
        .results
}

fn error_code(result: &GetResult) -> Code {
    match &result.outcome {
        Some(Outcome::Error(e)) => Code::from_i32(e.code),
        other => panic!("expected an item error, got {other:?}"),
    }
}

fn response(result: &GetResult) -> &cachebackd_proto::v1::GetResponse {
    match &result.outcome {
        Some(Outcome::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test]
async fn get_many_answers_each_item_as_its_own_get_in_order() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let w = TestWorker::builder(JOB)
        .config(job_config(300.0, 30.0))
        .auto(|args| Ok([b"fetched:".as_slice(), args].concat()))
        .connect(&d.endpoint())
        .await;
    set(&mut c, JOB, b"[\"cached\"]", b"\"hit\"".to_vec(), None).await;
    let mut no_wait = request(JOB, b"[\"later\"]");
    no_wait.fetch_on_miss = Some(false);

    let results = get_many(
        &mut c,
        vec![
            request(JOB, b"[\"cached\"]"),
            request(JOB, b"[\"missing\"]"),
            request("bad name", b"[]"),
            request("never.registered", b"[]"),
            no_wait,
            request(JOB, &[b'x'; 4097]),
        ],
    )
    .await;

    assert_eq!(results.len(), 6);
    let hit = response(&results[0]);
    assert_eq!(
        (hit.state(), hit.data.as_slice(), hit.fetched),
        (ItemState::Fresh, b"\"hit\"".as_slice(), false)
    );
    let fetched = response(&results[1]);
    assert_eq!(
        (fetched.state(), fetched.data.as_slice(), fetched.fetched),
        (ItemState::Fresh, b"fetched:[\"missing\"]".as_slice(), true)
    );
    assert_eq!(error_code(&results[2]), Code::InvalidArgument);
    assert_eq!(error_code(&results[3]), Code::NotFound);
    let miss = response(&results[4]);
    assert_eq!(
        (miss.state(), miss.data.is_empty(), miss.refresh_scheduled),
        (ItemState::Miss, true, true)
    );
    assert_eq!(error_code(&results[5]), Code::InvalidArgument);

    // The asynchronous miss fills in the background, like a Get's would.
    eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get_no_wait(&mut c, JOB, b"[\"later\"]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(w.fetch_count(), 2, "one fetch per missing item");
}

#[tokio::test]
async fn get_many_of_one_missing_item_shares_one_fetch() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;

    let call = {
        let mut c = c.clone();
        tokio::spawn(async move {
            get_many(
                &mut c,
                (0..50).map(|_| request(JOB, b"[\"hot\"]")).collect(),
            )
            .await
        })
    };
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"\"shared\"".to_vec(), None)
        .await;
    let results = within("GetMany", call).await.expect("GetMany task");
    assert_eq!(results.len(), 50);
    for r in &results {
        let r = response(r);
        assert_eq!(
            (r.state(), r.data.as_slice(), r.fetched),
            (ItemState::Fresh, b"\"shared\"".as_slice(), true)
        );
    }
    assert_eq!(w.fetch_count(), 1, "50 Gets of one item, one fetch");
    w.assert_no_fetch(&c, JOB).await;
    assert_eq!(get(&mut c, JOB, b"[\"hot\"]").await.data, b"\"shared\"");
}

#[tokio::test]
async fn get_many_over_1000_requests_is_invalid_argument() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    set(&mut c, JOB, b"[1]", b"1".to_vec(), None).await;

    let exactly = get_many(&mut c, (0..1000).map(|_| request(JOB, b"[1]")).collect()).await;
    assert_eq!(exactly.len(), 1000);
    assert!(exactly.iter().all(|r| response(r).data == b"1"));

    let err = c
        .get_many(GetManyRequest {
            requests: (0..1001).map(|_| request(JOB, b"[1]")).collect(),
        })
        .await
        .expect_err("1001 requests");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        get(&mut c, JOB, b"[1]").await.data,
        b"1",
        "the daemon serves on"
    );
}

#[tokio::test]
async fn get_many_items_past_the_response_budget_fail_alone() {
    // The response may take the data limit + args limit + 64 KiB = 70,632 bytes: about 65
    // items of 1,000 bytes with their times fit, and the rest fail alone.
    let d = Daemon::builder()
        .args(["--max-data-bytes", "1000"])
        .start()
        .await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, JOB, job_config(300.0, 30.0)).await;
    for i in 0..100 {
        set(&mut c, JOB, format!("[{i}]"), vec![b'x'; 1000], None).await;
    }
    let results = get_many(
        &mut c,
        (0..100)
            .map(|i| request(JOB, format!("[{i}]").as_bytes()))
            .collect(),
    )
    .await;
    assert_eq!(results.len(), 100);
    let answered = results
        .iter()
        .take_while(|r| matches!(r.outcome, Some(Outcome::Response(_))))
        .count();
    assert!((60..=66).contains(&answered), "{answered} items answered");
    for (i, r) in results[..answered].iter().enumerate() {
        assert_eq!(response(r).data, vec![b'x'; 1000], "item {i}");
    }
    for r in &results[answered..] {
        assert_eq!(error_code(r), Code::ResourceExhausted);
    }
    // Each of those is still there for a Get of its own.
    assert_eq!(get(&mut c, JOB, b"[99]").await.data.len(), 1000);
}
