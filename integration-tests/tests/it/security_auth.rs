//! Authentication and authorization through the real binary, over plaintext loopback TCP
//! and a Unix socket (PROTOCOL.md, "Security"): tokens name principals, each role allows
//! its RPCs and no others, job globs limit every role, GetMany is checked per item, a
//! refused call changes nothing, denials are counted and logged, health stays open.

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, daemon_message, get_result, DaemonMessage,
    DeleteJobRequest, DeleteRequest, GetManyRequest, GetRequest, InvalidateJobRequest,
    InvalidateRequest, ItemState, ListJobsRequest, SetRequest, StatsRequest, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::harness::*;
use crate::ops_support::{health_check, scrape};
use crate::security_support::*;

const READER: &str = "reader-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const WRITER: &str = "writer-token-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const WORKER: &str = "worker-token-CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC";
const ADMIN: &str = "admin-token-DDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDDD";
const SCOPED: &str = "scoped-token-EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE";

/// A daemon with auth required and one principal per role (every job), plus `scoped`:
/// every role, but only the jobs `tweets.*`.
struct Secured {
    d: Daemon,
    _dir: tempfile::TempDir,
    metrics: String,
}

async fn secured(extra_args: &[&str]) -> Secured {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = auth_toml(
        true,
        &[
            P::token("web", &[READER], &["reader"]),
            P::token("importer", &[WRITER], &["writer"]),
            P::token("fetcher", &[WORKER], &["worker"]),
            P::token("ops", &[ADMIN], &["admin"]),
            P::token(
                "tweets-team",
                &[SCOPED],
                &["reader", "writer", "worker", "admin"],
            )
            .jobs(&["tweets.*"]),
        ],
    );
    let config = write(dir.path(), "cachebackd.toml", &text);
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::builder()
        .arg("--config")
        .arg(&config)
        .args(["--metrics-listen", &metrics])
        .args(extra_args.iter().copied())
        .start()
        .await;
    Secured {
        d,
        _dir: dir,
        metrics,
    }
}

/// Registers `job` with a worker principal's token; the stream, kept open by the caller.
async fn register(
    client: &mut Authed,
    job: &str,
) -> Result<(mpsc::Sender<WorkerMessage>, Streaming<DaemonMessage>), Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(register_msg(job, job_config(300.0, 10.0), 4, "secured"))
        .await
        .expect("queue Register");
    let mut stream = within("RegisterJob", client.register_job(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    match within("Registered", stream.message()).await? {
        Some(DaemonMessage {
            kind: Some(daemon_message::Kind::Registered(_)),
        }) => Ok((tx, stream)),
        other => panic!("expected Registered, got {other:?}"),
    }
}

fn get_req(job: &str, args: &str) -> GetRequest {
    GetRequest {
        job: job.into(),
        args: args.as_bytes().to_vec(),
        fetch_on_miss: Some(false),
        ..Default::default()
    }
}

fn set_req(job: &str, args: &str, data: &str) -> SetRequest {
    SetRequest {
        job: job.into(),
        args: args.as_bytes().to_vec(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn assert_denied(r: Result<impl std::fmt::Debug, Status>, code: Code, needles: &[&str]) {
    let s = r.expect_err("the call must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    for n in needles {
        assert!(s.message().contains(n), "{n:?} not in {:?}", s.message());
    }
}

async fn admin(d: &Daemon, token: &str) -> CachebackAdminClient<cacheback::Transport> {
    let client = cacheback::ClientBuilder::new(&d.endpoint())
        .token(token)
        .connect()
        .await
        .expect("connect");
    CachebackAdminClient::new(client.transport())
}

#[tokio::test]
async fn a_token_identifies_its_principal_and_each_role_allows_only_its_rpcs() {
    let s = secured(&[]).await;
    let d = &s.d;
    let (mut reader, mut writer, mut worker) = (
        authed(d, READER).await,
        authed(d, WRITER).await,
        authed(d, WORKER).await,
    );

    // worker: RegisterJob, and nothing of reader's or writer's.
    let _stream = register(&mut worker, "users")
        .await
        .expect("worker registers");
    assert_denied(
        worker.get(get_req("users", "[1]")).await,
        Code::PermissionDenied,
        &["\"fetcher\"", "reader", "Get"],
    );
    assert_denied(
        worker.set(set_req("users", "[1]", "x")).await,
        Code::PermissionDenied,
        &["\"fetcher\"", "writer"],
    );
    // writer: Set, Invalidate, Delete; not Get, not RegisterJob.
    writer
        .set(set_req("users", "[1]", "\"ann\""))
        .await
        .expect("writer sets");
    writer
        .set(set_req("users", "[2]", "\"bob\""))
        .await
        .expect("writer sets");
    let inv = writer
        .invalidate(InvalidateRequest {
            job: "users".into(),
            args: b"[2]".to_vec(),
        })
        .await
        .expect("writer invalidates")
        .into_inner();
    assert!(inv.found);
    let del = writer
        .delete(DeleteRequest {
            job: "users".into(),
            args: b"[2]".to_vec(),
        })
        .await
        .expect("writer deletes")
        .into_inner();
    assert!(del.found);
    assert_denied(
        writer.get(get_req("users", "[1]")).await,
        Code::PermissionDenied,
        &["\"importer\"", "reader"],
    );
    assert_denied(
        register(&mut writer, "users").await,
        Code::PermissionDenied,
        &["\"importer\"", "worker", "RegisterJob"],
    );
    // reader: Get and GetMany; no writes, no registration, no admin.
    let got = reader
        .get(get_req("users", "[1]"))
        .await
        .expect("reader gets")
        .into_inner();
    assert_eq!(
        (got.state(), got.data.as_slice()),
        (ItemState::Fresh, &b"\"ann\""[..])
    );
    let many = reader
        .get_many(GetManyRequest {
            requests: vec![get_req("users", "[1]"), get_req("users", "[2]")],
        })
        .await
        .expect("reader gets many")
        .into_inner();
    assert_eq!(many.results.len(), 2);
    assert_denied(
        reader.set(set_req("users", "[1]", "x")).await,
        Code::PermissionDenied,
        &["\"web\"", "writer", "Set"],
    );
    assert_denied(
        reader
            .invalidate(InvalidateRequest {
                job: "users".into(),
                args: b"[1]".to_vec(),
            })
            .await,
        Code::PermissionDenied,
        &["\"web\"", "writer", "Invalidate"],
    );
    assert_denied(
        reader
            .delete(DeleteRequest {
                job: "users".into(),
                args: b"[1]".to_vec(),
            })
            .await,
        Code::PermissionDenied,
        &["\"web\"", "writer", "Delete"],
    );
    assert_denied(
        register(&mut reader, "users").await,
        Code::PermissionDenied,
        &["\"web\"", "worker"],
    );
    assert_denied(
        admin(d, READER).await.list_jobs(ListJobsRequest {}).await,
        Code::PermissionDenied,
        &["\"web\"", "admin", "ListJobs"],
    );
    // admin: every admin RPC, and nothing else.
    let mut ops = admin(d, ADMIN).await;
    let jobs = ops
        .list_jobs(ListJobsRequest {})
        .await
        .expect("admin lists")
        .into_inner();
    assert_eq!(
        jobs.jobs
            .iter()
            .map(|j| j.name.as_str())
            .collect::<Vec<_>>(),
        ["users"]
    );
    ops.stats(StatsRequest {}).await.expect("admin stats");
    ops.invalidate_job(InvalidateJobRequest {
        job: "users".into(),
    })
    .await
    .expect("admin invalidates a job");
    assert_denied(
        authed(d, ADMIN).await.get(get_req("users", "[1]")).await,
        Code::PermissionDenied,
        &["\"ops\"", "reader"],
    );
    drop(_stream);
    let deleted = eventually(WAIT, || {
        let mut ops = ops.clone();
        async move {
            match ops
                .delete_job(DeleteJobRequest {
                    job: "users".into(),
                })
                .await
            {
                Ok(r) => Some(r.into_inner()),
                Err(s) if s.code() == Code::FailedPrecondition => None,
                Err(s) => panic!("DeleteJob: {s:?}"),
            }
        }
    })
    .await;
    assert!(deleted.found);
}

#[tokio::test]
async fn job_globs_limit_every_role() {
    let s = secured(&[]).await;
    let d = &s.d;
    let mut team = authed(d, SCOPED).await;
    let _tweets = register(&mut team, "tweets.user")
        .await
        .expect("own job registers");
    assert_denied(
        register(&mut team, "users").await,
        Code::PermissionDenied,
        &["\"tweets-team\"", "\"users\"", "tweets.*"],
    );
    let _users = register(&mut authed(d, WORKER).await, "users")
        .await
        .expect("fetcher registers users");
    team.set(set_req("tweets.user", "[1]", "1"))
        .await
        .expect("own job set");
    assert_denied(
        team.set(set_req("users", "[1]", "1")).await,
        Code::PermissionDenied,
        &["\"tweets-team\"", "\"users\""],
    );
    assert_denied(
        team.get(get_req("users", "[1]")).await,
        Code::PermissionDenied,
        &["\"users\""],
    );
    let got = team
        .get(get_req("tweets.user", "[1]"))
        .await
        .expect("own job get")
        .into_inner();
    assert_eq!(got.data, b"1");
    let mut ops = CachebackAdminClient::new(
        cacheback::ClientBuilder::new(&d.endpoint())
            .token(SCOPED)
            .connect()
            .await
            .unwrap()
            .transport(),
    );
    ops.invalidate_job(InvalidateJobRequest {
        job: "tweets.user".into(),
    })
    .await
    .expect("own job invalidated");
    assert_denied(
        ops.invalidate_job(InvalidateJobRequest {
            job: "users".into(),
        })
        .await,
        Code::PermissionDenied,
        &["\"users\""],
    );
}

#[tokio::test]
async fn get_many_is_checked_per_item() {
    let s = secured(&[]).await;
    let d = &s.d;
    let _a = register(&mut authed(d, WORKER).await, "tweets.a")
        .await
        .unwrap();
    let _b = register(&mut authed(d, WORKER).await, "users")
        .await
        .unwrap();
    let mut writer = authed(d, WRITER).await;
    writer
        .set(set_req("tweets.a", "[1]", "\"t\""))
        .await
        .unwrap();
    writer.set(set_req("users", "[1]", "\"u\"")).await.unwrap();
    let many = authed(d, SCOPED)
        .await
        .get_many(GetManyRequest {
            requests: vec![
                get_req("tweets.a", "[1]"),
                get_req("users", "[1]"),
                get_req("tweets.a", "[1]"),
            ],
        })
        .await
        .expect("GetMany is answered")
        .into_inner();
    let outcomes: Vec<_> = many
        .results
        .into_iter()
        .map(|r| r.outcome.expect("an outcome"))
        .collect();
    match &outcomes[..] {
        [get_result::Outcome::Response(a), get_result::Outcome::Error(e), get_result::Outcome::Response(c)] =>
        {
            assert_eq!(
                (a.data.as_slice(), c.data.as_slice()),
                (&b"\"t\""[..], &b"\"t\""[..])
            );
            assert_eq!(e.code, Code::PermissionDenied as i32);
            assert!(
                e.message.contains("\"users\"") && e.message.contains("tweets-team"),
                "{}",
                e.message
            );
        }
        other => panic!("expected allowed, denied, allowed: {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_write_leaves_data_unchanged() {
    let s = secured(&[]).await;
    let d = &s.d;
    let _w = register(&mut authed(d, WORKER).await, "users")
        .await
        .unwrap();
    let mut writer = authed(d, WRITER).await;
    let set = writer
        .set(set_req("users", "[1]", "\"kept\""))
        .await
        .unwrap()
        .into_inner();
    let (mut reader, mut team) = (authed(d, READER).await, authed(d, SCOPED).await);
    for client in [&mut reader, &mut team] {
        assert_eq!(
            client
                .set(set_req("users", "[1]", "\"poison\""))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let inv = client
            .invalidate(InvalidateRequest {
                job: "users".into(),
                args: b"[1]".to_vec(),
            })
            .await;
        assert_eq!(inv.unwrap_err().code(), Code::PermissionDenied);
        let del = client
            .delete(DeleteRequest {
                job: "users".into(),
                args: b"[1]".to_vec(),
            })
            .await;
        assert_eq!(del.unwrap_err().code(), Code::PermissionDenied);
    }
    let mut anonymous = d.client();
    let s = try_set(&mut anonymous, "users", "[1]", "\"poison\"", None)
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let got = reader
        .get(get_req("users", "[1]"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state(), ItemState::Fresh, "not invalidated");
    assert_eq!(got.data, b"\"kept\"");
    assert_eq!(got.expires_at, set.expires_at, "the same write, untouched");
}

#[tokio::test]
async fn missing_or_unknown_credentials_are_unauthenticated_and_never_echo_the_token() {
    let s = secured(&[]).await;
    let d = &s.d;
    let status = try_get(&mut d.client(), "users", "[1]", Some(false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("needs credentials"), "{status:?}");
    let guess = "reader-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB";
    let status = authed(d, guess)
        .await
        .get(get_req("users", "[1]"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("matches no principal"),
        "{status:?}"
    );
    assert!(
        !status.message().contains(guess) && !d.stderr_log().contains(guess),
        "the token is never echoed"
    );
}

#[tokio::test]
async fn malformed_authorization_values_are_unauthenticated_and_the_daemon_stays_up() {
    let s = secured(&[]).await;
    let d = &s.d;
    let long = format!("Bearer {}", "x".repeat(10 * 1024));
    let values: [&[u8]; 7] = [
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic dXNlcjpwYXNz",
        long.as_bytes(),
        b"Bearer \xff\xfe\x80token",
        b"\xc3\xa9\xc3\xa9",
    ];
    let mut client = d.client();
    for v in values {
        let status = client
            .get(with_authorization(get_req("users", "[1]"), v))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{:?}: {status:?}",
            String::from_utf8_lossy(v)
        );
        assert!(!status.message().contains("xxxxxxxx"), "{status:?}");
    }
    // Still up, and still answering the right token.
    let status = authed(d, READER)
        .await
        .get(get_req("users", "[1]"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "no job yet: {status:?}");
}

#[tokio::test]
async fn health_is_open_and_reflection_needs_a_principal() {
    let s = secured(&[]).await;
    let d = &s.d;
    let channel = crate::ops_support::channel(d).await;
    assert_eq!(
        health_check(channel.clone(), "").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let request = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let anonymous = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request()]))
        .await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);
    let client = cacheback::ClientBuilder::new(&d.endpoint())
        .token(READER)
        .connect()
        .await
        .unwrap();
    let mut answers = ServerReflectionClient::new(client.transport())
        .server_reflection_info(tokio_stream::iter([request()]))
        .await
        .expect("a reader may reflect")
        .into_inner();
    assert!(within("reflection answer", answers.message())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn denials_are_counted_by_reason_and_logged() {
    let s = secured(&[]).await;
    let d = &s.d;
    let before = scrape(&s.metrics).await;
    for reason in [
        "no_credentials",
        "bad_credentials",
        "missing_role",
        "job_not_allowed",
    ] {
        assert!(
            before.has(&format!(
                "cachebackd_auth_denied_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
    let _ = try_get(&mut d.client(), "users", "[1]", Some(false)).await;
    let _ = authed(d, "wrong").await.get(get_req("users", "[1]")).await;
    let _ = authed(d, READER)
        .await
        .set(set_req("users", "[1]", "1"))
        .await;
    let _ = authed(d, SCOPED).await.get(get_req("users", "[1]")).await;
    let _ = authed(d, SCOPED)
        .await
        .get(get_req("secret.stuff", "[1]"))
        .await;
    let after = scrape(&s.metrics).await;
    let delta = |reason: &str| {
        let k = format!("cachebackd_auth_denied_total{{reason=\"{reason}\"}}");
        after.get(&k) - before.get(&k)
    };
    assert_eq!(
        [
            delta("no_credentials"),
            delta("bad_credentials"),
            delta("missing_role"),
            delta("job_not_allowed")
        ],
        [1.0, 1.0, 1.0, 2.0]
    );
    let log = d.stderr_log();
    let line = log
        .lines()
        .find(|l| l.contains("call refused") && l.contains("secret.stuff"))
        .expect("the denial is logged");
    assert!(
        line.contains("tweets-team") && line.contains("Get"),
        "{line}"
    );
}

#[tokio::test]
async fn optional_auth_allows_anonymous_calls_but_checks_sent_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "c.toml",
        &auth_toml(false, &[P::token("web", &[READER], &["reader"])]),
    );
    let d = Daemon::builder().arg("--config").arg(&config).start().await;
    let mut anonymous = d.client();
    let mut w = RawStream::open(
        &d.endpoint(),
        vec![register_msg("users", job_config(300.0, 10.0), 1, "w")],
    )
    .await;
    assert!(w
        .next()
        .await
        .expect("an anonymous worker registers")
        .is_some());
    set(&mut anonymous, "users", "[1]", "\"a\"", None).await;
    assert_eq!(get(&mut anonymous, "users", "[1]").await.data, b"\"a\"");
    let status = authed(&d, "not-a-token")
        .await
        .get(get_req("users", "[1]"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A valid token is held to its principal's roles even when auth is optional.
    let status = authed(&d, READER)
        .await
        .set(set_req("users", "[1]", "1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_unix_peer_uid_identifies_its_principal() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = tempfile::tempdir().unwrap();
    let mut owner = P::token("local-admin", &[], &["reader", "writer", "worker"]);
    let uids = [uid];
    owner.uids = &uids;
    let config = write(dir.path(), "c.toml", &auth_toml(true, &[owner]));
    let sock = dir.path().join("c.sock");
    let d = Daemon::builder()
        .arg("--config")
        .arg(&config)
        .listen(format!("unix:{}", sock.display()))
        .start()
        .await;
    let url = format!("unix:{}", sock.display());
    let mut local = cacheback::Client::connect(&url)
        .await
        .expect("connect over the socket")
        .raw();
    let _w = register(&mut local, "users")
        .await
        .expect("our uid may register");
    local
        .set(set_req("users", "[1]", "\"u\""))
        .await
        .expect("our uid may write");
    let got = local
        .get(get_req("users", "[1]"))
        .await
        .expect("our uid may read")
        .into_inner();
    assert_eq!(got.data, b"\"u\"");
    // The same calls over TCP carry no uid: refused.
    let status = try_get(&mut d.client(), "users", "[1]", Some(false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A uid that no principal has is refused on the socket too.
    let dir2 = tempfile::tempdir().unwrap();
    let mut other = P::token("someone-else", &[], &["reader"]);
    let other_uids = [uid.wrapping_add(4242)];
    other.uids = &other_uids;
    let config2 = write(dir2.path(), "c.toml", &auth_toml(true, &[other]));
    let sock2 = dir2.path().join("c.sock");
    let _d2 = Daemon::builder()
        .arg("--config")
        .arg(&config2)
        .listen(format!("unix:{}", sock2.display()))
        .start()
        .await;
    let mut stranger = cacheback::Client::connect(&format!("unix:{}", sock2.display()))
        .await
        .unwrap()
        .raw();
    let status = stranger.get(get_req("users", "[1]")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains(&format!("uid {uid}")),
        "{status:?}"
    );
}

#[tokio::test]
async fn sighup_rotates_a_token_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        "old-token-0000000000000000000000000000000",
        "new-token-1111111111111111111111111111111",
    );
    let config = write(
        dir.path(),
        "c.toml",
        &auth_toml(
            true,
            &[P::token("web", &[old], &["reader", "writer", "worker"])],
        ),
    );
    let d = Daemon::builder().arg("--config").arg(&config).start().await;
    // One connection, kept across the reload: a worker stream and a client on it.
    let channel = crate::ops_support::channel(&d).await;
    let mut with_old = tonic_client(channel.clone(), old);
    let mut with_new = tonic_client(channel, new);
    let (tx, mut stream) = register(&mut with_old, "users").await.unwrap();
    assert_eq!(
        with_new
            .get(get_req("users", "[1]"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Rotation, step 1: both tokens are valid.
    write(
        dir.path(),
        "c.toml",
        &auth_toml(
            true,
            &[P::token(
                "web",
                &[old, new],
                &["reader", "writer", "worker"],
            )],
        ),
    );
    sighup(&d);
    logged(&d, "SIGHUP: reloaded", 1).await;
    with_new
        .set(set_req("users", "[1]", "\"n\""))
        .await
        .expect("the new token works");
    with_old
        .set(set_req("users", "[2]", "\"o\""))
        .await
        .expect("the old token still works");
    // Step 2: the old token is gone.
    write(
        dir.path(),
        "c.toml",
        &auth_toml(
            true,
            &[P::token("web", &[new], &["reader", "writer", "worker"])],
        ),
    );
    sighup(&d);
    logged(&d, "SIGHUP: reloaded", 2).await;
    assert_eq!(
        with_old
            .get(get_req("users", "[1]"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // The worker stream opened with the old token is still up and answers fetches.
    let get = {
        let mut c = with_new.clone();
        tokio::spawn(async move {
            let mut req = get_req("users", "[3]");
            req.fetch_on_miss = Some(true);
            c.get(req).await
        })
    };
    let fetch = match within("FetchRequest", stream.message()).await.unwrap() {
        Some(DaemonMessage {
            kind: Some(daemon_message::Kind::Fetch(f)),
        }) => f,
        other => panic!("expected a fetch, got {other:?}"),
    };
    tx.send(value_msg(&fetch.request_id, "\"fetched\"", None))
        .await
        .unwrap();
    let got = within("Get", get)
        .await
        .unwrap()
        .expect("Get answered by the kept stream")
        .into_inner();
    assert_eq!(got.data, b"\"fetched\"");
}

#[tokio::test]
async fn a_broken_reload_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "c.toml",
        &auth_toml(true, &[P::token("web", &[READER], &["reader"])]),
    );
    let d = Daemon::builder().arg("--config").arg(&config).start().await;
    let mut reader = authed(&d, READER).await;
    assert_eq!(
        reader
            .get(get_req("users", "[1]"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    for (i, broken) in [
        "[auth]\nrequired = true\n[[auth.principal]]\nname = \"web\"\ntoken_sha256 = [\"not-hex\"]\n",
        "[auth]\nrequired = true\n[[auth.principal]]\nname = \"web\"\nroles = [\"superuser\"]\n",
        "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    ]
    .iter()
    .enumerate()
    {
        write(dir.path(), "c.toml", broken);
        sighup(&d);
        logged(&d, "SIGHUP: reload failed", i + 1).await;
        let status = reader.get(get_req("users", "[1]")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "the old principals are still in force: {status:?}");
        let status = try_get(&mut d.client(), "users", "[1]", Some(false)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "auth is still required");
    }
    let log = d.stderr_log();
    assert!(
        log.contains("not a sha256")
            && log.contains("superuser")
            && log.contains("/nonexistent/cert.pem"),
        "{log}"
    );
}

/// A tonic client on `channel` that sends `token` (two of them can share a connection).
fn tonic_client(channel: tonic::transport::Channel, token: &str) -> Authed {
    let credentials = cacheback::CallCredentials::bearer(token).expect("a valid token");
    cachebackd_proto::v1::cacheback_client::CachebackClient::new(
        tonic::service::interceptor::InterceptedService::new(channel, credentials),
    )
}

#[tokio::test]
async fn hash_token_and_gen_token_follow_the_contract() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let gen = Command::new(daemon_bin())
        .arg("gen-token")
        .output()
        .expect("gen-token");
    assert!(gen.status.success());
    let token = String::from_utf8(gen.stdout).unwrap();
    let token = token.trim_end_matches('\n');
    assert_eq!(token.len(), 43, "32 bytes in base64url: {token:?}");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let hash = String::from_utf8(gen.stderr).unwrap();
    assert_eq!(hash.trim_end(), sha256_hex(token));
    let mut child = Command::new(daemon_bin())
        .arg("hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{token}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        sha256_hex(token)
    );
    let again = Command::new(daemon_bin())
        .arg("gen-token")
        .output()
        .unwrap();
    assert_ne!(
        String::from_utf8(again.stdout).unwrap().trim_end(),
        token,
        "tokens are random"
    );
}

#[tokio::test]
async fn subscribe_is_checked_per_added_item() {
    use cachebackd_proto::v1::{ItemEventKind, ItemRef, SubscribeRequest};
    let s = secured(&[]).await;
    let d = &s.d;
    let _w = register(&mut authed(d, WORKER).await, "tweets.a")
        .await
        .unwrap();
    let subscribe = |token: &'static str, job: &'static str| async move {
        let (tx, rx) = mpsc::channel(4);
        tx.send(SubscribeRequest {
            add: vec![ItemRef {
                job: job.into(),
                args: b"[1]".to_vec(),
            }],
            remove: vec![],
        })
        .await
        .unwrap();
        let events = authed(d, token)
            .await
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok::<_, Status>((tx, events))
    };
    // Allowed: the stream tells of a write (the subscription has been applied by then or
    // the write comes later; either way it is told, so write until it is).
    let (_tx, mut events) = subscribe(SCOPED, "tweets.a").await.unwrap();
    let mut writer = authed(d, WRITER).await;
    let event = within("an event for the write", async {
        loop {
            writer
                .set(set_req("tweets.a", "[1]", "\"t\""))
                .await
                .unwrap();
            let next =
                tokio::time::timeout(std::time::Duration::from_millis(100), events.message());
            if let Ok(e) = next.await {
                break e.expect("no error").expect("an event");
            }
        }
    })
    .await;
    assert_eq!(event.kind(), ItemEventKind::Changed);
    // Denied: the stream ends with PERMISSION_DENIED, naming the job and the principal.
    let (_tx, mut events) = subscribe(SCOPED, "users").await.unwrap();
    assert_denied(
        within("the refusal", events.message()).await,
        Code::PermissionDenied,
        &["\"users\"", "tweets-team"],
    );
    // Subscribe is a reader's RPC.
    let refused = match subscribe(WORKER, "tweets.a").await {
        Ok((_tx, mut events)) => within("the refusal", events.message()).await.map(|_| ()),
        Err(status) => Err(status),
    };
    assert_denied(refused, Code::PermissionDenied, &[]);
}
