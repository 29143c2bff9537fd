//! How a client proves who it is: a bearer token on every call, TLS (an `https://` URL)
//! with the CA that signed the daemon's certificate, and a client certificate for mTLS.
//! All of it is read from the environment by default, as every standard client does
//! (PROTOCOL.md, "Security"), so that an app server is configured without code changes.
//!
//! A token is a password: it is never sent in plaintext to anything but this machine
//! (loopback TCP or a Unix socket) unless the caller says so with
//! [`ClientBuilder::allow_plaintext_token`](crate::ClientBuilder::allow_plaintext_token).

use std::net::IpAddr;
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::Error;

/// The bearer token.
pub const TOKEN_ENV: &str = "CACHEBACKD_TOKEN";
/// A PEM bundle of the CAs to verify the daemon's certificate with.
pub const TLS_CA_ENV: &str = "CACHEBACKD_TLS_CA";
/// The client certificate (PEM) for mTLS.
pub const TLS_CERT_ENV: &str = "CACHEBACKD_TLS_CERT";
/// The client certificate's private key (PEM) for mTLS.
pub const TLS_KEY_ENV: &str = "CACHEBACKD_TLS_KEY";

/// Adds `authorization: Bearer <token>` to every call (the header is marked sensitive, so
/// it is kept out of debug output).
#[derive(Clone, Debug, Default)]
pub struct CallCredentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl CallCredentials {
    /// Sends `token`; fails if it cannot travel as gRPC metadata (visible ASCII only).
    /// The error never shows the token.
    ///
    /// ```
    /// let credentials = cacheback::CallCredentials::bearer("s3cret").unwrap();
    /// ```
    pub fn bearer(token: &str) -> Result<CallCredentials, Error> {
        let refused = || Error::Credentials {
            url: String::new(),
            reason: "a token must be visible ASCII without spaces (as gen-token makes them)".into(),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refused());
        }
        let mut value: MetadataValue<Ascii> =
            format!("Bearer {token}").parse().map_err(|_| refused())?;
        value.set_sensitive(true);
        Ok(CallCredentials {
            authorization: Some(value),
        })
    }

    pub(crate) fn for_url(token: Option<&str>, url: &str) -> Result<CallCredentials, Error> {
        match token {
            None => Ok(CallCredentials::default()),
            Some(t) => CallCredentials::bearer(t).map_err(|e| match e {
                Error::Credentials { reason, .. } => Error::Credentials {
                    url: url.to_owned(),
                    reason,
                },
                other => other,
            }),
        }
    }
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.authorization {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// TLS settings of a client: the CA bundle that verifies the daemon (default: the
/// system's roots), the client certificate for mTLS, the name to verify (default: the
/// URL's host).
///
/// ```no_run
/// # async fn demo() -> Result<(), cacheback::Error> {
/// let tls = cacheback::TlsConfig::new()
///     .ca_pem(std::fs::read("/etc/cachebackd/ca.pem").unwrap())
///     .identity_pem(
///         std::fs::read("/etc/web/client.pem").unwrap(),
///         std::fs::read("/etc/web/client.key").unwrap(),
///     );
/// let client = cacheback::Client::builder("https://cache.internal:7070").tls(tls).connect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

/// Shows which settings are there, never the private key.
impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "(set)"))
            .field("identity", &self.identity.as_ref().map(|_| "(set)"))
            .field("domain", &self.domain)
            .finish()
    }
}

/// A bearer token, kept out of `Debug` output.
#[derive(Clone)]
pub(crate) struct Token(pub(crate) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl TlsConfig {
    /// No CA (the system's roots), no client certificate.
    pub fn new() -> TlsConfig {
        TlsConfig::default()
    }

    /// Verify the daemon with these CA certificates (PEM) instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> TlsConfig {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this certificate and key (PEM) to the daemon (mTLS).
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> TlsConfig {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Verify the daemon's certificate for this name instead of the URL's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> TlsConfig {
        self.domain = Some(name.into());
        self
    }

    /// The settings `CACHEBACKD_TLS_CA`, `CACHEBACKD_TLS_CERT` and `CACHEBACKD_TLS_KEY`
    /// name (files, read now); `None` if none is set.
    pub fn from_env() -> Result<Option<TlsConfig>, Error> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let (ca, cert, key) = (var(TLS_CA_ENV), var(TLS_CERT_ENV), var(TLS_KEY_ENV));
        if ca.is_none() && cert.is_none() && key.is_none() {
            return Ok(None);
        }
        let read = |name: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| Error::Tls {
                reason: format!("{name}={}: {e}", path.display()),
            })
        };
        let mut tls = TlsConfig::new();
        if let Some(ca) = &ca {
            tls = tls.ca_pem(read(TLS_CA_ENV, ca)?);
        }
        match (&cert, &key) {
            (Some(c), Some(k)) => {
                tls = tls.identity_pem(read(TLS_CERT_ENV, c)?, read(TLS_KEY_ENV, k)?)
            }
            (None, None) => {}
            _ => {
                return Err(Error::Tls {
                    reason: format!(
                        "{TLS_CERT_ENV} and {TLS_KEY_ENV} go together: set both or neither"
                    ),
                })
            }
        }
        Ok(Some(tls))
    }

    pub(crate) fn to_tonic(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_pem {
            Some(pem) => c.ca_certificate(Certificate::from_pem(pem)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// Whether `url` reaches only this machine: a Unix socket, `localhost` or a loopback IP.
pub(crate) fn is_local(url: &str) -> bool {
    if url.starts_with("unix:") {
        return true;
    }
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unix_sockets_and_loopback_addresses_are_local() {
        for url in [
            "unix:/run/c.sock",
            "http://127.0.0.1:7070",
            "http://127.8.0.1:7070",
            "http://localhost:7070",
            "http://[::1]:7070",
        ] {
            assert!(is_local(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:7070",
            "http://cache.internal:7070",
            "http://[::2]:1",
        ] {
            assert!(!is_local(url), "{url}");
        }
    }

    #[test]
    fn a_token_that_cannot_be_metadata_is_refused_without_showing_it() {
        let e = CallCredentials::for_url(Some("sécret"), "http://127.0.0.1:1").unwrap_err();
        assert!(!e.to_string().contains("sécret"), "{e}");
    }
}
