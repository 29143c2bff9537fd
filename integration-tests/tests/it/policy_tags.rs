//! Tags and `InvalidateTags` (PROTOCOL.md, "Additions: Tags"): tags stored with items from
//! a fetch or a Set; one durable mark per tag, applied as items are read, across jobs; and
//! the checks on tags and validators.

use cachebackd_proto::v1::{daemon_message, AnswerRefused, DaemonMessage, FetchReason, ItemState};
use tonic::Code;

use crate::harness::*;
use crate::ops_support::scrape;
use crate::policy_support::*;

const A: &str = "policy-tags-a";
const B: &str = "policy-tags-b";

#[tokio::test]
async fn invalidate_tags_makes_tagged_items_of_every_job_stale_and_fetches_nothing() {
    let mut d = Daemon::start().await;
    let mut c = d.client();
    let mut wa = TestWorker::register(&d, A, job_config(300.0, 20.0)).await;
    let wb = TestWorker::register(&d, B, job_config(300.0, 20.0)).await;
    try_set_tagged(&mut c, A, b"[1]", b"1", &["user:1"])
        .await
        .unwrap();
    try_set_tagged(&mut c, B, b"[2]", b"2", &["user:1", "team"])
        .await
        .unwrap();
    try_set_tagged(&mut c, A, b"[3]", b"3", &["team"])
        .await
        .unwrap();
    try_set_tagged(&mut c, A, b"[4]", b"4", &[]).await.unwrap();
    // Tags come back with the item, sorted.
    assert_eq!(get(&mut c, B, b"[2]").await.tags, vec!["team", "user:1"]);

    let mark = try_invalidate_tags(&mut c, &["user:1"]).await.unwrap();
    let mark = wall(
        mark.invalidated_before
            .as_ref()
            .expect("invalidated_before"),
    );
    // Nothing is fetched at the call.
    wa.assert_no_fetch(&c, A).await;
    assert_eq!(wb.fetch_count(), 0);

    // Stored later: untouched, though it carries the tag.
    try_set_tagged(&mut c, A, b"[5]", b"5", &["user:1"])
        .await
        .unwrap();
    assert_eq!(get(&mut c, A, b"[5]").await.state(), ItemState::Fresh);
    // Survives a restart: the mark is durable.
    drop((wa, wb));
    d.restart().await;
    let mut c = d.client();
    let mut wa = TestWorker::register(&d, A, job_config(300.0, 20.0)).await;
    for (job, args) in [(A, &b"[1]"[..]), (B, &b"[2]"[..])] {
        let r = peek(&mut c, job, args).await;
        assert_eq!(r.state(), ItemState::Stale, "{job} {args:?}");
        assert!(wall(r.expires_at.as_ref().unwrap()) <= mark);
    }
    for args in [&b"[3]"[..], b"[4]", b"[5]"] {
        assert_eq!(
            peek(&mut c, A, args).await.state(),
            ItemState::Fresh,
            "{args:?}"
        );
    }
    // Its next Get serves it STALE and refreshes it.
    let r = get(&mut c, A, b"[1]").await;
    assert_eq!((r.state(), r.refresh_scheduled), (ItemState::Stale, true));
    let fetch = wa.next_fetch().await;
    assert_eq!(
        (fetch.args.as_slice(), fetch.reason()),
        (&b"[1]"[..], FetchReason::Stale)
    );
    assert!(
        wa.send(value_with(&fetch.request_id, b"\"new\"", b"", &["user:1"]))
            .await
    );
    let r = eventually(WAIT, || {
        let mut c = c.clone();
        async move {
            let r = get(&mut c, A, b"[1]").await;
            (r.state() == ItemState::Fresh).then_some(r)
        }
    })
    .await;
    assert_eq!(
        (r.data.as_slice(), r.tags.clone()),
        (&b"\"new\""[..], vec!["user:1".to_string()])
    );
}

#[tokio::test]
async fn invalidate_tags_is_counted() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .args(["--metrics-listen", &metrics])
        .start()
        .await;
    let mut c = d.client();
    try_invalidate_tags(&mut c, &["x", "y", "x"]).await.unwrap();
    assert_eq!(
        scrape(&metrics)
            .await
            .get("cachebackd_tag_invalidations_total"),
        2.0
    );
}

#[tokio::test]
async fn bad_tags_in_invalidate_tags_or_set_are_invalid_argument_and_nothing_changes() {
    let d = Daemon::start().await;
    let mut c = d.client();
    let _w = TestWorker::register(&d, A, job_config(300.0, 20.0)).await;
    try_set_tagged(&mut c, A, b"[1]", b"1", &["ok"])
        .await
        .unwrap();
    let many: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (what, tags) in [
        ("no tags", &[][..]),
        ("101 tags", &many[..]),
        ("a bad tag", &["ok", "a b"][..]),
    ] {
        let status = try_invalidate_tags(&mut c, tags).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    // Nothing was marked: not even the good tag next to the bad one.
    assert_eq!(peek(&mut c, A, b"[1]").await.state(), ItemState::Fresh);

    let thirty_three: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let thirty_three: Vec<&str> = thirty_three.iter().map(String::as_str).collect();
    for (what, tags) in [
        ("33 tags", &thirty_three[..]),
        ("a bad tag", &["bad/tag"][..]),
        ("an empty tag", &[""][..]),
    ] {
        let status = try_set_tagged(&mut c, A, b"[2]", b"2", tags)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(
            peek(&mut c, A, b"[2]").await.state(),
            ItemState::Miss,
            "{what}: nothing stored"
        );
    }
    let thirty_two = &thirty_three[..32];
    try_set_tagged(&mut c, A, b"[2]", b"2", thirty_two)
        .await
        .expect("32 tags are allowed");
}

/// What a case is, its data, validator and tags, and the message its callers get.
type BadAnswer<'a> = (&'a str, &'a [u8], &'a [u8], &'a [&'a str], &'a str);

#[tokio::test]
async fn bad_fields_in_a_worker_answer_are_a_failed_fetch_the_worker_is_told_and_the_stream_stays_open(
) {
    let d = Daemon::builder()
        .args(["--max-data-bytes", "1000"])
        .start()
        .await;
    let mut c = d.client();
    let mut w = TestWorker::register(&d, A, job_config(300.0, 20.0)).await;
    let thirty_three: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let thirty_three: Vec<&str> = thirty_three.iter().map(String::as_str).collect();
    let long = vec![b'v'; 257];
    let over = vec![b'1'; 1001];
    let bad: [BadAnswer; 4] = [
        (
            "a 257-byte validator",
            b"\"data\"",
            &long,
            &[],
            "validator is 257 bytes, over the limit of 256 bytes",
        ),
        (
            "33 tags",
            b"\"data\"",
            b"",
            &thirty_three,
            "33 tags on one item, over the limit of 32",
        ),
        (
            "a bad tag",
            b"\"data\"",
            b"",
            &["no spaces"],
            "tag \"no spaces\" has the character ' '",
        ),
        (
            "data over the data limit",
            &over,
            b"",
            &[],
            "the worker answered 1001 bytes of data, over the limit of 1000 bytes (max_data_bytes)",
        ),
    ];
    let mut told = Vec::new();
    for (what, data, validator, tags, message) in bad {
        let pending = spawn_get(&c, A, b"[9]", None);
        let fetch = w.next_fetch().await;
        assert!(
            w.send(value_with(&fetch.request_id, data, validator, tags))
                .await
        );
        let status = join_get(pending).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{what}");
        assert!(status.message().contains(message), "{what}: {status:?}");
        assert_eq!(
            peek(&mut c, A, b"[9]").await.state(),
            ItemState::Miss,
            "{what}: nothing stored"
        );
        assert!(!w.is_closed(), "{what}: the stream stays open");
        told.push(DaemonMessage {
            kind: Some(daemon_message::Kind::Refused(AnswerRefused {
                request_id: fetch.request_id,
                code: Code::Unavailable as i32,
                reason: status.message().to_owned(),
            })),
        });
    }
    let pending = spawn_get(&c, A, b"[9]", None);
    let fetch = w.next_fetch().await;
    assert!(
        w.send(value_with(
            &fetch.request_id,
            b"\"data\"",
            &long[..256],
            &thirty_three[..32]
        ))
        .await
    );
    let r = join_get(pending)
        .await
        .expect("256 bytes and 32 tags are allowed");
    assert_eq!(r.tags.len(), 32);
    // Each refusal was told on the stream before the next fetch; a worker's own error is not.
    assert_eq!(w.unexpected_messages(), told);
    let pending = spawn_get(&c, A, b"[10]", None);
    let fetch = w.next_fetch().await;
    assert!(w.send(error_msg(&fetch.request_id, "origin down")).await);
    join_get(pending).await.unwrap_err();
    let pending = spawn_get(&c, A, b"[11]", None);
    let fetch = w.next_fetch().await;
    assert!(
        w.send(value_msg(&fetch.request_id, b"1".to_vec(), None))
            .await
    );
    join_get(pending).await.unwrap();
    assert_eq!(w.unexpected_messages(), told);

    // A bad answer under an id the daemon never gave out is told with no id: a worker's
    // junk is not echoed (nor kept while the notice waits to be sent).
    assert!(
        w.send(value_with(&"x".repeat(1000), b"\"data\"", &long, &[]))
            .await
    );
    let pending = spawn_get(&c, A, b"[12]", None);
    let fetch = w.next_fetch().await;
    w.reply_value(&fetch.request_id, b"2".to_vec(), None).await;
    join_get(pending).await.unwrap();
    let Some(daemon_message::Kind::Refused(first)) = &told[0].kind else {
        unreachable!("built above as a refusal");
    };
    told.push(DaemonMessage {
        kind: Some(daemon_message::Kind::Refused(AnswerRefused {
            request_id: String::new(),
            ..first.clone()
        })),
    });
    assert_eq!(w.unexpected_messages(), told);
}

#[tokio::test]
async fn ctl_sets_tags_invalidates_them_and_peeks_or_bounds_the_age_of_a_get() {
    use crate::ops_support::{ctl, ctl_json};
    let d = Daemon::start().await;
    let addr = d.endpoint();
    let mut w = TestWorker::register(&d, A, job_config(300.0, 20.0)).await;
    let set = ctl_json(
        &addr,
        &["set", A, "[1]", "\"one\"", "--tag", "t1", "--tag", "t2"],
    )
    .await;
    assert!(set["expires_at"].is_string());
    let got = ctl_json(&addr, &["get", A, "[1]", "--peek"]).await;
    assert_eq!(got["state"], "FRESH");
    assert_eq!(got["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(got["absent"], false);

    let marked = ctl_json(&addr, &["invalidate-tags", "t2"]).await;
    assert!(marked["invalidated_before"].is_string());
    let got = ctl_json(&addr, &["get", A, "[1]", "--peek"]).await;
    assert_eq!(
        (got["state"].as_str(), got["refresh_scheduled"].as_bool()),
        (Some("STALE"), Some(false))
    );
    // A peek started nothing.
    let c = d.client();
    w.assert_no_fetch(&c, A).await;

    // --max-age: the stale item is older than 1 ms, so the Get waits for a fetch.
    let pending = tokio::spawn({
        let addr = addr.clone();
        async move { ctl_json(&addr, &["get", A, "[1]", "--max-age", "1ms"]).await }
    });
    let fetch = w.next_fetch().await;
    assert_eq!(fetch.reason(), FetchReason::Stale);
    w.reply_value(&fetch.request_id, b"\"two\"".to_vec(), None)
        .await;
    let got = within("ctl get --max-age", pending).await.unwrap();
    assert_eq!(
        (got["data"].as_str(), got["fetched"].as_bool()),
        (Some("\"two\""), Some(true))
    );

    let bad = ctl(&addr, &["invalidate-tags", "bad tag"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument"));
}
