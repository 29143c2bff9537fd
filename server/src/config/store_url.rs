//! Where the items live (`--store URL`, `[store] url`): the embedded sled store under
//! `--data-dir`, or a Redis shared by a fleet of daemons (PROTOCOL.md, "Fleet"). Parsed
//! here, once, so that a bad URL stops the daemon at start with words that say what is
//! wrong, before anything is opened.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The store a daemon uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreUrl {
    /// sled, under `--data-dir` (the default).
    #[default]
    Sled,
    /// One Redis (or Valkey) server: `redis://HOST:PORT[/DB]`, or `rediss://` for TLS.
    Redis {
        /// The URL as given (it may carry a user and password).
        url: String,
        /// `HOST:PORT`, for messages (never the password).
        addr: String,
    },
    /// A Redis Cluster: `redis+cluster://HOST:PORT[,HOST:PORT...]` (`rediss+cluster://`
    /// for TLS), any reachable node giving the others.
    Cluster {
        /// One `redis://` (or `rediss://`) URL per node given.
        nodes: Vec<String>,
        /// The nodes' `HOST:PORT`, for messages.
        addrs: Vec<String>,
    },
}

impl StoreUrl {
    /// Whether a fleet shares this store (anything but sled).
    pub fn is_fleet(&self) -> bool {
        !matches!(self, StoreUrl::Sled)
    }

    /// What messages name the store by: `sled`, `redis at HOST:PORT`, `redis cluster at ...`.
    pub fn describe(&self) -> String {
        match self {
            StoreUrl::Sled => "sled".into(),
            StoreUrl::Redis { addr, .. } => format!("redis at {addr}"),
            StoreUrl::Cluster { addrs, .. } => format!("redis cluster at {}", addrs.join(",")),
        }
    }
}

const EXAMPLES: &str = "expected `sled`, `redis://HOST:PORT[/DB]`, `rediss://HOST:PORT[/DB]` or \
                        `redis+cluster://HOST:PORT[,HOST:PORT...]`";

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "sled" {
            return Ok(StoreUrl::Sled);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| format!("store URL {s:?} has no scheme: {EXAMPLES}"))?;
        match scheme {
            "redis" | "rediss" => {
                // `#insecure` (the redis crate's: TLS without verifying the server) is kept.
                let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
                let (_, hostport, db) = split_authority(rest, s)?;
                if let Some(db) = db {
                    db.parse::<u32>().map_err(|_| {
                        format!("store URL {s:?}: database {db:?} is not a number (e.g. redis://127.0.0.1:6379/0)")
                    })?;
                }
                let addr = host_port(hostport, s)?;
                Ok(StoreUrl::Redis {
                    url: s.to_string(),
                    addr,
                })
            }
            "redis+cluster" | "rediss+cluster" => {
                let plain = scheme.trim_end_matches("+cluster");
                let (auth, hosts, db) = split_authority(rest, s)?;
                if db.is_some_and(|d| d != "0") {
                    return Err(format!(
                        "store URL {s:?}: a Redis Cluster has only database 0"
                    ));
                }
                let mut nodes = Vec::new();
                let mut addrs = Vec::new();
                for host in hosts.split(',') {
                    let addr = host_port(host, s)?;
                    let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
                    nodes.push(format!("{plain}://{auth}{addr}"));
                    addrs.push(addr);
                }
                Ok(StoreUrl::Cluster { nodes, addrs })
            }
            other => Err(format!(
                "store URL {s:?} has the unknown scheme {other:?}: {EXAMPLES}"
            )),
        }
    }
}

/// `[user:pass@]hosts[/db]` → (auth, hosts, db).
fn split_authority<'a>(
    rest: &'a str,
    whole: &str,
) -> Result<(Option<&'a str>, &'a str, Option<&'a str>), String> {
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let (hosts, db) = match rest.split_once('/') {
        Some((hosts, "")) => (hosts, None),
        Some((hosts, db)) => (hosts, Some(db)),
        None => (rest, None),
    };
    if hosts.is_empty() {
        return Err(format!("store URL {whole:?} names no host: {EXAMPLES}"));
    }
    Ok((auth, hosts, db))
}

/// `HOST:PORT` (the port defaults to 6379), checked.
fn host_port(host: &str, whole: &str) -> Result<String, String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, port),
        None => (host, "6379"),
    };
    if name.is_empty() {
        return Err(format!("store URL {whole:?} names no host: {EXAMPLES}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("store URL {whole:?}: port {port:?} is not a port number"))?;
    Ok(format!("{name}:{port}"))
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sled => f.write_str("sled"),
            StoreUrl::Redis { url, .. } => f.write_str(url),
            StoreUrl::Cluster { nodes, addrs } => {
                let tls = nodes.first().is_some_and(|n| n.starts_with("rediss"));
                let scheme = if tls {
                    "rediss+cluster"
                } else {
                    "redis+cluster"
                };
                write!(f, "{scheme}://{}", addrs.join(","))
            }
        }
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[store]` table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where the items live.
    pub url: StoreUrl,
}

impl StoreConfig {
    /// Whether nothing was set (the table is then not written out).
    pub fn is_unset(&self) -> bool {
        self.url == StoreUrl::Sled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_bad_ones_say_why() {
        assert_eq!("sled".parse::<StoreUrl>(), Ok(StoreUrl::Sled));
        let StoreUrl::Redis { addr, .. } = "redis://127.0.0.1:6390/2".parse().unwrap() else {
            panic!("not redis");
        };
        assert_eq!(addr, "127.0.0.1:6390");
        let StoreUrl::Cluster { nodes, addrs } = "redis+cluster://a:1,b:2".parse().unwrap() else {
            panic!("not a cluster");
        };
        assert_eq!(nodes, ["redis://a:1", "redis://b:2"]);
        assert_eq!(addrs, ["a:1", "b:2"]);
        for (bad, says) in [
            ("mysql://x:1", "unknown scheme"),
            ("redis://", "names no host"),
            ("redis://h:port", "not a port number"),
            ("redis://h:1/x", "not a number"),
            ("redis+cluster://a:1,", "names no host"),
            ("redis+cluster://a:1/3", "only database 0"),
            ("127.0.0.1:6379", "no scheme"),
        ] {
            let e = bad.parse::<StoreUrl>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
