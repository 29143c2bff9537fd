//! The error rows of PROTOCOL.md, each with its status; after every bad input the daemon
//! still serves and the data stored before is intact.

use cachebackd_proto::v1::{daemon_message, ItemState, JobConfig, WorkerMessage};
use tonic::{Code, Status};

use crate::harness::*;

const JOB: &str = "errors";
const CANARY_ARGS: &[u8] = b"[\"canary\"]";
const CANARY_DATA: &[u8] = b"\"still here\"";

/// A daemon with a registered job and one stored item, to check after the bad input.
struct Setup {
    d: Daemon,
    c: Client,
    w: TestWorker,
}

async fn setup() -> Setup {
    setup_with(JobConfig::default()).await
}

async fn setup_with(config: JobConfig) -> Setup {
    let d = Daemon::start().await;
    let mut c = d.client();
    let w = TestWorker::register(&d, JOB, config).await;
    set(&mut c, JOB, CANARY_ARGS, CANARY_DATA.to_vec(), None).await;
    Setup { d, c, w }
}

impl Setup {
    /// The daemon serves, the stored item is intact, and the worker stream still works.
    async fn assert_intact(&mut self) {
        let r = get(&mut self.c, JOB, CANARY_ARGS).await;
        assert_eq!(r.state(), ItemState::Fresh);
        assert_eq!(r.data, CANARY_DATA);
        let c = self.c.clone();
        self.w.assert_no_fetch(&c, JOB).await;
    }
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) {
    match result {
        Err(status) => assert_eq!(status.code(), code, "{what}: {status:?}"),
        Ok(v) => panic!("{what}: expected {code:?}, got Ok({v:?})"),
    }
}

/// Every unary RPC on `job`/`args`/`data` answers `code`.
async fn assert_all_rpcs(c: &mut Client, job: &str, args: &[u8], code: Code) {
    assert_code(try_get(c, job, args, None).await, code, "Get");
    assert_code(
        try_get(c, job, args, Some(false)).await,
        code,
        "Get no wait",
    );
    assert_code(
        try_set(c, job, args, b"1".to_vec(), None).await,
        code,
        "Set",
    );
    assert_code(try_invalidate(c, job, args).await, code, "Invalidate");
    assert_code(try_delete(c, job, args).await, code, "Delete");
}

/// A Register for `job` ends its stream with `code`.
async fn assert_register_fails(endpoint: &str, job: &str, code: Code) {
    let result = TestWorker::builder(job)
        .config(JobConfig::default())
        .try_connect(endpoint)
        .await;
    match result {
        Err(status) => assert_eq!(status.code(), code, "Register {job:?}: {status:?}"),
        Ok(_) => panic!("Register {job:?} was accepted"),
    }
}

#[tokio::test]
async fn empty_job_name_is_invalid_argument() {
    let mut s = setup().await;
    assert_all_rpcs(&mut s.c, "", b"[1]", Code::InvalidArgument).await;
    assert_register_fails(&s.d.endpoint(), "", Code::InvalidArgument).await;
    s.assert_intact().await;
}

#[tokio::test]
async fn job_name_over_128_bytes_is_invalid_argument_and_128_is_accepted() {
    let mut s = setup().await;
    let long = "n".repeat(129);
    assert_all_rpcs(&mut s.c, &long, b"[1]", Code::InvalidArgument).await;
    assert_register_fails(&s.d.endpoint(), &long, Code::InvalidArgument).await;

    let max = "m".repeat(128);
    let _w = TestWorker::register(&s.d, &max, JobConfig::default()).await;
    set(&mut s.c, &max, b"[1]", b"128".to_vec(), None).await;
    assert_eq!(get(&mut s.c, &max, b"[1]").await.data, b"128");
    s.assert_intact().await;
}

#[tokio::test]
async fn ill_formed_job_name_is_invalid_argument() {
    let mut s = setup().await;
    for bad in [
        "a b",
        "a/b",
        "a,b",
        "job!",
        "caf\u{e9}",
        "a\0b",
        "tab\t",
        "[x]",
    ] {
        assert_all_rpcs(&mut s.c, bad, b"[1]", Code::InvalidArgument).await;
        assert_register_fails(&s.d.endpoint(), bad, Code::InvalidArgument).await;
    }
    // Every allowed character at once.
    let good = "Az09_.:-";
    let _w = TestWorker::register(&s.d, good, JobConfig::default()).await;
    set(&mut s.c, good, b"[1]", b"ok".to_vec(), None).await;
    assert_eq!(get(&mut s.c, good, b"[1]").await.data, b"ok");
    s.assert_intact().await;
}

#[tokio::test]
async fn args_over_4096_bytes_are_invalid_argument_and_4096_accepted() {
    let mut s = setup().await;
    let max = vec![b'a'; 4096];
    set(&mut s.c, JOB, &max, b"4096".to_vec(), None).await;
    assert_eq!(get(&mut s.c, JOB, &max).await.data, b"4096");
    assert!(invalidate(&mut s.c, JOB, &max).await.found);
    let f = s.w.next_fetch().await;
    assert_eq!(f.args, max, "args reach the worker intact");
    s.w.reply_value(&f.request_id, b"4096".to_vec(), None).await;
    assert!(delete(&mut s.c, JOB, &max).await.found);

    let over = vec![b'a'; 4097];
    assert_all_rpcs(&mut s.c, JOB, &over, Code::InvalidArgument).await;
    s.assert_intact().await;
}

#[tokio::test]
async fn data_over_4_mib_is_invalid_argument_and_4_mib_accepted() {
    const LIMIT: usize = 4 * 1024 * 1024;
    let mut s = setup().await;
    let max: Vec<u8> = (0..LIMIT).map(|i| (i % 251) as u8).collect();
    set(&mut s.c, JOB, b"[\"big\"]", max.clone(), None).await;
    let r = get(&mut s.c, JOB, b"[\"big\"]").await;
    assert_eq!(r.state(), ItemState::Fresh);
    assert!(r.data == max, "4 MiB read back intact");

    let err = try_set(&mut s.c, JOB, b"[\"big\"]", vec![b'x'; LIMIT + 1], None).await;
    assert_code(err, Code::InvalidArgument, "Set of 4 MiB + 1");
    let r = get(&mut s.c, JOB, b"[\"big\"]").await;
    assert!(r.data == max, "the refused Set changed nothing");
    s.assert_intact().await;
}

#[tokio::test]
async fn unregistered_job_is_not_found() {
    let mut s = setup().await;
    assert_all_rpcs(&mut s.c, "never-registered", b"[1]", Code::NotFound).await;
    s.assert_intact().await;
}

#[tokio::test]
async fn first_stream_message_not_register_fails_precondition() {
    let mut s = setup().await;
    let endpoint = s.d.endpoint();
    for first in [
        value_msg("00000000-0000-0000-0000-000000000000", b"x".to_vec(), None),
        error_msg("00000000-0000-0000-0000-000000000000", "x"),
        WorkerMessage { kind: None },
    ] {
        let mut raw = RawStream::open(&endpoint, vec![first.clone()]).await;
        let (end, seen) = raw.end().await;
        assert!(seen.is_empty(), "no message before the error: {seen:?}");
        assert_code(end, Code::FailedPrecondition, &format!("first {first:?}"));
    }
    s.assert_intact().await;
}

#[tokio::test]
async fn second_register_fails_precondition() {
    let mut s = setup().await;
    let register = register_msg(JOB, JobConfig::default(), 0, "twice");
    let mut raw = RawStream::open(&s.d.endpoint(), vec![register.clone()]).await;
    match raw.next().await {
        Ok(Some(msg)) => assert!(
            matches!(msg.kind, Some(daemon_message::Kind::Registered(_))),
            "{msg:?}"
        ),
        other => panic!("expected Registered, got {other:?}"),
    }
    assert!(raw.send(register).await);
    let (end, seen) = raw.end().await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_code(end, Code::FailedPrecondition, "second Register");
    s.assert_intact().await;
}

#[tokio::test]
async fn register_with_bad_name_is_invalid_argument() {
    let mut s = setup().await;
    for bad in ["", "has space", &"x".repeat(129)] {
        let mut raw = RawStream::open(
            &s.d.endpoint(),
            vec![register_msg(bad, JobConfig::default(), 0, "")],
        )
        .await;
        let (end, seen) = raw.end().await;
        assert!(seen.is_empty(), "{seen:?}");
        assert_code(end, Code::InvalidArgument, &format!("Register {bad:?}"));
    }
    s.assert_intact().await;
}

#[tokio::test]
async fn unknown_request_id_is_dropped_and_stream_stays_open() {
    let mut s = setup().await;
    for id in ["00000000-0000-0000-0000-000000000000", "not a uuid", ""] {
        s.w.reply_value(id, b"\"stray\"".to_vec(), None).await;
        s.w.reply_error(id, "stray").await;
    }
    // A later fetch on the same stream still works.
    s.assert_intact().await;
    assert!(!s.w.is_closed());
}

#[tokio::test]
async fn duplicate_answer_is_dropped_and_stream_stays_open() {
    let mut s = setup().await;
    let pending = spawn_get(&s.c, JOB, b"[1]", None);
    let f = s.w.next_fetch().await;
    s.w.reply_value(&f.request_id, b"\"first\"".to_vec(), None)
        .await;
    assert_eq!(join_get(pending).await.expect("Get").data, b"\"first\"");
    s.w.reply_value(&f.request_id, b"\"second\"".to_vec(), None)
        .await;
    s.w.reply_error(&f.request_id, "third").await;
    s.assert_intact().await;
    let r = get(&mut s.c, JOB, b"[1]").await;
    assert_eq!(r.data, b"\"first\"", "the duplicate answer was not stored");
    assert!(!s.w.is_closed());
}

#[tokio::test]
async fn late_answer_is_dropped_and_stream_stays_open() {
    let mut s = setup_with(job_config(300.0, 1.0)).await;
    let pending = spawn_get(&s.c, JOB, b"[1]", None);
    let f = s.w.next_fetch().await;
    // The Get failing is the signal that the deadline has passed.
    let err = join_get(pending).await.expect_err("deadline passed");
    assert_eq!(err.code(), Code::Unavailable);
    s.w.reply_value(&f.request_id, b"\"late\"".to_vec(), None)
        .await;
    s.assert_intact().await;
    let r = get_no_wait(&mut s.c, JOB, b"[1]").await;
    assert_eq!(r.state(), ItemState::Miss, "the late answer was not stored");
    assert!(!s.w.is_closed());
}

#[tokio::test]
async fn register_with_bad_durations_or_max_in_flight_is_invalid_argument() {
    let mut s = setup().await;
    let negative = prost_types::Duration {
        seconds: -1,
        nanos: 0,
    };
    let century_and_a_day = dur(100.0 * 365.0 * 24.0 * 3600.0 + 86_400.0);
    let bad_configs = [
        (
            "negative lifetime",
            JobConfig {
                lifetime: Some(negative),
                ..JobConfig::default()
            },
        ),
        (
            "zero refresh_timeout",
            JobConfig {
                refresh_timeout: Some(dur(0.0)),
                ..JobConfig::default()
            },
        ),
        (
            "zero cache_ttl",
            JobConfig {
                cache_ttl: Some(dur(0.0)),
                ..JobConfig::default()
            },
        ),
        (
            "negative threshold",
            JobConfig {
                fetch_on_stale_threshold: Some(negative),
                ..JobConfig::default()
            },
        ),
        (
            "lifetime over a century",
            JobConfig {
                lifetime: Some(century_and_a_day),
                ..JobConfig::default()
            },
        ),
    ];
    for (what, config) in bad_configs {
        let result = TestWorker::builder("errors.durations")
            .config(config)
            .try_connect(&s.d.endpoint())
            .await;
        match result {
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}"),
            Ok(_) => panic!("{what}: registered"),
        }
    }
    let too_many = TestWorker::builder("errors.durations")
        .config(JobConfig::default())
        .max_in_flight(65_537)
        .try_connect(&s.d.endpoint())
        .await;
    assert_code(
        too_many.map(|_| ()),
        Code::InvalidArgument,
        "max_in_flight 65,537",
    );
    // None of them registered the job.
    assert_code(
        try_get(&mut s.c, "errors.durations", b"[]", None).await,
        Code::NotFound,
        "Get of the refused job",
    );
    s.assert_intact().await;
}

#[tokio::test]
async fn set_with_a_negative_lifetime_is_invalid_argument() {
    let mut s = setup().await;
    let negative = prost_types::Duration {
        seconds: -5,
        nanos: 0,
    };
    assert_code(
        try_set(
            &mut s.c,
            JOB,
            CANARY_ARGS,
            b"\"over\"".to_vec(),
            Some(negative),
        )
        .await,
        Code::InvalidArgument,
        "Set with lifetime -5 s",
    );
    s.assert_intact().await;
}

#[tokio::test]
async fn garbage_on_the_port_is_dropped_and_the_daemon_serves_on() {
    use tokio::io::AsyncWriteExt;

    let mut s = setup().await;
    let addr = format!("127.0.0.1:{}", s.d.port());
    // Not HTTP/2 at all; then the HTTP/2 preface followed by nonsense frames.
    let junk: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for first in [&b""[..], &preface[..]] {
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        conn.write_all(first).await.expect("write");
        // The daemon may close the connection before it has read everything.
        let _ = conn.write_all(&junk).await;
        drop(conn);
    }
    s.assert_intact().await;
}

#[tokio::test]
async fn worker_answer_with_a_negative_lifetime_is_a_failed_fetch() {
    let mut s = setup().await;
    let pending = spawn_get(&s.c, JOB, b"[\"negative\"]", None);
    let fetch = s.w.next_fetch().await;
    let negative = prost_types::Duration {
        seconds: -60,
        nanos: 0,
    };
    s.w.reply_value(&fetch.request_id, b"\"bad\"".to_vec(), Some(negative))
        .await;
    let err = join_get(pending).await.expect_err("a failed fetch");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("lifetime"), "{err:?}");
    // Nothing was stored: the next Get fetches again.
    let pending = spawn_get(&s.c, JOB, b"[\"negative\"]", None);
    let fetch = s.w.next_fetch().await;
    s.w.reply_value(&fetch.request_id, b"\"good\"".to_vec(), None)
        .await;
    assert_eq!(join_get(pending).await.expect("Get").data, b"\"good\"");
    s.assert_intact().await;
}
