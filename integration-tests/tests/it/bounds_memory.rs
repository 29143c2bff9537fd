//! Memory that many calls together could make the daemon hold: workers' answers are read
//! under `max_answer_bytes` (one past it fails its fetch, the worker is told why in an
//! `AnswerRefused`, the stream stays open), and a
//! worker stream's unreadable bytes end it with INVALID_ARGUMENT. The HTTP/2 side is
//! spoken frame by frame (`raw_grpc`), to hold a message half sent.

use bytes::Bytes;
use cachebackd_proto::v1::{
    daemon_message, AnswerRefused, DaemonMessage, FetchRequest, GetRequest,
};
use prost::Message;
use tonic::Code;

use crate::bounds_support::*;
use crate::harness::*;
use crate::ops_support::scrape;
use crate::policy_support::value_with;
use crate::raw_grpc::{self, framed_split, raw_worker, Messages};

const MIB: usize = 1024 * 1024;

/// A daemon with `args` and a metrics listener; the metrics address.
async fn daemon(args: &[&str]) -> (Daemon, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(args)
        .args(["--metrics-listen", &metrics])
        .start()
        .await;
    (d, metrics)
}

async fn next_fetch(messages: &mut Messages) -> FetchRequest {
    match within("a fetch", messages.next::<DaemonMessage>()).await {
        Ok(DaemonMessage {
            kind: Some(daemon_message::Kind::Fetch(f)),
        }) => f,
        other => panic!("expected a fetch: {other:?}"),
    }
}

async fn next_raw_fetch(s: &mut RawStream) -> FetchRequest {
    match s.next().await {
        Ok(Some(DaemonMessage {
            kind: Some(daemon_message::Kind::Fetch(f)),
        })) => f,
        other => panic!("expected a fetch: {other:?}"),
    }
}

/// `DaemonMessage` as a worker built before `refused = 4` was added knows it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldDaemonMessage {
    #[prost(oneof = "OldKind", tags = "1, 2, 3")]
    kind: Option<OldKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum OldKind {
    #[prost(message, tag = "1")]
    Registered(cachebackd_proto::v1::Registered),
    #[prost(message, tag = "2")]
    Fetch(FetchRequest),
    #[prost(message, tag = "3")]
    Batch(cachebackd_proto::v1::FetchBatch),
}

#[tokio::test]
async fn an_answer_past_the_answer_budget_fails_its_fetch_the_worker_is_told_and_the_stream_stays_open(
) {
    let (d, metrics) = daemon(&["--max-answer-bytes", "6MiB"]).await;
    let big: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    // Worker A holds 4 MiB of the budget: its answer is sent but for its last bytes.
    let mut h2 = raw_grpc::connect(d.port(), 65_535).await;
    let (mut a, mut a_in) = raw_worker(&mut h2, "held", 1).await;
    let held_get = spawn_get(&d.client(), "held", "[1]", None);
    let fetch = next_fetch(&mut a_in).await;
    let (sent, rest) = framed_split(&value_msg(&fetch.request_id, big.clone(), None), 1000);
    a.send(sent, false).await;

    // Worker B's 4 MiB answer does not fit beside it: its fetch fails, saying why.
    let mut b = RawStream::open(
        &d.endpoint(),
        vec![register_msg("free", job_config(300.0, 30.0), 4, "b")],
    )
    .await;
    assert!(matches!(b.next().await, Ok(Some(_))), "Registered");
    let refused_get = spawn_get(&d.client(), "free", "[2]", None);
    let fetch = next_raw_fetch(&mut b).await;
    b.send(value_msg(&fetch.request_id, big.clone(), None))
        .await;
    let status = join_get(refused_get).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("max_answer_bytes") && status.message().contains("refused"),
        "{status:?}"
    );
    // B is told, on the same stream, with the caller's status.
    match b.next().await {
        Ok(Some(DaemonMessage {
            kind: Some(daemon_message::Kind::Refused(refused)),
        })) => assert_eq!(
            refused,
            AnswerRefused {
                request_id: fetch.request_id.clone(),
                code: Code::Unavailable as i32,
                reason: status.message().to_owned(),
            }
        ),
        other => panic!("expected AnswerRefused: {other:?}"),
    }
    // A worker built before `refused` existed decodes the notice as a message of no kind.
    let notice = DaemonMessage {
        kind: Some(daemon_message::Kind::Refused(AnswerRefused::default())),
    };
    assert_eq!(
        OldDaemonMessage::decode(notice.encode_to_vec().as_slice()),
        Ok(OldDaemonMessage { kind: None })
    );
    let m = scrape(&metrics).await;
    assert_eq!(m.get("cachebackd_answers_refused_total"), 1.0);
    assert!(m.get("cachebackd_answers_held_bytes") >= (4 * MIB) as f64);

    // B's stream stays open: a small answer is taken at once (and B hears of no other
    // refusal: its next messages are fetches).
    let small_get = spawn_get(&d.client(), "free", "[3]", None);
    let fetch = next_raw_fetch(&mut b).await;
    b.send(value_msg(&fetch.request_id, b"small".to_vec(), None))
        .await;
    assert_eq!(join_get(small_get).await.unwrap().data, b"small");

    // A finishes: its answer is stored whole, and the budget is free again.
    a.send(rest, false).await;
    assert_eq!(join_get(held_get).await.unwrap().data, big);
    let again = spawn_get(&d.client(), "free", "[4]", None);
    let fetch = next_raw_fetch(&mut b).await;
    b.send(value_msg(&fetch.request_id, big.clone(), None))
        .await;
    assert_eq!(join_get(again).await.unwrap().data, big);
    let m = scrape(&metrics).await;
    assert_eq!(m.get("cachebackd_answers_refused_total"), 1.0);
    assert_eq!(m.get("cachebackd_answers_held_bytes"), 0.0);
    assert_eq!(get(&mut d.client(), "held", "[1]").await.data, big);
}

#[tokio::test]
async fn a_worker_that_reads_nothing_holds_a_bounded_number_of_refusal_notices() {
    const BAD: usize = 1000;
    let (d, metrics) = daemon(&[]).await;
    // The daemon may send 1 KiB on the stream until the test reads it.
    let mut h2 = raw_grpc::connect(d.port(), 1024).await;
    let (mut send, mut messages) = raw_worker(&mut h2, "notices", 1).await;
    let pending = spawn_get(&d.client(), "notices", "[1]", None);
    let fetch = next_fetch(&mut messages).await;
    // Answers with a bad validator, each refused and told, read by nobody; then the answer
    // to the fetch, which is taken once all of them have been read.
    let mut bytes = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..BAD {
        let id = uuid::Uuid::new_v4().to_string();
        bytes.extend_from_slice(&raw_grpc::framed(&value_with(&id, b"1", &[b'v'; 257], &[])));
        ids.push(id);
    }
    bytes.extend_from_slice(&raw_grpc::framed(&value_msg(
        &fetch.request_id,
        b"ok".to_vec(),
        None,
    )));
    send.send(Bytes::from(bytes), false).await;
    assert_eq!(join_get(pending).await.unwrap().data, b"ok");
    let dropped = scrape(&metrics)
        .await
        .get("cachebackd_answer_refusal_notices_dropped_total") as usize;
    eprintln!("{dropped} of {BAD} notices dropped");
    assert!(
        dropped > 0 && dropped < BAD - 64,
        "{dropped} of {BAD} notices dropped"
    );

    // Read now: every notice not dropped arrives, and nothing else.
    let mut told = Vec::new();
    for _ in 0..BAD - dropped {
        match within("a notice", messages.next::<DaemonMessage>()).await {
            Ok(DaemonMessage {
                kind: Some(daemon_message::Kind::Refused(r)),
            }) => {
                assert!(r.reason.contains("validator is 257 bytes"), "{r:?}");
                told.push(r.request_id);
            }
            other => panic!("expected a notice: {other:?}"),
        }
    }
    // The notices kept are in the order of the answers (which ones were dropped depends on
    // when the daemon's side took some off the channel); the count is exact, as the next
    // message is the notice of the next refusal.
    let mut kept = ids.iter().filter(|id| told.contains(id));
    assert!(told.iter().all(|id| kept.next() == Some(id)), "in order");
    assert_eq!(told[0], ids[0]);
    let last = uuid::Uuid::new_v4().to_string();
    send.send(
        raw_grpc::framed(&value_with(&last, b"1", &[b'v'; 257], &[])),
        false,
    )
    .await;
    match within("the last notice", messages.next::<DaemonMessage>()).await {
        Ok(DaemonMessage {
            kind: Some(daemon_message::Kind::Refused(r)),
        }) => assert_eq!(r.request_id, last),
        other => panic!("expected the last notice: {other:?}"),
    }
}

#[tokio::test]
async fn many_large_answers_at_once_hold_at_most_the_answer_budget() {
    const WORKERS: usize = 100;
    let (d, metrics) = daemon(&["--max-answer-bytes", "32MiB"]).await;
    let mut h2 = raw_grpc::connect(d.port(), 65_535).await;
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(raw_worker(&mut h2, "many", 1).await);
    }
    let pid = d.pid().unwrap();
    let before = proc_kib(pid, "VmRSS");
    // Every worker sends a 4 MiB answer but for its last bytes (ids of no fetch: what is
    // measured is what the daemon holds while answers are on their way).
    let answer = value_msg(&uuid::Uuid::new_v4().to_string(), vec![9u8; 4 * MIB], None);
    let len = answer.encoded_len();
    let mut rests = Vec::new();
    for (send, _) in &mut workers {
        let (sent, rest) = framed_split(&answer, 1000);
        send.send(sent, false).await;
        rests.push(rest);
    }
    let growth_mib = proc_kib(pid, "VmRSS").saturating_sub(before) / 1024;
    eprintln!("{WORKERS} answers of 4 MiB on their way: RSS grew by {growth_mib} MiB");
    let fits = (32 * MIB) / len;
    let m = scrape(&metrics).await;
    assert_eq!(m.get("cachebackd_answers_held_bytes"), (fits * len) as f64);
    assert_eq!(
        m.get("cachebackd_answers_refused_total"),
        (WORKERS - fits) as f64
    );
    // Without the budget every answer was buffered whole (400 MiB here); a generous bound.
    assert!(
        growth_mib < 200,
        "RSS grew by {growth_mib} MiB for answers on their way"
    );
    for ((send, _), rest) in workers.iter_mut().zip(rests) {
        send.send(rest, false).await;
    }
    let held = async {
        loop {
            if scrape(&metrics).await.get("cachebackd_answers_held_bytes") == 0.0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    within("the budget to be given back", held).await;
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_end_a_worker_stream_with_invalid_argument() {
    let d = Daemon::start().await;
    let _w = TestWorker::register(&d, "junk", job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    set(&mut c, "junk", "[\"kept\"]", b"intact".to_vec(), None).await;
    let junk = Bytes::from_static(&[0xff; 64]);
    let junk_message = || {
        let mut m = raw_grpc::header(junk.len()).to_vec();
        m.extend_from_slice(&junk);
        Bytes::from(m)
    };
    let mut h2 = raw_grpc::connect(d.port(), 65_535).await;

    // As the first message.
    let (mut first, response) = raw_grpc::open(&mut h2, raw_grpc::REGISTER_JOB).await;
    first.send(junk_message(), false).await;
    let opened = within("headers", raw_grpc::opened(response)).await;
    let end = match opened.grpc_status {
        Some(status) => status,
        None => within(
            "the end",
            Messages::new(opened.body).next::<DaemonMessage>(),
        )
        .await
        .unwrap_err(),
    };
    assert_eq!(end.0, Code::InvalidArgument as i32, "{end:?}");
    assert!(end.1.contains("cannot be read"), "{end:?}");

    // After a Register.
    let (mut after, mut messages) = raw_worker(&mut h2, "junk.raw", 1).await;
    after.send(junk_message(), false).await;
    let end = within("the end", messages.next::<DaemonMessage>())
        .await
        .unwrap_err();
    assert_eq!(end.0, Code::InvalidArgument as i32, "{end:?}");
    assert!(end.1.contains("cannot be read"), "{end:?}");

    // The daemon is up and its data intact.
    assert_eq!(get(&mut c, "junk", "[\"kept\"]").await.data, b"intact");
}

#[tokio::test]
async fn responses_a_client_does_not_read_hold_at_most_the_unsent_budget() {
    const STREAMS: usize = 200;
    let (d, metrics) = daemon(&["--max-unsent-bytes", "18MiB"]).await;
    let _w = TestWorker::register(&d, "slow", job_config(3600.0, 30.0)).await;
    let mut c = d.client();
    let big: Vec<u8> = (0..4 * MIB).map(|i| (i % 241) as u8).collect();
    set(&mut c, "slow", "[\"big\"]", big.clone(), None).await;
    set(&mut c, "slow", "[\"small\"]", b"small".to_vec(), None).await;
    let response_len = 5 + get(&mut c, "slow", "[\"big\"]").await.encoded_len();
    let pid = d.pid().unwrap();
    let before = proc_kib(pid, "VmRSS");

    // A client that reads nothing: the daemon can send it no data at all.
    let mut slow = raw_grpc::connect(d.port(), 0).await;
    let request = GetRequest {
        job: "slow".into(),
        args: b"[\"big\"]".to_vec(),
        ..Default::default()
    };
    let mut calls = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, response) = raw_grpc::open(&mut slow, raw_grpc::GET).await;
        send.send(raw_grpc::framed(&request), true).await;
        calls.push((send, response));
    }
    let mut pinned = Vec::new();
    let mut refused = 0;
    for (send, response) in calls {
        let opened = within("response headers", raw_grpc::opened(response)).await;
        match &opened.grpc_status {
            None => pinned.push((send, opened)),
            Some((code, message)) => {
                assert_eq!(*code, Code::ResourceExhausted as i32, "{message}");
                assert!(message.contains("max_unsent_bytes"), "{message}");
                refused += 1;
            }
        }
    }
    let growth_mib = proc_kib(pid, "VmRSS").saturating_sub(before) / 1024;
    eprintln!("{STREAMS} unread Gets of 4 MiB: RSS grew by {growth_mib} MiB");
    let fits = (18 * MIB) / response_len;
    assert_eq!(pinned.len(), fits);
    assert_eq!(refused, STREAMS - fits);
    // Held: every byte of the pinned responses, less what the connection wrote of other
    // frames (their headers, the refusals), which gives back as much of what HTTP/2 holds.
    let m = scrape(&metrics).await;
    let unsent = m.get("cachebackd_unsent_responses_bytes") as usize;
    assert!(
        unsent <= fits * response_len && unsent > fits * response_len - 64 * 1024,
        "{unsent} bytes held for {fits} responses of {response_len}"
    );
    assert_eq!(
        m.get("cachebackd_responses_refused_unsent_total"),
        (STREAMS - fits) as f64
    );
    // Without the budget each one pinned its response (800 MiB here); a generous bound.
    assert!(
        growth_mib < 200,
        "RSS grew by {growth_mib} MiB for unread responses"
    );

    // Meanwhile a small response fits, a large one is refused.
    assert_eq!(get(&mut c, "slow", "[\"small\"]").await.data, b"small");
    let status = try_get(&mut c, "slow", b"[\"big\"]", None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The slow client goes: its budget is given back, and the item is read whole.
    drop(pinned);
    drop(slow);
    let freed = async {
        while scrape(&metrics)
            .await
            .get("cachebackd_unsent_responses_bytes")
            != 0.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    within("the budget to be given back", freed).await;
    assert_eq!(get(&mut c, "slow", "[\"big\"]").await.data, big);
    let written = async {
        while scrape(&metrics)
            .await
            .get("cachebackd_unsent_responses_bytes")
            != 0.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    };
    within("a read response to be given back", written).await;
}
