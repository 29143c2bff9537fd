//! What security costs on the Get-hit path: the same fresh hits against three daemons of
//! the same binary — no auth; a bearer token checked on every call (plaintext loopback);
//! TLS (rustls, ring) with the token — the daemons taking turns round by round, reported
//! as ratios to the first.
//!
//! The secured daemons have `required = false`, so the items are set up anonymously while
//! every measured Get carries the token; a sent token is verified exactly as when auth is
//! required (hashed, compared with every stored hash, roles and job checked). The TLS
//! certificate is made at run time (rcgen), as in the tests.

use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, KeyPair};
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::hits::{self, Setting, JOB};
use crate::load::{self, Spec, Throughput};
use crate::procs::{self, Proc};
use crate::rpc::GetCaller;

/// The token every measured Get of the secured daemons sends.
const TOKEN: &str = "bench-token-0123456789abcdefghijklmnopqrstuv";

/// The daemons compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No auth, no TLS: the reference.
    Plain,
    /// A bearer token on every call, over plaintext loopback TCP.
    Token,
    /// TLS and the token.
    TlsToken,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Plain, Variant::Token, Variant::TlsToken];

    fn label(self) -> &'static str {
        match self {
            Variant::Plain => "no auth",
            Variant::Token => "token",
            Variant::TlsToken => "TLS + token",
        }
    }
}

/// One setting's figures, by variant.
pub struct Row {
    /// The setting.
    pub setting: Setting,
    /// Throughput of each variant, in [`Variant::ALL`] order.
    pub runs: Vec<(Variant, Throughput)>,
}

impl Row {
    fn ratio(&self, v: Variant) -> f64 {
        let of = |v: Variant| {
            self.runs
                .iter()
                .find(|(w, _)| *w == v)
                .map_or(0.0, |(_, t)| t.per_sec())
        };
        of(v) / of(Variant::Plain).max(f64::MIN_POSITIVE)
    }

    /// For the JSON report.
    pub fn to_json(&self) -> Value {
        json!({
            "setting": self.setting.label(),
            "runs": self.runs.iter().map(|(v, t)| json!({
                "variant": v.label(),
                "throughput": t.to_json(),
                "ratio_to_no_auth": self.ratio(*v),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The Markdown table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n| Get hit, security | no auth | token | TLS + token | token / no auth | TLS + token / no auth |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let per_sec = |v: Variant| {
            row.runs
                .iter()
                .find(|(w, _)| *w == v)
                .map_or("—".into(), |(_, t)| {
                    let cpu = t
                        .cpu_per_call_us()
                        .map_or(String::new(), |c| format!(" · CPU {c:.1} µs/call"));
                    format!("{:.0}/s{cpu}", t.per_sec())
                })
        };
        out += &format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} |\n",
            row.setting.label(),
            per_sec(Variant::Plain),
            per_sec(Variant::Token),
            per_sec(Variant::TlsToken),
            row.ratio(Variant::Token),
            row.ratio(Variant::TlsToken),
        );
    }
    out
}

struct Target {
    variant: Variant,
    proc: Proc,
    channels: Vec<Channel>,
}

/// Runs the comparison at `settings` (Gets, not GetMany), `rounds` rounds each.
pub async fn run(
    bin: &Path,
    dir: &Path,
    settings: &[Setting],
    spec: Spec,
    rounds: usize,
) -> Result<Vec<Row>, String> {
    let hash = hash_token(bin).await?;
    let config = dir.join("secure.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nrequired = false\n[[auth.principal]]\nname = \"bench\"\ntoken_sha256 = [\"{hash}\"]\nroles = [\"reader\"]\njobs = [\"bench.*\"]\n"
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let (cert, key, ca) = certificate(dir)?;
    let conns = settings.iter().map(|s| s.channels).max().unwrap_or(1);
    let mut targets = Vec::new();
    for variant in Variant::ALL {
        let mut extra = Vec::new();
        if variant != Variant::Plain {
            extra.extend(["--config".to_string(), config.display().to_string()]);
        }
        if variant == Variant::TlsToken {
            extra.extend([
                "--tls-cert".to_string(),
                cert.display().to_string(),
                "--tls-key".to_string(),
                key.display().to_string(),
            ]);
        }
        let name = format!("secure-{variant:?}").to_lowercase();
        let (proc, addr) = procs::start_daemon(
            bin,
            &dir.join(&name),
            dir.join(format!("{name}.log")),
            &extra,
        )
        .await?;
        let (scheme, tls) = match variant {
            Variant::TlsToken => (
                "https",
                Some(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&ca))
                        .domain_name("localhost"),
                ),
            ),
            _ => ("http", None),
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://localhost:{}", addr.port()))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let mut channels = Vec::new();
        for _ in 0..conns {
            channels.push(
                endpoint.connect().await.map_err(|e| {
                    format!("cannot connect to the {} daemon: {e}", variant.label())
                })?,
            );
        }
        hits::prepare(&channels, settings).await?;
        targets.push(Target {
            variant,
            proc,
            channels,
        });
    }
    let authorization: MetadataValue<_> = format!("Bearer {TOKEN}")
        .parse()
        .map_err(|_| "the bench token is not metadata".to_string())?;
    let mut rows = Vec::new();
    for &setting in settings {
        let spec = Spec {
            concurrency: setting.concurrency,
            ..spec
        };
        let mut totals: Vec<Option<Throughput>> = vec![None, None, None];
        for round in 0..rounds {
            for turn in 0..targets.len() {
                let i = (round + turn) % targets.len();
                let t = &targets[i];
                let callers: Vec<GetCaller> = (0..setting.concurrency)
                    .map(|c| {
                        let caller = GetCaller::new(
                            t.channels[c % setting.channels].clone(),
                            JOB,
                            setting.item_args(),
                            setting.payload,
                        );
                        match t.variant {
                            Variant::Plain => caller,
                            _ => caller.with_authorization(authorization.clone()),
                        }
                    })
                    .collect();
                let run = load::closed_loop(spec, callers, Some(t.proc.pid())).await;
                if let Some(e) = &run.first_error {
                    return Err(format!(
                        "{} Get at {}: {e}",
                        t.variant.label(),
                        setting.label()
                    ));
                }
                match &mut totals[i] {
                    Some(total) => total.merge(run),
                    None => totals[i] = Some(run),
                }
            }
        }
        let row = Row {
            setting,
            runs: targets
                .iter()
                .zip(totals)
                .map(|(t, total)| (t.variant, total.expect("at least one round")))
                .collect(),
        };
        eprintln!(
            "  {:<38} token/no auth {:.2}  TLS+token/no auth {:.2}",
            setting.label(),
            row.ratio(Variant::Token),
            row.ratio(Variant::TlsToken)
        );
        rows.push(row);
    }
    for t in targets {
        drop(t.channels);
        t.proc.stop(Duration::from_secs(30)).await?;
    }
    Ok(rows)
}

/// The token's sha256, as the daemon's own `hash-token` prints it.
async fn hash_token(bin: &Path) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(bin)
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {} hash-token: {e}", bin.display()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(TOKEN.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("hash-token exited with {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A self-signed certificate for localhost: (cert file, key file, its PEM as the CA).
fn certificate(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf, String), String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let params =
        CertificateParams::new(vec!["localhost".to_string()]).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let (cert_path, key_path) = (dir.join("bench-cert.pem"), dir.join("bench-key.pem"));
    std::fs::write(&cert_path, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&key_path, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok((cert_path, key_path, cert.pem()))
}
