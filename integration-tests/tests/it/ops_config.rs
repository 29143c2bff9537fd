//! The config file through the real binary: its settings take effect, flags override it, a
//! typo stops the daemon from starting with the key and line named, `check-config`.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use crate::harness::*;

const JOB: &str = "ops-config";

/// Runs the binary to its end with `args` (it is expected to exit by itself).
async fn run(args: Vec<std::ffi::OsString>) -> std::process::Output {
    // Outside the cap: the first call may build the binary.
    let bin = daemon_bin();
    within(
        "cachebackd to exit",
        tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run cachebackd")
        }),
    )
    .await
    .expect("task")
}

#[tokio::test]
async fn config_file_settings_take_effect_and_flags_override_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("c.sock");
    let file = dir.path().join("cachebackd.toml");
    std::fs::write(
        &file,
        r#"
# Every size limit and the job defaults come from here.
socket_mode = "0640"
max_args_bytes = 10
max_data_bytes = 100

[job_defaults]
lifetime = "7s"
refresh_timeout = "3s"
fetch_on_miss = false
"#,
    )
    .expect("write config");
    let d = Daemon::builder()
        .arg("--config")
        .arg(&file)
        .listen(format!("unix:{}", socket.display()))
        // The flag beats the file's 100.
        .args(["--max-data-bytes", "200"])
        .start()
        .await;

    let mode = std::fs::metadata(&socket)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    // A Register that leaves its config unset gets the file's job defaults.
    let w = TestWorker::builder(JOB)
        .config(Default::default())
        .connect(&d.endpoint())
        .await;
    let config = w.registered.config.expect("effective config");
    assert_eq!(config.lifetime, Some(dur(7.0)));
    assert_eq!(config.refresh_timeout, Some(dur(3.0)));
    assert_eq!(config.fetch_on_miss, Some(false));

    let mut client = d.client();
    try_set(&mut client, JOB, b"0123456789", b"1".to_vec(), None)
        .await
        .expect("args of exactly max_args_bytes are accepted");
    let err = try_set(&mut client, JOB, b"01234567890", b"1".to_vec(), None)
        .await
        .expect_err("args over the file's limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    try_set(&mut client, JOB, b"[1]", vec![b'x'; 200], None)
        .await
        .expect("data of exactly the flag's limit is accepted");
    let err = try_set(&mut client, JOB, b"[1]", vec![b'x'; 201], None)
        .await
        .expect_err("data over the flag's limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn config_typo_fails_to_start_naming_the_key_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cachebackd.toml");
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\"]\ndurabilty = \"always\"\n",
    )
    .expect("write config");
    let out = run(vec![
        "--config".into(),
        file.clone().into(),
        "--data-dir".into(),
        dir.path().join("data").into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "config file {}: line 2: key `durabilty`: unknown field `durabilty`",
            file.display()
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!dir.path().join("data").exists(), "nothing was started");

    // A bad value names its key (in its table) and line too.
    std::fs::write(&file, "[job_defaults]\n\ncache_ttl = \"0s\"\n").expect("write config");
    let out = run(vec!["--config".into(), file.clone().into()]).await;
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3: key `job_defaults.cache_ttl`: must be more than zero"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_config_validates_without_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.toml");
    let port = free_port();
    std::fs::write(
        &good,
        format!("listen = [\"127.0.0.1:{port}\"]\ndurability = \"always\"\n"),
    )
    .expect("write config");
    let out = run(vec!["check-config".into(), good.clone().into()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("listen = [\"127.0.0.1:{port}\"]")),
        "{printed}"
    );
    assert!(printed.contains("durability = \"always\""), "{printed}");
    assert!(printed.contains("[job_defaults]"), "{printed}");
    // It served nothing: the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port was never bound");

    // The shipped example config is valid, with its TLS files (systemd credentials) made.
    let pki = crate::security_support::Pki::new("example");
    pki.server("server");
    std::fs::copy(pki.ca_file(), pki.dir().join("clients-ca.pem")).expect("copy CA");
    let text = std::fs::read_to_string(workspace_root().join("packaging/cachebackd.toml"))
        .expect("read the example")
        .replace(
            "/run/credentials/cachebackd.service/",
            &format!("{}/", pki.dir().display()),
        );
    let example = dir.path().join("example.toml");
    std::fs::write(&example, text).expect("write the example");
    let out = run(vec!["check-config".into(), example.into()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "queue_capacity = -3\n").expect("write config");
    let out = run(vec!["check-config".into(), bad.into()]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 1: key `queue_capacity`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn logs_are_plain_without_colours_off_a_terminal_or_json() {
    // The readiness line may follow the first answered call by a moment.
    let serving_logged = |d: &Daemon| {
        let log = d.stderr_log();
        let found = log.contains("cachebackd is serving");
        async move { found.then_some(log) }
    };
    let plain = Daemon::start().await;
    let log = eventually(WAIT, || serving_logged(&plain)).await;
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes in the journal: {log:?}"
    );

    let json = Daemon::builder()
        .args(["--log-format", "json"])
        .start()
        .await;
    let log = eventually(WAIT, || serving_logged(&json)).await;
    let serving = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("a JSON log line ({e}): {l:?}"))
        })
        .find(|v| v["fields"]["message"] == "cachebackd is serving")
        .unwrap_or_else(|| panic!("no serving line in {log}"));
    assert_eq!(serving["level"], "INFO");
    assert!(serving["timestamp"].is_string());
}
