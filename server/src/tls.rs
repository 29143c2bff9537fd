//! TLS on the TCP listeners, with rustls.
//!
//! The crypto provider is `ring`, chosen on purpose and installed explicitly (never the
//! process default): it builds with a C compiler alone, where aws-lc-rs also wants cmake
//! and takes minutes longer on a 2-core machine, and its AES-GCM and ChaCha20 are as fast
//! as the transport needs (docs/BENCHMARKS.md measures what TLS costs). Naming the
//! provider also means no other crate that enables another one can change or break it.
//!
//! The daemon terminates TLS itself instead of through tonic's `ServerTlsConfig`, for two
//! reasons: SIGHUP swaps the certificate and key (a new [`ServerConfig`] for new
//! connections; open ones keep theirs), and the client certificate's names are read once
//! per connection, at the handshake, rather than on every call.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take over its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[tls]` table and the `--tls-*` flags: PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The server's certificate chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The server's private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The CA bundle that client certificates must chain to (mTLS); none: no client
    /// certificates are asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether TLS is configured at all.
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.client_ca.is_some()
    }

    /// Whether nothing of TLS is set (then `[tls]` is left out of what check-config prints).
    pub fn is_unset(&self) -> bool {
        !self.is_enabled()
    }
}

/// Why TLS cannot be set up from the files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file is missing from the settings.
    #[error("tls.{missing} is required with tls.{given}")]
    Incomplete {
        /// The key that is missing.
        missing: &'static str,
        /// The key that needs it.
        given: &'static str,
    },
    /// A file cannot be read or holds no usable PEM.
    #[error("tls.{key} {}: {why}", path.display())]
    File {
        /// The key (`cert`, `key`, `client_ca`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The files do not make a TLS configuration (the key does not fit the certificate).
    #[error("tls.cert and tls.key do not go together: {0}")]
    Mismatch(String),
}

impl TlsError {
    /// The key of the file the error is about, if one.
    pub(crate) fn key(&self) -> Option<&'static str> {
        match self {
            TlsError::File { key, .. } => Some(key),
            TlsError::Incomplete { missing, .. } => Some(missing),
            TlsError::Mismatch(_) => Some("key"),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config from the files (`None` if TLS is not configured). HTTP/2 is the
/// only protocol offered by ALPN: gRPC clients (grpc-core's among them) insist on it.
pub(crate) fn server_config(files: &TlsFiles) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    if !files.is_enabled() {
        return Ok(None);
    }
    let (cert, key) = match (&files.cert, &files.key) {
        (Some(c), Some(k)) => (c, k),
        (None, _) => {
            return Err(TlsError::Incomplete {
                missing: "cert",
                given: if files.key.is_some() {
                    "key"
                } else {
                    "client_ca"
                },
            })
        }
        (Some(_), None) => {
            return Err(TlsError::Incomplete {
                missing: "key",
                given: "cert",
            })
        }
    };
    let chain = certificates("cert", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        key: "key",
        path: key.clone(),
        why: pem_error(e),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates("client_ca", ca)? {
                roots.add(c).map_err(|e| TlsError::File {
                    key: "client_ca",
                    path: ca.clone(),
                    why: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
                .build()
                .map_err(|e| TlsError::File {
                    key: "client_ca",
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::File {
        key,
        path: path.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_error(e)))?;
    if certs.is_empty() {
        return Err(err("holds no PEM CERTIFICATE".into()));
    }
    Ok(certs)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => {
            "holds no PEM item of the expected kind".into()
        }
        other => format!("not valid PEM: {other:?}"),
    }
}

/// The server config in force, swapped whole by a reload.
pub(crate) type Current = Arc<ArcSwap<ServerConfig>>;

/// What the auth layer learns of a TLS connection: the peer's address and, with mTLS, the
/// names of its verified certificate (its DNS SANs, else its CN).
#[derive(Debug, Clone)]
pub(crate) struct TlsPeer {
    /// The daemon's end of the connection (with `remote`, how `connections` knows it).
    pub(crate) local: Option<SocketAddr>,
    /// The peer's address.
    pub(crate) remote: Option<SocketAddr>,
    /// The certificate's names, if the client presented one.
    pub(crate) names: Option<Arc<[String]>>,
}

/// One TLS connection, carrying its [`TlsPeer`].
pub(crate) struct TlsConn<IO> {
    stream: TlsStream<IO>,
    peer: TlsPeer,
}

impl<IO> Connected for TlsConn<IO> {
    type ConnectInfo = TlsPeer;
    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The TLS connections of a listener's `accepted` TCP connections (bounded, with their idle
/// timeout, by `connections`), handshakes done, for tonic's `serve_with_incoming_shutdown`.
/// Each connection uses the config in force when it was accepted. Handshakes run side by
/// side (a slow client holds up no one) and end with the stream: when the server stops
/// reading it, the accept loop and its handshakes stop.
pub(crate) fn incoming<S, IO>(
    accepted: S,
    current: Current,
) -> ReceiverStream<Result<TlsConn<IO>, io::Error>>
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Connected<ConnectInfo = TcpConnectInfo> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        let mut handshakes = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
                a = accepted.next() => a,
            };
            let tcp = match accepted {
                Some(Ok(tcp)) => tcp,
                // Accept errors are met with back-off where the connections are counted.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accepting a TCP connection failed");
                    continue;
                }
                None => return,
            };
            let info = tcp.connect_info();
            let (local, remote) = (info.local_addr(), info.remote_addr());
            let acceptor = TlsAcceptor::from(current.load_full());
            let tx = tx.clone();
            handshakes.spawn(async move {
                let shown = remote.map(|r| r.to_string()).unwrap_or_default();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let names = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(certificate_names);
                        let peer = TlsPeer {
                            local,
                            remote,
                            names,
                        };
                        let _ = tx.send(Ok(TlsConn { stream, peer })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(remote = %shown, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::info!(remote = %shown, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A certificate's DNS SANs, else its subject CN (what `tls_names` are matched against).
fn certificate_names(der: &CertificateDer<'_>) -> Arc<[String]> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Arc::from(Vec::new());
    };
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans.into();
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect::<Vec<_>>()
        .into()
}
