//! The security settings as a whole — the principals of `[auth]` and the TLS files — as the
//! daemon loads them at start, `check-config` verifies them, and SIGHUP reloads them.
//!
//! A reload re-reads the config file (the flags still win) and builds everything anew
//! before it swaps anything in: principals and the TLS config change together or not at
//! all, and a bad file keeps the old settings in force, with the reason in the log. Open
//! connections are untouched (they keep the TLS session they made); new ones, and every
//! new call, see the new settings.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::rustls::ServerConfig;

pub use crate::auth::token::{gen_token_main, hash_token_main};
use crate::auth::{Auth, Principals};
use crate::config::{Config, ConfigError};
use crate::shutdown::Shutdown;
use crate::tls::{self, TlsError};

/// The security settings, built and checked.
pub struct Security {
    /// Who may call.
    pub(crate) principals: Principals,
    /// The TLS config of the TCP listeners, if TLS is on.
    pub(crate) tls: Option<Arc<ServerConfig>>,
}

/// Builds the security settings of `config`, reading the TLS files; the error names the
/// key and, if it came from `file`, its line.
pub fn load(config: &Config, file: Option<&Path>) -> Result<Security, String> {
    let principals = Principals::build(&config.auth).map_err(|e| match file {
        Some(path) => format!("config file {}: {e}", path.display()),
        None => e,
    })?;
    let tls = tls::server_config(&config.tls).map_err(|e| describe_tls(&e, config, file))?;
    Ok(Security { principals, tls })
}

/// Warns when bearer tokens would cross the network in the clear: a principal has tokens,
/// TLS is off, and a TCP listener is not on loopback.
pub(crate) fn warn_if_tokens_in_plaintext(config: &Config) {
    let tokens = config
        .auth
        .principals
        .iter()
        .any(|p| !p.token_sha256.is_empty());
    if !tokens || config.tls.is_enabled() {
        return;
    }
    for addr in &config.listen {
        if let crate::config::ListenAddr::Tcp(a) = addr {
            if !a.ip().is_loopback() {
                tracing::warn!(listen = %a, "bearer tokens will travel in plaintext: serve TLS ([tls]) on this listener");
            }
        }
    }
}

/// Where a TLS error is: the line of the key in the file, if the file gave the value;
/// else the flag that did.
fn describe_tls(e: &TlsError, config: &Config, file: Option<&Path>) -> String {
    let Some(key) = e.key() else {
        return e.to_string();
    };
    let given = match key {
        "cert" => &config.tls.cert,
        "key" => &config.tls.key,
        _ => &config.tls.client_ca,
    };
    let line = file.and_then(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        let spans: Spans = toml::from_str(&text).ok()?;
        let t = spans.tls?;
        let span = match key {
            "cert" => t.cert,
            "key" => t.key,
            _ => t.client_ca,
        }?;
        (given.as_deref() == Some(Path::new(span.get_ref()))).then(|| {
            let line = text[..span.span().start].matches('\n').count() + 1;
            (path.to_owned(), line)
        })
    });
    match line {
        Some((path, line)) => format!(
            "config file {}: line {line}: key `tls.{key}`: {e}",
            path.display()
        ),
        None if given.is_some() => format!("--tls-{}: {e}", key.replace('_', "-")),
        None => e.to_string(),
    }
}

/// Just the `[tls]` paths of a file, with where they are.
#[derive(Deserialize)]
struct Spans {
    tls: Option<TlsSpans>,
}

#[derive(Deserialize)]
struct TlsSpans {
    cert: Option<toml::Spanned<String>>,
    key: Option<toml::Spanned<String>>,
    client_ca: Option<toml::Spanned<String>>,
}

/// Reads the settings as at start: the file again (its path comes back too, for the
/// line numbers of errors), then the same flags.
pub type ReloadSource =
    Box<dyn Fn() -> Result<(Config, Option<std::path::PathBuf>), ConfigError> + Send + Sync>;

/// What SIGHUP reloads, and how to read the settings again.
pub(crate) struct Reloader {
    /// Reads the settings again.
    pub(crate) source: ReloadSource,
    /// Where the principals are swapped in.
    pub(crate) auth: Auth,
    /// Where the TLS config is swapped in, if TLS is on.
    pub(crate) tls: Option<tls::Current>,
}

impl Reloader {
    /// Listens for SIGHUP until the drain, reloading on each, in a task `shutdown` owns.
    /// The handler is installed before this returns, so a SIGHUP sent once the daemon says
    /// it is ready never kills it.
    pub(crate) fn spawn(self, shutdown: &Shutdown) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: no reloads");
                return;
            }
        };
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.draining() => return,
                    r = hup.recv() => if r.is_none() { return },
                }
                match self.reload() {
                    Ok(summary) => tracing::info!("SIGHUP: reloaded {summary}"),
                    Err(why) => tracing::error!(
                        "SIGHUP: reload failed, the previous principals and TLS files stay in force: {why}"
                    ),
                }
            }
        });
    }

    fn reload(&self) -> Result<String, String> {
        let (config, file) = (self.source)().map_err(|e| e.to_string())?;
        let security = load(&config, file.as_deref())?;
        match (&self.tls, &security.tls) {
            (Some(_), None) => {
                return Err(
                    "TLS was on at start and the settings now turn it off: restart to do that"
                        .into(),
                )
            }
            (None, Some(_)) => {
                return Err(
                    "TLS was off at start and the settings now turn it on: restart to do that"
                        .into(),
                )
            }
            _ => {}
        }
        let summary = format!(
            "{} principals (auth {}){}",
            security.principals.len(),
            if security.principals.required() {
                "required"
            } else {
                "optional"
            },
            if security.tls.is_some() {
                ", TLS certificate and key"
            } else {
                ""
            }
        );
        self.auth.replace(security.principals);
        if let (Some(current), Some(new)) = (&self.tls, security.tls) {
            current.store(new);
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_and_tls_sections_are_read_and_printed_back() {
        let hash = crate::auth::token::TokenHash::of("t");
        let text = format!(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\n[auth]\nrequired = true\n\
             [[auth.principal]]\nname = \"web\"\ntoken_sha256 = [\"{hash}\"]\n\
             tls_names = [\"web.internal\"]\nunix_uids = [7]\nroles = [\"reader\", \"admin\"]\n\
             jobs = [\"tweets.*\"]\n"
        );
        let c = Config::from_toml(&text).unwrap();
        assert!(c.auth.required);
        assert_eq!(c.auth.principals.len(), 1);
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.tls.client_ca, None);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
        let p = Principals::build(&c.auth).unwrap();
        assert_eq!(p.by_token("t").map(|p| p.name()), Some("web"));
    }

    #[test]
    fn a_tls_file_error_names_its_flag_when_no_file_gave_it() {
        let mut c = Config::default();
        c.tls.cert = Some("/nonexistent/c.pem".into());
        c.tls.key = Some("/nonexistent/k.pem".into());
        let e = load(&c, None).err().unwrap();
        assert!(
            e.starts_with("--tls-cert: tls.cert /nonexistent/c.pem:"),
            "{e}"
        );
        c.tls.cert = None;
        let e = load(&c, None).err().unwrap();
        assert!(e.contains("tls.cert is required with tls.key"), "{e}");
    }
}
