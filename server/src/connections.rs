//! Client connections, bounded: at most `max_connections` served at once, accept errors
//! met with back-off instead of a spin, and idle connections closed.
//!
//! tonic's own accept loop retries a failed `accept` at once, so at the fd limit (EMFILE)
//! it spins at full CPU without a word; here the listener is wrapped in a stream that never
//! yields an error: it logs (rate-limited), backs off (10 ms doubling to 1 s) and counts.
//! Past `max_connections` it stops accepting until one closes, so new clients wait in the
//! kernel's backlog rather than take the daemon's fds and memory; hitting the bound is
//! logged and counted.
//!
//! Idle: a TCP connection with no call open for `idle_timeout` is closed (HTTP/2 keepalive
//! pings, set in `daemon`, close dead peers; this closes live ones that hold a connection
//! for nothing). Calls are counted per connection by [`CallsLayer`], which finds the
//! connection by its addresses in tonic's `TcpConnectInfo`, so the connect info every
//! other layer sees is tonic's own.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::budget::WritePool;
use crate::logs::RateLimit;

/// Most calls (HTTP/2 streams) open at once on one connection (MAX_CONCURRENT_STREAMS).
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 1000;
/// How often a connection is pinged, and how long a ping may go unanswered before the
/// connection counts as dead and is closed.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// See [`KEEPALIVE_INTERVAL`].
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection bound and its counters: a cheap-to-clone handle shared by every listener.
#[derive(Clone)]
pub(crate) struct Connections {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    /// Open TCP connections by (local, remote) address: where `CallsLayer` counts calls.
    open: Mutex<HashMap<(SocketAddr, SocketAddr), Arc<Calls>>>,
    stats: ConnectionStats,
}

/// What the connection bound counts (exported as metrics).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionStats {
    /// Times a connection had to wait because `max_connections` were open.
    pub limit_hits: Counter,
    /// `accept` calls that failed (EMFILE and the like).
    pub accept_errors: Counter,
    /// Connections closed for being idle.
    pub idle_closed: Counter,
}

/// Adds the connection counters to `registry`.
pub(crate) fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    stats: &ConnectionStats,
) {
    registry.register(
        "connection_limit_hits",
        "Times a new connection had to wait because max_connections were open",
        stats.limit_hits.clone(),
    );
    registry.register(
        "accept_errors",
        "Failed accepts of a connection (the limit of open files, and the like); each is followed by a back-off",
        stats.accept_errors.clone(),
    );
    registry.register(
        "idle_connections_closed",
        "Connections closed after holding no call for the idle timeout",
        stats.idle_closed.clone(),
    );
}

/// The calls open on one connection, since when it has had none, and the response bytes
/// it has been handed and not yet written (see `unsent`).
#[derive(Debug)]
struct Calls {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
    unwritten: Arc<WritePool>,
}

impl Connections {
    /// At most `max` connections at once, idle ones closed after `idle_timeout`.
    pub(crate) fn new(max: usize, idle_timeout: Duration) -> Connections {
        Connections {
            shared: Arc::new(Shared {
                max,
                permits: Arc::new(Semaphore::new(max)),
                idle_timeout,
                open: Mutex::new(HashMap::new()),
                stats: ConnectionStats::default(),
            }),
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &ConnectionStats {
        &self.shared.stats
    }

    /// The layer that counts calls per connection (for the idle timeout).
    pub(crate) fn layer(&self) -> CallsLayer {
        CallsLayer {
            shared: self.shared.clone(),
        }
    }

    /// The pool of bytes handed to the TCP connection a request came on and not yet written
    /// (none for a Unix connection).
    pub(crate) fn write_pool(&self, ext: &http::Extensions) -> Option<Arc<WritePool>> {
        self.shared
            .calls_of(ext)
            .map(|calls| calls.unwritten.clone())
    }

    /// The connections of a TCP listener, bounded.
    pub(crate) fn tcp(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Bounded<TcpStream>>> + Send + 'static {
        let shared = self.shared.clone();
        futures_util::stream::unfold(
            (listener, shared, Backoff::default()),
            |(listener, shared, mut backoff)| async move {
                loop {
                    let permit = shared.permit().await;
                    match listener.accept().await {
                        Ok((stream, peer)) => {
                            backoff.reset();
                            let _ = stream.set_nodelay(true);
                            let calls = stream.local_addr().ok().map(|local| {
                                let calls = Arc::new(Calls {
                                    open: AtomicUsize::new(0),
                                    idle_since: Mutex::new(Instant::now()),
                                    unwritten: Arc::default(),
                                });
                                shared.open.lock().insert((local, peer), calls.clone());
                                ((local, peer), calls)
                            });
                            let conn = Bounded::new(stream, permit, shared.clone(), calls);
                            return Some((Ok(conn), (listener, shared, backoff)));
                        }
                        Err(e) => backoff.wait(&shared.stats, &e).await,
                    }
                }
            },
        )
    }

    /// The connections of a Unix listener, bounded (no idle timeout: local peers).
    pub(crate) fn unix(
        &self,
        listener: UnixListener,
    ) -> impl Stream<Item = io::Result<Bounded<UnixStream>>> + Send + 'static {
        let shared = self.shared.clone();
        futures_util::stream::unfold(
            (listener, shared, Backoff::default()),
            |(listener, shared, mut backoff)| async move {
                loop {
                    let permit = shared.permit().await;
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            backoff.reset();
                            let conn = Bounded::new(stream, permit, shared.clone(), None);
                            return Some((Ok(conn), (listener, shared, backoff)));
                        }
                        Err(e) => backoff.wait(&shared.stats, &e).await,
                    }
                }
            },
        )
    }
}

impl Shared {
    /// The open connection a request came on, by its addresses (TCP or TLS).
    fn calls_of(&self, ext: &http::Extensions) -> Option<Arc<Calls>> {
        let key = ext
            .get::<TcpConnectInfo>()
            .and_then(|i| Some((i.local_addr?, i.remote_addr?)))
            .or_else(|| {
                let tls = ext.get::<crate::tls::TlsPeer>()?;
                Some((tls.local?, tls.remote?))
            })?;
        self.open.lock().get(&key).cloned()
    }

    /// A place for one more connection, waiting (logged, counted) when all are taken.
    async fn permit(&self) -> OwnedSemaphorePermit {
        static FULL: RateLimit = RateLimit::new(Duration::from_secs(10));
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.stats.limit_hits.inc();
                if let Some(suppressed) = FULL.allow() {
                    tracing::warn!(
                        max_connections = self.max,
                        times_since_last_line = suppressed,
                        "the connection limit is reached: new connections wait until one closes"
                    );
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed")
            }
        }
    }
}

/// Back-off after a failed `accept`.
#[derive(Default)]
struct Backoff {
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_secs(1);

    fn reset(&mut self) {
        self.delay = Duration::ZERO;
    }

    async fn wait(&mut self, stats: &ConnectionStats, e: &io::Error) {
        static FAILED: RateLimit = RateLimit::new(Duration::from_secs(10));
        stats.accept_errors.inc();
        // A peer that gave up before we took its connection: nothing to wait for.
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MOST);
        if let Some(suppressed) = FAILED.allow() {
            tracing::warn!(error = %e, retry_in = ?self.delay, times_since_last_line = suppressed, "cannot accept a connection (at the limit of open files?)");
        }
        tokio::time::sleep(self.delay).await;
    }
}

/// An accepted connection: holds its place under the bound until it closes, and ends
/// (end of file to the HTTP/2 server) when it has been idle for the idle timeout.
pub(crate) struct Bounded<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    calls: Option<((SocketAddr, SocketAddr), Arc<Calls>)>,
    idle: Pin<Box<Sleep>>,
}

impl<IO> Bounded<IO> {
    fn new(
        io: IO,
        permit: OwnedSemaphorePermit,
        shared: Arc<Shared>,
        calls: Option<((SocketAddr, SocketAddr), Arc<Calls>)>,
    ) -> Self {
        let idle = Box::pin(tokio::time::sleep(shared.idle_timeout));
        Bounded {
            io,
            _permit: permit,
            shared,
            calls,
            idle,
        }
    }

    /// Whether the connection has held no call for the idle timeout; arms the timer
    /// otherwise. The HTTP/2 server polls the read side whenever anything happens on the
    /// connection (a call ending included), so the timer is always armed when it counts.
    fn idle_over(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((_, calls)) = &self.calls else {
            return false;
        };
        if calls.open.load(Ordering::Acquire) > 0 {
            return false;
        }
        let deadline = *calls.idle_since.lock() + self.shared.idle_timeout;
        if self.idle.deadline() != deadline {
            self.idle.as_mut().reset(deadline);
        }
        self.idle.as_mut().poll(cx).is_ready()
    }
}

impl<IO> Drop for Bounded<IO> {
    fn drop(&mut self) {
        if let Some((key, _)) = &self.calls {
            self.shared.open.lock().remove(key);
        }
    }
}

impl<IO: Connected> Connected for Bounded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Bounded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.idle_over(cx) {
            self.shared.stats.idle_closed.inc();
            tracing::debug!("closing a connection idle for the idle timeout");
            // End of file: the HTTP/2 server closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO> Bounded<IO> {
    /// `written` bytes went to the socket: the responses' budget they held is given back.
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if let (Poll::Ready(Ok(n)), Some((_, calls))) = (written, &self.calls) {
            calls.unwritten.written(*n);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Bounded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&written);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Counts the calls open on each TCP connection, from the request until its response
/// body is done.
#[derive(Clone)]
pub(crate) struct CallsLayer {
    shared: Arc<Shared>,
}

impl<S> tower::Layer<S> for CallsLayer {
    type Service = CallsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`CallsLayer`].
#[derive(Clone)]
pub(crate) struct CallsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// One open call: counted until dropped.
struct CallGuard(Arc<Calls>);

impl CallGuard {
    fn new(calls: Arc<Calls>) -> CallGuard {
        calls.open.fetch_add(1, Ordering::AcqRel);
        CallGuard(calls)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The idle clock starts when the last call ends.
        *self.0.idle_since.lock() = Instant::now();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CallsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = self.shared.calls_of(req.extensions()).map(CallGuard::new);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(Counted {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted until it is done or dropped.
struct Counted {
    inner: tonic::body::Body,
    _guard: CallGuard,
}

impl http_body::Body for Counted {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
