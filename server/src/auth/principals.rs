//! Who may call: the `[auth]` table of the config file, and the lookup built from it.
//!
//! A principal is known by any of its credentials — a bearer token (by its hash), the name
//! of a client certificate (mTLS), the uid of a Unix-socket peer — and holds roles that
//! apply to the jobs its globs match. The built [`Principals`] is immutable: a reload builds
//! a new one and swaps it in whole, so a call never sees half of an old and half of a new
//! set.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::glob::JobGlob;
use super::token::TokenHash;

/// What a principal may do. Each role allows a set of RPCs (PROTOCOL.md, "Security").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// Get, GetMany, Subscribe.
    Reader,
    /// Set, Invalidate, Delete; InvalidateTags with `jobs = ["*"]`.
    Writer,
    /// RegisterJob: answer the fetches of a job, i.e. decide what its readers get.
    Worker,
    /// Every CachebackAdmin RPC.
    Admin,
}

impl Role {
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Worker => "worker",
            Role::Admin => "admin",
        })
    }
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether a call without credentials is refused. Off by default: then an anonymous
    /// call may do everything, and a credential that is sent must still be valid.
    #[serde(default)]
    pub(crate) required: bool,
    /// The principals (`[[auth.principal]]`).
    #[serde(default, rename = "principal", skip_serializing_if = "Vec::is_empty")]
    pub(crate) principals: Vec<PrincipalConfig>,
}

/// One `[[auth.principal]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PrincipalConfig {
    /// How logs and error messages name it.
    pub(crate) name: PrincipalName,
    /// The sha256 of each bearer token it may use (several, to rotate without a gap).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) token_sha256: Vec<TokenHash>,
    /// Client-certificate names (DNS SAN, else CN) that identify it over mTLS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tls_names: Vec<TlsName>,
    /// Uids of Unix-socket peers that it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) unix_uids: Vec<u32>,
    /// What it may do.
    #[serde(default)]
    pub(crate) roles: Vec<Role>,
    /// Which jobs its roles apply to.
    #[serde(default = "every_job")]
    pub(crate) jobs: Vec<JobGlob>,
}

fn every_job() -> Vec<JobGlob> {
    vec![JobGlob::any()]
}

/// A principal's name: not empty, printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PrincipalName(String);

impl std::str::FromStr for PrincipalName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().any(char::is_control) {
            return Err(format!(
                "{s:?} is not a principal name: write a non-empty name without control characters"
            ));
        }
        Ok(PrincipalName(s.to_owned()))
    }
}

/// A client-certificate name, compared without regard to ASCII case (as DNS names are).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TlsName(String);

impl TlsName {
    /// The name in lower case.
    pub(crate) fn new(name: &str) -> TlsName {
        TlsName(name.to_ascii_lowercase())
    }
}

impl std::str::FromStr for TlsName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.chars().any(char::is_control) {
            return Err(format!(
                "{s:?} is not a certificate name: write the DNS SAN or CN the client presents"
            ));
        }
        Ok(TlsName::new(s))
    }
}

/// Serde through `FromStr` and `Display`, so that every bad value is refused with its
/// key and line by the TOML reader.
macro_rules! text_serde {
    ($($t:ty => $show:expr),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let show: fn(&$t) -> String = $show;
                s.serialize_str(&show(self))
            }
        }
    )*};
}

text_serde! {
    TokenHash => |h| h.to_string(),
    JobGlob => |g| g.to_string(),
    PrincipalName => |n| n.0.clone(),
    TlsName => |n| n.0.clone(),
}

/// A principal, as the daemon checks calls against it.
#[derive(Debug)]
pub(crate) struct Principal {
    name: String,
    roles: u8,
    jobs: Vec<JobGlob>,
}

impl Principal {
    /// Its name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether it holds `role`.
    pub(crate) fn has(&self, role: Role) -> bool {
        self.roles & role.bit() != 0
    }

    /// Whether its globs match `job`.
    pub(crate) fn may_use(&self, job: &str) -> bool {
        self.jobs.iter().any(|g| g.matches(job))
    }

    /// Whether it may use every job, present and future (`jobs = ["*"]`).
    pub(crate) fn every_job(&self) -> bool {
        self.jobs.iter().any(JobGlob::is_any)
    }

    /// Its globs, for messages.
    pub(crate) fn jobs(&self) -> String {
        let globs: Vec<_> = self.jobs.iter().map(ToString::to_string).collect();
        globs.join(", ")
    }
}

/// Every principal, indexed by credential.
#[derive(Debug, Default)]
pub(crate) struct Principals {
    required: bool,
    tokens: Vec<(TokenHash, Arc<Principal>)>,
    tls_names: HashMap<TlsName, Arc<Principal>>,
    uids: HashMap<u32, Arc<Principal>>,
    count: usize,
}

impl Principals {
    /// Builds the lookup; refuses a credential given to two principals, or a name used
    /// twice, since either would make who is calling ambiguous.
    pub(crate) fn build(c: &AuthConfig) -> Result<Principals, String> {
        let mut out = Principals {
            required: c.required,
            count: c.principals.len(),
            ..Default::default()
        };
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, p) in c.principals.iter().enumerate() {
            let at = |key: &str| format!("auth.principal[{i}] ({:?}): key `{key}`", p.name.0);
            if let Some(first) = names.insert(&p.name.0, i) {
                return Err(format!(
                    "{}: the name is already used by auth.principal[{first}]",
                    at("name")
                ));
            }
            let principal = Arc::new(Principal {
                name: p.name.0.clone(),
                roles: p.roles.iter().fold(0, |bits, r| bits | r.bit()),
                jobs: p.jobs.clone(),
            });
            for hash in &p.token_sha256 {
                if let Some((_, other)) = out
                    .tokens
                    .iter()
                    .find(|(h, o)| h == hash && o.name != principal.name)
                {
                    return Err(format!(
                        "{}: {hash} is already a token of principal {:?}",
                        at("token_sha256"),
                        other.name
                    ));
                }
                out.tokens.push((*hash, principal.clone()));
            }
            for name in &p.tls_names {
                if let Some(other) = out.tls_names.insert(name.clone(), principal.clone()) {
                    if other.name != principal.name {
                        return Err(format!(
                            "{}: {:?} already names principal {:?}",
                            at("tls_names"),
                            name.0,
                            other.name
                        ));
                    }
                }
            }
            for uid in &p.unix_uids {
                if let Some(other) = out.uids.insert(*uid, principal.clone()) {
                    if other.name != principal.name {
                        return Err(format!(
                            "{}: uid {uid} is already principal {:?}",
                            at("unix_uids"),
                            other.name
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether calls without credentials are refused.
    pub(crate) fn required(&self) -> bool {
        self.required
    }

    /// How many principals there are.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The principal whose token this is. Every stored hash is compared, each in constant
    /// time, so the answer takes as long whichever (if any) matches.
    pub(crate) fn by_token(&self, token: &str) -> Option<&Arc<Principal>> {
        let presented = TokenHash::of(token);
        let mut found = None;
        for (hash, principal) in &self.tokens {
            if hash.ct_eq(&presented) {
                found = Some(principal);
            }
        }
        found
    }

    /// The principal a client certificate's name stands for.
    pub(crate) fn by_tls_name(&self, name: &str) -> Option<&Arc<Principal>> {
        self.tls_names.get(&TlsName::new(name))
    }

    /// The principal a Unix peer's uid stands for.
    pub(crate) fn by_uid(&self, uid: u32) -> Option<&Arc<Principal>> {
        self.uids.get(&uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_text: &str) -> Result<Principals, String> {
        let c: AuthConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Principals::build(&c)
    }

    #[test]
    fn principals_are_found_by_each_credential() {
        let hash = TokenHash::of("s3cret");
        let p = auth(&format!(
            "required = true\n[[principal]]\nname = \"web\"\ntoken_sha256 = [\"{hash}\"]\n\
             tls_names = [\"Web.Internal\"]\nunix_uids = [1000]\nroles = [\"reader\"]\njobs = [\"tweets.*\"]\n"
        ))
        .unwrap();
        assert!(p.required());
        let web = p.by_token("s3cret").unwrap();
        assert_eq!(web.name(), "web");
        assert!(web.has(Role::Reader) && !web.has(Role::Writer));
        assert!(web.may_use("tweets.user") && !web.may_use("users") && !web.every_job());
        assert!(p.by_token("s3cre").is_none());
        assert_eq!(p.by_tls_name("web.internal").unwrap().name(), "web");
        assert_eq!(p.by_uid(1000).unwrap().name(), "web");
        assert!(p.by_uid(0).is_none());
    }

    #[test]
    fn a_credential_of_two_principals_is_refused() {
        let hash = TokenHash::of("x");
        let e = auth(&format!(
            "[[principal]]\nname = \"a\"\ntoken_sha256 = [\"{hash}\"]\n\
             [[principal]]\nname = \"b\"\ntoken_sha256 = [\"{hash}\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("already a token of principal \"a\""), "{e}");
        let e = auth("[[principal]]\nname = \"a\"\n[[principal]]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("already used"), "{e}");
        let e = auth("[[principal]]\nname = \"a\"\nroles = [\"admn\"]\n").unwrap_err();
        assert!(e.contains("unknown variant `admn`"), "{e}");
    }
}
