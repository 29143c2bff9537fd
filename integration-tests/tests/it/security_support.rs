//! Helpers of the security tests (`security_*`): certificates made at run time (rcgen; no
//! key is ever committed), config files with principals, and clients that carry a token,
//! a CA or a client certificate. Additive to the harness.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use cachebackd_proto::v1::cacheback_client::CachebackClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::harness::*;

/// The gRPC client of a principal: the Rust client's transport, token included.
pub type Authed = CachebackClient<cacheback::Transport>;

/// sha256 hex of a token, as `cachebackd hash-token` prints it.
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `[[auth.principal]]` table.
pub struct P<'a> {
    pub name: &'a str,
    pub tokens: &'a [&'a str],
    pub tls_names: &'a [&'a str],
    pub uids: &'a [u32],
    pub roles: &'a [&'a str],
    pub jobs: &'a [&'a str],
}

impl<'a> P<'a> {
    /// A principal known by one token, over every job.
    pub fn token(name: &'a str, token: &'a [&'a str], roles: &'a [&'a str]) -> P<'a> {
        P {
            name,
            tokens: token,
            tls_names: &[],
            uids: &[],
            roles,
            jobs: &["*"],
        }
    }

    /// Limits its jobs.
    pub fn jobs(mut self, jobs: &'a [&'a str]) -> P<'a> {
        self.jobs = jobs;
        self
    }
}

fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>, quote: bool) -> String {
    let items: Vec<String> = items
        .into_iter()
        .map(|i| {
            if quote {
                format!("{:?}", i.to_string())
            } else {
                i.to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The `[auth]` section with these principals.
pub fn auth_toml(required: bool, principals: &[P<'_>]) -> String {
    let mut out = format!("[auth]\nrequired = {required}\n");
    for p in principals {
        out += &format!(
            "\n[[auth.principal]]\nname = {:?}\ntoken_sha256 = {}\ntls_names = {}\nunix_uids = {}\nroles = {}\njobs = {}\n",
            p.name,
            list(p.tokens.iter().map(|t| sha256_hex(t)), true),
            list(p.tls_names.iter(), true),
            list(p.uids.iter(), false),
            list(p.roles.iter(), true),
            list(p.jobs.iter(), true),
        );
    }
    out
}

/// Writes `text` as `name` in `dir`; its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// A Rust client of the daemon's TCP listener sending `token`.
pub async fn authed(d: &Daemon, token: &str) -> Authed {
    cacheback::ClientBuilder::new(&d.endpoint())
        .token(token)
        .max_message_size(MAX_MESSAGE_BYTES)
        .connect()
        .await
        .expect("connect with a token")
        .raw()
}

/// A request with `authorization` set to exactly these bytes.
pub fn with_authorization<T>(message: T, value: &[u8]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(value).expect("a header value"),
    );
    req
}

/// A certificate authority, made now, and the files it signs into its directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// A certificate and key written to files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// As a tonic identity (mTLS).
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("cachebackd-pki-")
            .tempdir()
            .expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_pem = ca_params.self_signed(&ca_key).expect("self-sign CA").pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("write CA");
        Pki {
            dir,
            ca_key,
            ca_params,
            ca_pem,
        }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn issue(
        &self,
        file: &str,
        sans: Vec<String>,
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert_pem = params.signed_by(&key, &issuer).expect("sign").pem();
        let key_pem = key.serialize_pem();
        let cert = write(self.dir(), &format!("{file}.pem"), &cert_pem);
        let key = write(self.dir(), &format!("{file}.key"), &key_pem);
        Issued {
            cert,
            key,
            cert_pem,
            key_pem,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, file: &str) -> Issued {
        self.issue(
            file,
            vec!["localhost".into(), "127.0.0.1".into()],
            "cachebackd",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose DNS SAN is `name` (none if `name` is `None`), CN `cn`.
    pub fn client(&self, file: &str, san: Option<&str>, cn: &str) -> Issued {
        self.issue(
            file,
            san.map(|s| vec![s.to_owned()]).unwrap_or_default(),
            cn,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A client TLS config that trusts this CA, for `localhost`.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost")
    }
}

/// A TLS connection to the daemon's TCP listener.
pub async fn tls_channel(
    d: &Daemon,
    tls: ClientTlsConfig,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://localhost:{}", d.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
}

/// Polls the daemon's stderr until `count` lines hold `needle` (a reload is done when it
/// logs so); capped at [`WAIT`].
pub async fn logged(d: &Daemon, needle: &str, count: usize) {
    eventually(WAIT, || async {
        (d.stderr_log().matches(needle).count() >= count).then_some(())
    })
    .await
}

/// SIGHUP to the daemon.
pub fn sighup(d: &Daemon) {
    let pid = libc::pid_t::try_from(d.pid().expect("running")).expect("pid");
    // SAFETY: kill(2) on the daemon child process, which is still running.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}
