//! The one place that decides who is calling and what they may do: a tower layer in front
//! of every service. It reads the caller's credentials (the `authorization` metadata, the
//! client certificate's name, the Unix peer's uid), finds the principal, checks the role
//! the RPC needs, and either answers UNAUTHENTICATED / PERMISSION_DENIED itself or hands
//! the call on with an [`Access`] in its extensions. The services then only ask that
//! `Access` whether the job a message names is one the caller may use — the one thing a
//! layer cannot see without decoding the message (GetMany is checked item by item, a
//! RegisterJob stream on its Register).

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::future::{self, Either, Ready};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::Status;

use super::principals::{Principal, Principals, Role};
use crate::model::JobName;
use crate::tls::TlsPeer;

/// Why a call was refused: the `reason` label of `cachebackd_auth_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum DenyReason {
    /// Credentials are required and none were sent.
    no_credentials,
    /// Credentials were sent that are malformed or match no principal.
    bad_credentials,
    /// The principal lacks the role the RPC needs.
    missing_role,
    /// The principal's globs do not match the job.
    job_not_allowed,
}

impl DenyReason {
    const ALL: [DenyReason; 4] = [
        DenyReason::no_credentials,
        DenyReason::bad_credentials,
        DenyReason::missing_role,
        DenyReason::job_not_allowed,
    ];
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: DenyReason,
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Nothing: health is always open, so that probes work without secrets.
    Open,
    /// Any valid principal when auth is required (reflection, unknown paths).
    Principal,
    /// A role.
    Role(Role),
    /// The writer role over every job (InvalidateTags reaches items of any job).
    WriterOfEveryJob,
}

/// The rule of an RPC by its path, and its short name for logs and messages.
fn rule(path: &str) -> (&'static str, Need) {
    if let Some(method) = path.strip_prefix("/cacheback.v1.Cacheback/") {
        return match method {
            "Get" => ("Get", Need::Role(Role::Reader)),
            "GetMany" => ("GetMany", Need::Role(Role::Reader)),
            "Subscribe" => ("Subscribe", Need::Role(Role::Reader)),
            "Set" => ("Set", Need::Role(Role::Writer)),
            "Invalidate" => ("Invalidate", Need::Role(Role::Writer)),
            "Delete" => ("Delete", Need::Role(Role::Writer)),
            "InvalidateTags" => ("InvalidateTags", Need::WriterOfEveryJob),
            "RegisterJob" => ("RegisterJob", Need::Role(Role::Worker)),
            _ => ("an unknown Cacheback RPC", Need::Principal),
        };
    }
    if let Some(method) = path.strip_prefix("/cacheback.v1.CachebackAdmin/") {
        let name = match method {
            "ListJobs" => "ListJobs",
            "Stats" => "Stats",
            "InvalidateJob" => "InvalidateJob",
            "DeleteJob" => "DeleteJob",
            _ => "an admin RPC",
        };
        return (name, Need::Role(Role::Admin));
    }
    if path.starts_with("/grpc.health.v1.Health/") {
        return ("health", Need::Open);
    }
    if path.starts_with("/grpc.reflection.") {
        return ("reflection", Need::Principal);
    }
    ("an unknown RPC", Need::Principal)
}

/// The principals in force and the denial counters; cheap to clone. Its
/// [`Auth::replace`] is how a reload swaps in new principals (calls in flight keep the
/// set they started with).
#[derive(Clone, Debug)]
pub(crate) struct Auth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    principals: ArcSwap<Principals>,
    denied_family: Family<ReasonLabels, Counter>,
    denied: [Counter; 4],
}

impl Auth {
    /// Starts with `principals`.
    pub(crate) fn new(principals: Principals) -> Auth {
        let family = Family::<ReasonLabels, Counter>::default();
        let denied =
            DenyReason::ALL.map(|reason| family.get_or_create_owned(&ReasonLabels { reason }));
        Auth {
            shared: Arc::new(Shared {
                principals: ArcSwap::from_pointee(principals),
                denied_family: family,
                denied,
            }),
        }
    }

    /// Puts `principals` in force for every call from now on.
    pub(crate) fn replace(&self, principals: Principals) {
        self.shared.principals.store(Arc::new(principals));
    }

    /// Whether credentials are required now.
    pub(crate) fn required(&self) -> bool {
        self.shared.principals.load().required()
    }

    /// Registers `auth_denied` (`cachebackd_auth_denied_total{reason}`) in `registry`.
    pub(crate) fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "auth_denied",
            "Calls refused by authentication or authorization, by reason",
            self.shared.denied_family.clone(),
        );
    }

    /// The layer to put in front of the services.
    pub(crate) fn layer(&self) -> AuthLayer {
        AuthLayer { auth: self.clone() }
    }

    /// Counts and logs a refusal; the status to answer.
    fn deny(&self, denial: Denial) -> Status {
        self.shared.denied[denial.reason as usize].inc();
        tracing::warn!(
            principal = denial.principal.as_deref().unwrap_or("(anonymous)"),
            rpc = denial.rpc,
            job = denial.job.as_deref().unwrap_or(""),
            peer = denial.peer.as_deref().unwrap_or(""),
            reason = ?denial.reason,
            "call refused: {}",
            denial.message
        );
        match denial.reason {
            DenyReason::no_credentials | DenyReason::bad_credentials => {
                Status::unauthenticated(denial.message)
            }
            DenyReason::missing_role | DenyReason::job_not_allowed => {
                Status::permission_denied(denial.message)
            }
        }
    }

    /// Decides a call from its path, headers and connection: `Ok(None)` to pass it on as
    /// it is (health), `Ok(Some(access))` to pass it on with `access`, `Err` to refuse it.
    fn decide<B>(&self, req: &http::Request<B>) -> Result<Option<Access>, Status> {
        let (rpc, need) = rule(req.uri().path());
        if need == Need::Open {
            return Ok(None);
        }
        let principals = self.shared.principals.load();
        let refuse = |reason, principal: Option<&str>, message: String| {
            self.deny(Denial {
                reason,
                rpc,
                principal: principal.map(str::to_owned),
                job: None,
                peer: peer(req),
                message,
            })
        };
        let caller = match identify(&principals, req) {
            Ok(Some(p)) => p.clone(),
            Ok(None) if !principals.required() => {
                return Ok(Some(Access {
                    caller: None,
                    rpc,
                    auth: self.clone(),
                }))
            }
            Ok(None) => {
                return Err(refuse(
                    DenyReason::no_credentials,
                    None,
                    format!(
                        "{rpc} needs credentials: send `authorization: Bearer <token>`, a client \
                         certificate known to [auth], or call over a Unix socket as a known uid"
                    ),
                ))
            }
            Err(Unknown(message)) => {
                return Err(refuse(DenyReason::bad_credentials, None, message))
            }
        };
        let name = caller.name();
        match need {
            Need::Role(role) if !caller.has(role) => Err(refuse(
                DenyReason::missing_role,
                Some(name),
                format!("principal {name:?} lacks the role {role}, which {rpc} needs"),
            )),
            Need::WriterOfEveryJob if !caller.has(Role::Writer) => Err(refuse(
                DenyReason::missing_role,
                Some(name),
                format!("principal {name:?} lacks the role writer, which {rpc} needs"),
            )),
            Need::WriterOfEveryJob if !caller.every_job() => Err(refuse(
                DenyReason::job_not_allowed,
                Some(name),
                format!(
                    "principal {name:?} may use only the jobs {}, and {rpc} needs every job (jobs = [\"*\"])",
                    caller.jobs()
                ),
            )),
            _ => Ok(Some(Access {
                caller: Some(caller),
                rpc,
                auth: self.clone(),
            })),
        }
    }
}

/// Credentials that were sent but name no principal; the message never holds a token.
struct Unknown(String);

/// Who is calling: the bearer token if one is sent (it must be valid), else the client
/// certificate's name or the Unix peer's uid if a principal has it, else nobody.
fn identify<'p, B>(
    principals: &'p Principals,
    req: &http::Request<B>,
) -> Result<Option<&'p Arc<Principal>>, Unknown> {
    if let Some(value) = req.headers().get(http::header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Unknown("the authorization metadata is not `Bearer <token>`".into()))?;
        return principals
            .by_token(token)
            .map(Some)
            .ok_or_else(|| Unknown("the bearer token matches no principal".into()));
    }
    let ext = req.extensions();
    if let Some(tls) = ext.get::<TlsPeer>() {
        if let Some(names) = &tls.names {
            if let Some(p) = names.iter().find_map(|n| principals.by_tls_name(n)) {
                return Ok(Some(p));
            }
            if principals.required() {
                return Err(Unknown(format!(
                    "the client certificate (names: {}) matches no principal",
                    names.join(", ")
                )));
            }
        }
    }
    if let Some(uid) = ext
        .get::<UdsConnectInfo>()
        .and_then(|u| u.peer_cred)
        .map(|c| c.uid())
    {
        if let Some(p) = principals.by_uid(uid) {
            return Ok(Some(p));
        }
        if principals.required() {
            return Err(Unknown(format!("Unix peer uid {uid} matches no principal")));
        }
    }
    Ok(None)
}

/// The peer, for the log of a refusal.
fn peer<B>(req: &http::Request<B>) -> Option<String> {
    let ext = req.extensions();
    if let Some(t) = ext.get::<TlsPeer>() {
        return t.remote.map(|a| a.to_string());
    }
    if let Some(t) = ext.get::<TcpConnectInfo>() {
        return t.remote_addr().map(|a| a.to_string());
    }
    ext.get::<UdsConnectInfo>()
        .and_then(|u| u.peer_cred)
        .map(|c| format!("unix uid {} pid {:?}", c.uid(), c.pid()))
}

struct Denial {
    reason: DenyReason,
    rpc: &'static str,
    principal: Option<String>,
    job: Option<String>,
    peer: Option<String>,
    message: String,
}

/// What the layer decided a call may do, for the services to check the jobs it names.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    caller: Option<Arc<Principal>>,
    rpc: &'static str,
    auth: Auth,
}

impl Access {
    /// The access the auth layer attached to `req`. A call that reached a service without
    /// one is refused: the layer is missing, and the safe answer is no.
    pub(crate) fn of<T>(req: &tonic::Request<T>) -> Result<Access, Status> {
        req.extensions()
            .get::<Access>()
            .cloned()
            .ok_or_else(|| Status::internal("no access decision was made for this call"))
    }

    /// Whether the caller may use `job`, told to no one (no log, no count): for plans
    /// that must not reveal what `allow` would refuse.
    pub(crate) fn permits(&self, job: &JobName) -> bool {
        self.caller.as_ref().is_none_or(|p| p.may_use(job.as_str()))
    }

    /// Whether the caller may use `job` (PERMISSION_DENIED, counted and logged, if not).
    pub(crate) fn allow(&self, job: &JobName) -> Result<(), Status> {
        let job = job.as_str();
        match &self.caller {
            Some(p) if !p.may_use(job) => Err(self.auth.deny(Denial {
                reason: DenyReason::job_not_allowed,
                rpc: self.rpc,
                principal: Some(p.name().to_owned()),
                job: Some(job.to_owned()),
                peer: None,
                message: format!(
                    "principal {:?} may not use job {job:?} (its jobs: {})",
                    p.name(),
                    p.jobs()
                ),
            })),
            _ => Ok(()),
        }
    }
}

/// The tower layer of [`Auth`].
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    auth: Auth,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub(crate) struct AuthService<S> {
    inner: S,
    auth: Auth,
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<R>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.auth.decide(&req) {
            Ok(access) => {
                if let Some(access) = access {
                    req.extensions_mut().insert(access);
                }
                Either::Left(self.inner.call(req))
            }
            Err(status) => Either::Right(future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_contract_has_its_rule() {
        let cases = [
            ("/cacheback.v1.Cacheback/Get", Need::Role(Role::Reader)),
            ("/cacheback.v1.Cacheback/GetMany", Need::Role(Role::Reader)),
            (
                "/cacheback.v1.Cacheback/Subscribe",
                Need::Role(Role::Reader),
            ),
            ("/cacheback.v1.Cacheback/Set", Need::Role(Role::Writer)),
            (
                "/cacheback.v1.Cacheback/Invalidate",
                Need::Role(Role::Writer),
            ),
            ("/cacheback.v1.Cacheback/Delete", Need::Role(Role::Writer)),
            (
                "/cacheback.v1.Cacheback/InvalidateTags",
                Need::WriterOfEveryJob,
            ),
            (
                "/cacheback.v1.Cacheback/RegisterJob",
                Need::Role(Role::Worker),
            ),
            (
                "/cacheback.v1.CachebackAdmin/DeleteJob",
                Need::Role(Role::Admin),
            ),
            (
                "/cacheback.v1.CachebackAdmin/ListJobs",
                Need::Role(Role::Admin),
            ),
            ("/grpc.health.v1.Health/Check", Need::Open),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Need::Principal,
            ),
            ("/other.Service/Call", Need::Principal),
        ];
        for (path, need) in cases {
            assert_eq!(rule(path).1, need, "{path}");
        }
    }
}
