//! The connection to cachebackd, and the process-wide default used by `#[cacheback]`.

use std::{
    fmt,
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use cachebackd_proto::v1::cacheback_client::CachebackClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::credentials::{is_local, CallCredentials, TlsConfig, Token, TOKEN_ENV};
use crate::daemons::{is_daemon_down, random_start, split_urls, Daemon, Daemons};
use crate::near::{NearCache, NearCacheStats};
use crate::{Error, Job, JobHandle, Result};

/// What every gRPC client of a [`Client`] runs on: its HTTP/2 channel, with the bearer
/// token (if any) added to each call. Build other services' clients on it with
/// [`Client::transport`].
pub type Transport = InterceptedService<Channel, CallCredentials>;

/// The daemon's default address, used when neither [`set_default_client`] nor
/// `CACHEBACKD_URL` says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// The environment variable read for the default client's URL (or several, separated by
/// commas: the daemons of a fleet).
pub const URL_ENV: &str = "CACHEBACKD_URL";

/// The shared client default (16 MiB): a default daemon's largest message, with margin.
const DEFAULT_MAX_MESSAGE_SIZE: usize = cachebackd_proto::wire::CLIENT_MAX_MESSAGE_BYTES;

/// A connection to cachebackd: cheap to clone (clones share one HTTP/2 connection),
/// and reconnecting by itself when the daemon restarts.
///
/// Given several daemons (a fleet), it uses one at a time, picked at random, and moves
/// to the next when that one is down; see [`Client::connect_any`].
///
/// ```no_run
/// # async fn demo() -> Result<(), cacheback::Error> {
/// let client = cacheback::Client::connect("http://127.0.0.1:7070").await?;
/// let over_a_socket = cacheback::Client::connect("unix:/run/cachebackd.sock").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    daemons: Arc<Daemons>,
    timeout: Option<Duration>,
    /// FRESH items served in-process, if the builder asked for it.
    near: Option<Arc<NearCache>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url())
            .field("urls", &self.urls())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `http://host:port` or `unix:/path/to.sock` with the defaults of
    /// [`ClientBuilder`]; fails at once if the daemon cannot be reached.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cacheback::Error> {
    /// let client = cacheback::Client::connect("http://127.0.0.1:7070").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Client> {
        Client::builder(url).connect().await
    }

    /// Connects to one of several daemons (a fleet sharing one store): it picks one at
    /// random (so that app servers given the same list spread over the fleet), connects
    /// to the next in the list if that one cannot be reached, and fails only if none can
    /// ([`Error::NoDaemon`], naming every URL tried). Later, a call that finds its daemon
    /// down (connection refused or broken, not a status the daemon answered) moves the
    /// client to the next daemon and is sent there; every call of a reader (Get, GetMany,
    /// Set, Invalidate, Delete, InvalidateTags) may be sent twice, as the contract makes
    /// each of them idempotent. The credentials apply to every URL.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cacheback::Error> {
    /// let client = cacheback::Client::connect_any(["http://10.0.0.7:7070", "http://10.0.0.8:7070"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_any<I, S>(urls: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::new_any(urls).connect().await
    }

    /// Like [`Client::connect`], but connects on first use: for an app server that may
    /// start before the daemon. Must be called inside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = cacheback::Client::connect_lazy("unix:/run/cachebackd.sock").unwrap();
    /// assert_eq!(client.url(), "unix:/run/cachebackd.sock");
    /// # }
    /// ```
    pub fn connect_lazy(url: &str) -> Result<Client> {
        Client::builder(url).connect_lazy()
    }

    /// A builder to tune timeouts, keepalive and message limits; `url` is one URL or
    /// several separated by commas (see [`Client::connect_any`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cacheback::Error> {
    /// use std::time::Duration;
    /// let client = cacheback::Client::builder("http://127.0.0.1:7070")
    ///     .timeout(Duration::from_secs(90))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// A handle to read and write the items of `job` (cacheback's `job.get`,
    /// `job.set`, `job.invalidate`, `job.delete`).
    ///
    /// ```no_run
    /// # use cacheback::Job;
    /// # struct UserTweets;
    /// # impl Job for UserTweets {
    /// #     type Args = String; type Output = Vec<String>; type Error = std::convert::Infallible;
    /// #     const NAME: &'static str = "tweets";
    /// #     async fn fetch(&self, _: String) -> Result<Vec<String>, Self::Error> { Ok(vec![]) }
    /// # }
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// let tweets = client.job(&UserTweets).get(&"bob".to_string()).await?;
    /// # Ok(()) }
    /// ```
    pub fn job<'j, J: Job>(&self, job: &'j J) -> JobHandle<'j, J> {
        JobHandle::new(self.clone(), job)
    }

    /// Marks every item, of any job, that carries one of `tags` and was stored until now
    /// stale (see [`Job::tags`]): each is served stale and refreshed on its next read, so
    /// a tag on a million items causes no stampede. Returns the mark: items stored at or
    /// before it are stale. 1 to 100 tags, each spelled like a job name.
    ///
    /// ```no_run
    /// # async fn demo(client: cacheback::Client) -> Result<(), cacheback::Error> {
    /// // Bob renamed himself: everything showing his name refreshes on its next read.
    /// client.invalidate_tags(&["user:bob"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_tags(&self, tags: &[&str]) -> Result<std::time::SystemTime> {
        let request = cachebackd_proto::v1::InvalidateTagsRequest {
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        let tags_shown = tags.join(",");
        let response = self
            .unary(
                "InvalidateTags",
                &tags_shown,
                request,
                |mut raw, r| async move { raw.invalidate_tags(r).await },
            )
            .await?;
        response
            .invalidated_before
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .ok_or_else(|| Error::Protocol("InvalidateTags answered without a mark".to_owned()))
    }

    /// The generated gRPC client on the same connection, with the same message limits,
    /// for what the typed API does not cover.
    ///
    /// ```no_run
    /// # async fn demo(client: cacheback::Client) -> Result<(), tonic::Status> {
    /// use cachebackd_proto::v1::DeleteRequest;
    /// let request = DeleteRequest { job: "tweets".into(), args: br#"["bob"]"#.to_vec() };
    /// let found = client.raw().delete(request).await?.into_inner().found;
    /// # Ok(()) }
    /// ```
    ///
    /// With several daemons this is the one in use now, and calls made on it do not fail
    /// over.
    pub fn raw(&self) -> CachebackClient<Transport> {
        self.daemon().raw.clone()
    }

    /// The channel with this client's credentials, for the clients of other services on
    /// the same connection (`CachebackAdmin`, gRPC health).
    ///
    /// ```no_run
    /// # async fn demo(client: cacheback::Client) -> Result<(), tonic::Status> {
    /// use cachebackd_proto::v1::{cacheback_admin_client::CachebackAdminClient, ListJobsRequest};
    /// let jobs = CachebackAdminClient::new(client.transport()).list_jobs(ListJobsRequest {}).await?;
    /// # Ok(()) }
    /// ```
    pub fn transport(&self) -> Transport {
        self.daemon().transport.clone()
    }

    /// The URL of the daemon this client uses now (with several, it changes when the
    /// client fails over).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = cacheback::Client::connect_lazy("http://127.0.0.1:7070").unwrap();
    /// assert_eq!(client.url(), "http://127.0.0.1:7070");
    /// # }
    /// ```
    pub fn url(&self) -> &str {
        &self.daemons.get(self.daemons.current()).url
    }

    /// Every daemon's URL, in the order given.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = cacheback::Client::connect_lazy("http://127.0.0.1:7070,http://127.0.0.1:7071").unwrap();
    /// assert_eq!(client.urls(), ["http://127.0.0.1:7070", "http://127.0.0.1:7071"]);
    /// # }
    /// ```
    pub fn urls(&self) -> Vec<&str> {
        self.daemons.all().iter().map(|d| &*d.url).collect()
    }

    fn daemon(&self) -> &Daemon {
        self.daemons.get(self.daemons.current())
    }

    /// Every daemon, for the worker (which registers with each).
    pub(crate) fn daemons(&self) -> &[Daemon] {
        self.daemons.all()
    }

    /// Sends a unary call `rpc` of `job` to the daemon in use; if that daemon is down,
    /// moves to the next and sends it there, each daemon at most once. Safe for every
    /// unary call of the contract: each is idempotent (a read; a Set of the same data,
    /// an Invalidate, a Delete or an InvalidateTags applied twice leave the same state).
    pub(crate) async fn unary<M, T, F, Fut>(
        &self,
        rpc: &'static str,
        job: &str,
        message: M,
        mut call: F,
    ) -> Result<T>
    where
        M: Clone,
        F: FnMut(CachebackClient<Transport>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let several = self.daemons.all().len() > 1;
        let mut index = self.daemons.current();
        let mut tried = Vec::new();
        loop {
            let daemon = self.daemons.get(index);
            let status = match call(daemon.raw.clone(), self.request(message.clone())).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if several && is_daemon_down(&status) => status,
                Err(status) => return Err(Error::status_of(rpc, job, status)),
            };
            tried.push(daemon.url.to_string());
            index = self.fail_over(index);
            if tried.len() >= self.daemons.all().len() {
                return Err(Error::NoDaemon {
                    rpc,
                    tried,
                    reason: format!("{:?}: {}", status.code(), status.message()),
                    status: Some(Box::new(status)),
                });
            }
        }
    }

    /// The daemon at `index` is down: moves on (once, however many calls saw it) and
    /// drops the near cache, whose stream was on that daemon. The index now in use.
    fn fail_over(&self, index: usize) -> usize {
        let moved = self.daemons.moved();
        let now = self.daemons.fail_over(index);
        if let Some(near) = &self.near {
            if self.daemons.moved() != moved {
                near.lost_daemon();
            }
        }
        now
    }

    /// The near cache's counters, if this client has one ([`ClientBuilder::near_cache`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = cacheback::Client::connect_lazy("http://127.0.0.1:7070").unwrap();
    /// assert!(client.near_cache_stats().is_none());
    /// # }
    /// ```
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|n| n.stats())
    }

    /// The near cache, if there is one.
    pub(crate) fn near(&self) -> Option<&NearCache> {
        self.near.as_deref()
    }

    /// Wraps a unary request, with the client's timeout as its gRPC deadline.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

/// Options of a [`Client`]. The defaults suit an app server on the daemon's machine:
/// 5 s to connect, HTTP/2 keepalive pings every 20 s (a dead daemon is noticed within
/// 30 s, even on an idle connection), no per-call timeout (the daemon bounds every wait
/// by the job's `refresh_timeout`), 16 MiB message limits (the daemon's 4 MiB data limit
/// plus headroom, the same in every client).
///
/// Credentials come from the environment unless set here: the bearer token from
/// `CACHEBACKD_TOKEN`, and for an `https://` URL the TLS files that `CACHEBACKD_TLS_CA`,
/// `CACHEBACKD_TLS_CERT` and `CACHEBACKD_TLS_KEY` name (see [`TlsConfig::from_env`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), cacheback::Error> {
/// use std::time::Duration;
/// let client = cacheback::ClientBuilder::new("unix:/run/cachebackd.sock")
///     .connect_timeout(Duration::from_secs(1))
///     .timeout(Duration::from_secs(10))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    urls: Vec<String>,
    connect_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    timeout: Option<Duration>,
    max_message_size: usize,
    near_cache: Option<u64>,
    token: Option<Token>,
    tls: Option<TlsConfig>,
    allow_plaintext_token: bool,
}

impl ClientBuilder {
    /// Options for `url` (`http://host:port` or `unix:/path`), with the defaults; several
    /// URLs separated by commas are the daemons of a fleet (see [`ClientBuilder::new_any`]).
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new("http://127.0.0.1:7070");
    /// ```
    pub fn new(url: &str) -> Self {
        let urls = split_urls(url);
        ClientBuilder::new_any(if urls.is_empty() {
            vec![url.to_owned()]
        } else {
            urls
        })
    }

    /// Options for several daemons (a fleet sharing one store): the client uses one at
    /// a time, starting on one picked at random, and fails over to the next when it is
    /// down (see [`Client::connect_any`]). Every option applies to every daemon.
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new_any(["http://10.0.0.7:7070", "http://10.0.0.8:7070"]);
    /// ```
    pub fn new_any<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder {
            urls: urls.into_iter().map(|u| u.as_ref().to_owned()).collect(),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            timeout: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            near_cache: None,
            token: std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
                .map(Token),
            tls: None,
            allow_plaintext_token: false,
        }
    }

    /// Send `token` as `authorization: Bearer <token>` on every call (instead of
    /// `CACHEBACKD_TOKEN`).
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new("unix:/run/cachebackd.sock").token("s3cret");
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Token(token.into()));
        self
    }

    /// The TLS settings of an `https://` URL (instead of the `CACHEBACKD_TLS_*` files).
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new("https://cache.internal:7070")
    ///     .tls(cacheback::TlsConfig::new().domain_name("cache.internal"));
    /// ```
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Send the token over plaintext `http://` to another machine too. Without this, a
    /// token is sent without TLS only to a Unix socket or a loopback address, and
    /// connecting to anything else fails with [`Error::Credentials`].
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new("http://10.0.0.7:7070")
    ///     .token("s3cret")
    ///     .allow_plaintext_token();
    /// ```
    pub fn allow_plaintext_token(mut self) -> Self {
        self.allow_plaintext_token = true;
        self
    }

    /// How long establishing the connection may take (default 5 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = cacheback::ClientBuilder::new("http://127.0.0.1:7070")
    ///     .connect_timeout(Duration::from_millis(500));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive: a ping every `interval`, the connection dropped if one is not
    /// answered within `timeout` (defaults 20 s and 10 s).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = cacheback::ClientBuilder::new("http://127.0.0.1:7070")
    ///     .keepalive(Duration::from_secs(5), Duration::from_secs(2));
    /// ```
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// A deadline for every `Get`/`Set`/`Invalidate`/`Delete`, sent to the daemon as the
    /// gRPC deadline: a read that would wait longer fails with `DEADLINE_EXCEEDED`
    /// (the shared fetch goes on). Default: none.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = cacheback::ClientBuilder::new("http://127.0.0.1:7070")
    ///     .timeout(Duration::from_secs(2));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The largest gRPC message sent or received, in bytes (default 16 MiB). Raise it
    /// if the daemon's data limit is raised.
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new("http://127.0.0.1:7070")
    ///     .max_message_size(32 << 20);
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Keeps up to `capacity` items (at most [`MAX_NEAR_CACHE_ITEMS`]) that the daemon
    /// answered FRESH in this process, and serves them without a call while they are
    /// fresh and the daemon has told of no change to them (its `Subscribe` stream). A
    /// lost stream drops them all; reads served locally are not seen by the daemon (no
    /// early refresh): [`Client::near_cache_stats`] counts them. Default: off. Needs a
    /// tokio runtime when the client is built (the stream has a task of its own).
    ///
    /// [`MAX_NEAR_CACHE_ITEMS`]: crate::MAX_NEAR_CACHE_ITEMS
    ///
    /// ```
    /// let builder = cacheback::ClientBuilder::new("http://127.0.0.1:7070").near_cache(10_000);
    /// ```
    pub fn near_cache(mut self, capacity: u64) -> Self {
        self.near_cache = Some(capacity);
        self
    }

    /// Connects now; fails if the daemon cannot be reached.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cacheback::Error> {
    /// let client = cacheback::ClientBuilder::new("http://127.0.0.1:7070").connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(self) -> Result<Client> {
        let daemons = self.daemon_options()?;
        let start = random_start(daemons.len());
        let mut channels: Vec<Option<Channel>> = vec![None; daemons.len()];
        let mut tried = Vec::new();
        let mut reached = None;
        for step in 0..daemons.len() {
            let index = (start + step) % daemons.len();
            let (url, endpoint, _) = &daemons[index];
            match endpoint.connect().await {
                Ok(channel) => {
                    channels[index] = Some(channel);
                    reached = Some(index);
                    break;
                }
                Err(source) if daemons.len() == 1 => {
                    return Err(Error::Connect {
                        url: url.clone(),
                        source,
                    })
                }
                Err(source) => {
                    tried.push(url.clone());
                    tracing::warn!(%url, error = %source, "cannot connect to cachebackd; trying the next");
                }
            }
        }
        let Some(reached) = reached else {
            return Err(Error::NoDaemon {
                rpc: "connect",
                tried,
                reason: "connection refused or timed out".to_owned(),
                status: None,
            });
        };
        let connect_timeout = self.connect_timeout;
        let channels = daemons
            .into_iter()
            .zip(channels)
            .map(|((url, endpoint, credentials), channel)| {
                let channel = channel.unwrap_or_else(|| endpoint.connect_lazy());
                (url, channel, credentials)
            })
            .collect();
        let client = self.client(channels, reached);
        if let Some(near) = client.near() {
            // Serving locally needs the stream; a daemon that does not open it in time
            // still leaves a working client, whose near cache starts when it opens.
            if !near.ready(connect_timeout).await {
                tracing::warn!("near cache: no Subscribe stream yet; reads go to the daemon");
            }
        }
        Ok(client)
    }

    /// Connects on first use. Must be called inside a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = cacheback::ClientBuilder::new("http://127.0.0.1:7070").connect_lazy().unwrap();
    /// # }
    /// ```
    pub fn connect_lazy(self) -> Result<Client> {
        let channels = self
            .daemon_options()?
            .into_iter()
            .map(|(url, endpoint, credentials)| (url, endpoint.connect_lazy(), credentials))
            .collect::<Vec<_>>();
        let start = random_start(channels.len());
        Ok(self.client(channels, start))
    }

    /// Each daemon's URL, endpoint and call credentials; fails on the first bad one.
    fn daemon_options(&self) -> Result<Vec<(String, Endpoint, CallCredentials)>> {
        if self.urls.is_empty() {
            return Err(Error::InvalidUrl {
                url: String::new(),
                reason: "no cachebackd URL given".to_owned(),
            });
        }
        self.urls
            .iter()
            .map(|url| Ok((url.clone(), self.endpoint(url)?, self.credentials(url)?)))
            .collect()
    }

    fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = url.strip_prefix("unix:") {
            if path.trim_start_matches('/').is_empty() {
                return Err(invalid("a unix: URL needs a socket path"));
            }
        } else if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(invalid(
                "expected http://host:port, https://host:port or unix:/path",
            ));
        }
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| invalid(&e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_keepalive(Some(self.keepalive_interval))
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let tls = match &self.tls {
                Some(t) => t.clone(),
                None => TlsConfig::from_env()?.unwrap_or_default(),
            };
            endpoint = endpoint
                .tls_config(tls.to_tonic())
                .map_err(|e| Error::Tls {
                    reason: format!("{url}: {e}"),
                })?;
        }
        Ok(endpoint)
    }

    /// The call credentials; refuses to send a token in plaintext beyond this machine.
    fn credentials(&self, url: &str) -> Result<CallCredentials> {
        let plaintext = !url.starts_with("https://");
        if self.token.is_some() && plaintext && !is_local(url) && !self.allow_plaintext_token {
            return Err(Error::Credentials {
                url: url.to_owned(),
                reason: "a bearer token would travel in plaintext to another machine: use an \
                         https:// URL, or say allow_plaintext_token() if the network is trusted"
                    .into(),
            });
        }
        CallCredentials::for_url(self.token.as_ref().map(|t| t.0.as_str()), url)
    }

    fn client(self, channels: Vec<(String, Channel, CallCredentials)>, start: usize) -> Client {
        let list = channels
            .into_iter()
            .map(|(url, channel, credentials)| {
                let transport = InterceptedService::new(channel, credentials);
                let raw = CachebackClient::new(transport.clone())
                    .max_decoding_message_size(self.max_message_size)
                    .max_encoding_message_size(self.max_message_size);
                Daemon {
                    url: url.into(),
                    raw,
                    transport,
                }
            })
            .collect();
        let daemons = Arc::new(Daemons::new(list, start));
        let near = self
            .near_cache
            .map(|capacity| NearCache::start(daemons.clone(), capacity));
        Client {
            daemons,
            timeout: self.timeout,
            near,
        }
    }
}

static DEFAULT_CLIENT: OnceLock<Client> = OnceLock::new();

tokio::task_local! {
    static SCOPED_CLIENT: Client;
}

/// Sets the process-wide client used by `#[cacheback]` functions. Call it once at
/// startup, before the first such call; it fails if the default is already set.
///
/// ```no_run
/// # async fn demo() -> Result<(), cacheback::Error> {
/// let client = cacheback::Client::connect("unix:/run/cachebackd.sock").await?;
/// cacheback::set_default_client(client)?;
/// # Ok(()) }
/// ```
pub fn set_default_client(client: Client) -> Result<()> {
    DEFAULT_CLIENT
        .set(client)
        .map_err(|_| Error::DefaultClientAlreadySet)
}

/// The client that `#[cacheback]` functions use: the one given to [`with_client`] for
/// the current task, else the process-wide default — set with [`set_default_client`],
/// or on first use connected lazily to `$CACHEBACKD_URL` (default [`DEFAULT_URL`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = cacheback::current_client().unwrap();
/// # }
/// ```
pub fn current_client() -> Result<Client> {
    if let Ok(client) = SCOPED_CLIENT.try_with(Client::clone) {
        return Ok(client);
    }
    if let Some(client) = DEFAULT_CLIENT.get() {
        return Ok(client.clone());
    }
    let url = std::env::var(URL_ENV).unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let client = Client::connect_lazy(&url)?;
    Ok(DEFAULT_CLIENT.get_or_init(|| client).clone())
}

/// Runs `future` with `client` as the [`current_client`] of this task: for tests, or
/// an app talking to more than one daemon. Tasks spawned inside do not inherit it.
///
/// ```no_run
/// # #[cacheback::cacheback]
/// # async fn fetch_tweets(username: &str) -> Result<Vec<String>, std::io::Error> { Ok(vec![]) }
/// # async fn demo() -> Result<(), cacheback::Error> {
/// let staging = cacheback::Client::connect("http://staging:7070").await?;
/// let tweets = cacheback::with_client(staging, fetch_tweets("bob")).await?;
/// # Ok(()) }
/// ```
pub async fn with_client<F: Future>(client: Client, future: F) -> F::Output {
    SCOPED_CLIENT.scope(client, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_other_than_http_and_unix_are_refused() {
        for url in ["127.0.0.1:7070", "unix:", "grpc://x"] {
            let err = ClientBuilder::new(url).endpoint(url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err}");
        }
        for url in [
            "http://127.0.0.1:7070",
            "unix:/tmp/cb.sock",
            "unix:///tmp/cb.sock",
        ] {
            ClientBuilder::new(url).endpoint(url).unwrap();
        }
    }

    #[test]
    fn debug_output_never_shows_the_token_or_the_key() {
        let builder = ClientBuilder::new("https://cache:7070")
            .token("s3cret-token")
            .tls(TlsConfig::new().identity_pem("CERT", "PRIVATE KEY BYTES"));
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains("s3cret-token") && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_scoped_client_wins_over_the_default() {
        let scoped = Client::connect_lazy("unix:/nonexistent/scoped.sock").unwrap();
        let url = with_client(scoped, async { current_client().unwrap().url().to_owned() }).await;
        assert_eq!(url, "unix:/nonexistent/scoped.sock");
    }
}
