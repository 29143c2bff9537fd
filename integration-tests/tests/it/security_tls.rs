//! TLS and mTLS through the real binary, with certificates made at run time: TLS on TCP
//! only, client-certificate names as principals, a server certificate rotated by SIGHUP
//! under an open connection, the clients' and ctl's environment variables, and
//! check-config on the auth and TLS sections.

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use cachebackd_proto::v1::{
    cacheback_admin_client::CachebackAdminClient, GetRequest, ListJobsRequest, SetRequest,
};
use tonic::transport::Endpoint;
use tonic::Code;

use crate::client_support::{start, Probe, Tweets};
use crate::harness::*;
use crate::security_support::*;

const TOKEN: &str = "tls-token-FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF";

/// One CA for the module: a server certificate, and client certificates named by a DNS
/// SAN (`web.internal`), by CN alone (`ops-by-cn`), and by a name no principal has.
struct Fixture {
    pki: Pki,
    server: Issued,
    web: Issued,
    ops: Issued,
    stranger: Issued,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let pki = Pki::new("module");
        Fixture {
            server: pki.server("server"),
            web: pki.client("web", Some("web.internal"), "web client"),
            ops: pki.client("ops", None, "ops-by-cn"),
            stranger: pki.client("stranger", Some("stranger.internal"), "stranger"),
            pki,
        }
    })
}

fn get_req(job: &str) -> GetRequest {
    GetRequest {
        job: job.into(),
        args: b"[1]".to_vec(),
        fetch_on_miss: Some(false),
        ..Default::default()
    }
}

/// Starts a daemon with TLS from flags and `auth` in its config file.
async fn tls_daemon(dir: &std::path::Path, auth: &str, mtls: bool, extra: &[String]) -> Daemon {
    let f = fixture();
    let config = write(dir, "c.toml", auth);
    let mut probe = f.pki.client_tls();
    let mut b = Daemon::builder()
        .arg("--config")
        .arg(&config)
        .arg("--tls-cert")
        .arg(&f.server.cert)
        .arg("--tls-key")
        .arg(&f.server.key);
    if mtls {
        b = b.arg("--tls-client-ca").arg(f.pki.ca_file());
        probe = probe.identity(f.web.identity());
    }
    b.args(extra.iter().cloned()).probe_tls(probe).start().await
}

#[tokio::test]
async fn tls_serves_every_tcp_listener_and_the_unix_listener_stays_plaintext() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("c.sock");
    let d = tls_daemon(
        dir.path(),
        "",
        false,
        &["--listen".into(), format!("unix:{}", sock.display())],
    )
    .await;
    // TLS with the CA: answered (NOT_FOUND: no such job).
    let channel = tls_channel(&d, f.pki.client_tls())
        .await
        .expect("a TLS connection");
    let status = client_for(channel).get(get_req("users")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // Plaintext to the TCP port: no gRPC at all.
    let plaintext = async {
        let ch = Endpoint::from_shared(d.endpoint())
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        client_for(ch)
            .get(get_req("users"))
            .await
            .map_err(|s| format!("{s:?}"))
    };
    let err = within("plaintext attempt", plaintext).await.unwrap_err();
    assert!(
        !err.contains("NotFound"),
        "plaintext must not be served: {err}"
    );
    // A client that does not trust the CA refuses the daemon.
    let other = Pki::new("other");
    assert!(tls_channel(&d, other.client_tls()).await.is_err());
    // The Unix listener: plaintext, as always.
    let mut local = cacheback::Client::connect(&format!("unix:{}", sock.display()))
        .await
        .unwrap()
        .raw();
    assert_eq!(
        local.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn an_mtls_certificate_name_identifies_its_principal() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut web = P::token("web", &[], &["reader"]);
    let web_names = ["web.internal"];
    web.tls_names = &web_names;
    let mut ops = P::token("ops", &[], &["admin"]);
    let ops_names = ["ops-by-cn"];
    ops.tls_names = &ops_names;
    let d = tls_daemon(dir.path(), &auth_toml(true, &[web, ops]), true, &[]).await;

    let as_web = tls_channel(&d, f.pki.client_tls().identity(f.web.identity()))
        .await
        .unwrap();
    let mut web_client = client_for(as_web);
    assert_eq!(
        web_client.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound,
        "a reader gets"
    );
    let status = web_client
        .set(SetRequest {
            job: "users".into(),
            args: b"[1]".to_vec(),
            data: b"1".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("\"web\"") && status.message().contains("writer"),
        "{status:?}"
    );

    // A certificate without SANs is known by its CN.
    let as_ops = tls_channel(&d, f.pki.client_tls().identity(f.ops.identity()))
        .await
        .unwrap();
    CachebackAdminClient::new(as_ops)
        .list_jobs(ListJobsRequest {})
        .await
        .expect("ops is admin");

    // Signed by the CA but no principal's: UNAUTHENTICATED.
    let as_stranger = tls_channel(&d, f.pki.client_tls().identity(f.stranger.identity()))
        .await
        .unwrap();
    let status = client_for(as_stranger)
        .get(get_req("users"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("stranger.internal"), "{status:?}");

    // No certificate, or one of another CA: the handshake fails, no call is answered.
    let other = Pki::new("other");
    let foreign = other.client("foreign", Some("web.internal"), "foreign");
    for tls in [
        f.pki.client_tls(),
        f.pki.client_tls().identity(foreign.identity()),
    ] {
        let attempt = async {
            let ch = tls_channel(&d, tls).await.map_err(|e| e.to_string())?;
            client_for(ch)
                .get(get_req("users"))
                .await
                .map_err(|s| format!("{s:?}"))
        };
        let err = within("a refused handshake", attempt).await.unwrap_err();
        assert!(!err.contains("NotFound"), "{err}");
    }
}

#[tokio::test]
async fn sighup_rotates_the_server_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new("first");
    let issued = first.server("server");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::copy(&issued.cert, &cert).unwrap();
    std::fs::copy(&issued.key, &key).unwrap();
    let config = write(
        dir.path(),
        "c.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let d = Daemon::builder()
        .arg("--config")
        .arg(&config)
        .probe_tls(first.client_tls())
        .start()
        .await;
    let mut kept = client_for(tls_channel(&d, first.client_tls()).await.unwrap());
    assert_eq!(
        kept.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound
    );

    let second = Pki::new("second");
    let renewed = second.server("renewed");
    std::fs::copy(&renewed.cert, &cert).unwrap();
    std::fs::copy(&renewed.key, &key).unwrap();
    sighup(&d);
    logged(&d, "SIGHUP: reloaded", 1).await;
    // The open connection goes on (a new one would have to trust the second CA).
    assert_eq!(
        kept.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        tls_channel(&d, first.client_tls()).await.is_err(),
        "new connections get the new certificate"
    );
    let mut fresh = client_for(
        tls_channel(&d, second.client_tls())
            .await
            .expect("the new certificate is served"),
    );
    assert_eq!(
        fresh.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound
    );

    // A broken certificate file is kept out: the renewed one stays in force.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    sighup(&d);
    logged(&d, "SIGHUP: reload failed", 1).await;
    let mut after = client_for(
        tls_channel(&d, second.client_tls())
            .await
            .expect("still the renewed certificate"),
    );
    assert_eq!(
        after.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        kept.get(get_req("users")).await.unwrap_err().code(),
        Code::NotFound
    );
}

/// `cachebackd ctl --addr ADDR ARGS…` with exactly these credential variables.
fn ctl_env(
    addr: &str,
    args: &[&str],
    envs: &[(&str, &std::path::Path)],
    token: Option<&str>,
) -> Output {
    let mut cmd = Command::new(daemon_bin());
    cmd.arg("ctl")
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::null());
    for var in [
        "CACHEBACKD_URL",
        "CACHEBACKD_TOKEN",
        "CACHEBACKD_TLS_CA",
        "CACHEBACKD_TLS_CERT",
        "CACHEBACKD_TLS_KEY",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    if let Some(t) = token {
        cmd.env("CACHEBACKD_TOKEN", t);
    }
    cmd.output().expect("run ctl")
}

#[tokio::test]
async fn clients_and_ctl_read_their_credentials_from_the_environment() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut web = P::token("web", &[TOKEN], &["reader", "writer", "worker", "admin"]);
    let web_names = ["web.internal"];
    web.tls_names = &web_names;
    let d = tls_daemon(dir.path(), &auth_toml(true, &[web]), true, &[]).await;
    let https = format!("https://localhost:{}", d.port());
    let ca = f.pki.ca_file();
    let identity = [
        ("CACHEBACKD_TLS_CERT", f.web.cert.as_path()),
        ("CACHEBACKD_TLS_KEY", f.web.key.as_path()),
    ];

    // ctl: CA and client certificate from the environment, principal by certificate.
    let all = [
        ("CACHEBACKD_TLS_CA", ca.as_path()),
        identity[0],
        identity[1],
    ];
    let out = ctl_env(&https, &["--json", "jobs"], &all, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the client certificate there is no connection.
    let out = ctl_env(
        &https,
        &["jobs"],
        &[("CACHEBACKD_TLS_CA", ca.as_path())],
        Some(TOKEN),
    );
    assert!(!out.status.success());

    // The Rust client and its Worker over mTLS with a token, as an app server runs them.
    let tls = cacheback::TlsConfig::new()
        .ca_pem(f.pki.ca_pem.clone())
        .identity_pem(f.web.cert_pem.clone(), f.web.key_pem.clone());
    let client = cacheback::Client::builder(&https)
        .tls(tls)
        .token(TOKEN)
        .connect()
        .await
        .expect("connect");
    let probe = Probe::default();
    let worker = start(cacheback::Worker::new(client.clone()).serve(Tweets(probe.clone()))).await;
    let job = Tweets(probe.clone());
    assert_eq!(
        client
            .job(&job)
            .get(&"bob".to_owned())
            .await
            .unwrap()
            .unwrap(),
        ["bob #1"]
    );
    worker.stop().await.unwrap();

    // Plaintext daemon with a token: ctl reads CACHEBACKD_TOKEN and --token-file.
    let dir2 = tempfile::tempdir().unwrap();
    let config = write(
        dir2.path(),
        "c.toml",
        &auth_toml(true, &[P::token("ops", &[TOKEN], &["admin"])]),
    );
    let plain = Daemon::builder().arg("--config").arg(&config).start().await;
    let addr = format!("127.0.0.1:{}", plain.port());
    let out = ctl_env(&addr, &["--json", "stats"], &[], Some(TOKEN));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token_file = write(dir2.path(), "token", &format!("{TOKEN}\n"));
    let out = ctl_env(
        &addr,
        &["--token-file", token_file.to_str().unwrap(), "stats"],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl_env(&addr, &["stats"], &[], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl_env(&addr, &["stats"], &[], Some("wrong-token-value"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("Unauthenticated")
            && !stderr.contains("wrong-token-value"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_token_is_never_sent_in_plaintext_beyond_loopback_unless_allowed() {
    // Nothing listens there: the refusal comes before any connection is tried.
    let remote = "http://192.0.2.7:7070";
    let err = cacheback::Client::builder(remote)
        .token(TOKEN)
        .connect_lazy()
        .unwrap_err();
    assert!(matches!(err, cacheback::Error::Credentials { .. }), "{err}");
    assert!(!err.to_string().contains(TOKEN), "{err}");
    cacheback::Client::builder(remote)
        .token(TOKEN)
        .allow_plaintext_token()
        .connect_lazy()
        .expect("allowed explicitly");
    cacheback::Client::builder(remote)
        .connect_lazy()
        .expect("no token, nothing to protect");
    let out = ctl_env("192.0.2.7:7070", &["stats"], &[], Some(TOKEN));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("plaintext"),
        "{stderr}"
    );
}

fn check_config(text: &str, dir: &std::path::Path) -> (bool, String) {
    let file = write(dir, "check.toml", text);
    let out = Command::new(daemon_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("check-config");
    assert!(
        out.status.success() || out.status.code() == Some(78),
        "{:?}",
        out.status
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_validates_auth_and_tls_naming_key_and_line() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\n{}",
        f.server.cert.display().to_string(),
        f.server.key.display().to_string(),
        f.pki.ca_file().display().to_string(),
        auth_toml(
            true,
            &[P::token("web", &[TOKEN], &["reader"]).jobs(&["tweets.*"])]
        )
    );
    let (ok, err) = check_config(&good, dir.path());
    assert!(ok, "{err}");
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");
    let cases = [
        (
            "[auth]\n[[auth.principal]]\nname = \"a\"\ntoken_sha256 = [\"abc\"]\n",
            "line 4: key `auth.principal.token_sha256`",
            "not a sha256",
        ),
        (
            "[auth]\n[[auth.principal]]\nname = \"a\"\nroles = [\"root\"]\n",
            "line 4: key `auth.principal.roles`",
            "unknown variant `root`",
        ),
        (
            "[auth]\n[[auth.principal]]\nname = \"a\"\njobs = [\"tweets/*\"]\n",
            "line 4: key `auth.principal.jobs`",
            "not a job glob",
        ),
        (
            "[auth]\nrequred = true\n",
            "line 2: key `auth.requred`",
            "unknown field",
        ),
        (
            "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
            "line 2: key `tls.cert`",
            "/nonexistent/c.pem",
        ),
    ];
    for (text, at, why) in cases {
        let (ok, err) = check_config(text, dir.path());
        assert!(
            !ok && err.contains(at) && err.contains(why),
            "{text}: {err}"
        );
    }
    let text = format!(
        "# TLS\n[tls]\nkey = {:?}\ncert = {:?}\n",
        f.server.key.display().to_string(),
        garbage.display().to_string()
    );
    let (ok, err) = check_config(&text, dir.path());
    assert!(!ok && err.contains("line 4: key `tls.cert`"), "{err}");
    let text = format!("[tls]\ncert = {:?}\n", f.server.cert.display().to_string());
    let (ok, err) = check_config(&text, dir.path());
    assert!(!ok && err.contains("tls.key is required"), "{err}");
}
