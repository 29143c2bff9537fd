//! Get and GetMany responses not yet taken by their clients, under a global budget of
//! bytes ([`ByteBudget`], `max_unsent_bytes`).
//!
//! A client that reads nothing (a zero HTTP/2 window) leaves each response it asked for in
//! the daemon's memory until the connection closes: 200 such streams of a 4 MiB item once
//! pinned 856 MB. So [`UnsentLayer`] takes each response's encoded size from the budget
//! before the response is sent; one that does not fit is dropped at once and the call
//! answers RESOURCE_EXHAUSTED (waiting would keep it in memory all the same, since it has
//! been read by then). The bytes stay taken while the response waits for its client: first
//! in its body, then, once HTTP/2 has taken a piece of it, in the connection's
//! [`WritePool`] until the connection has written as many bytes to its socket.
//!
//! A response over 64 KiB goes to HTTP/2 in pieces of 64 KiB, each a copy: HTTP/2 holds
//! what it was handed until the client's window lets it out, and a piece that shared the
//! response's buffer would keep all of it alive; with copies, a client that stops reading
//! pins the pieces it was handed (all counted) and the rest of the response (counted).
//! On a Unix socket, whose peers are local, the budget is given back when the body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use http_body_util::BodyExt as _;
use tonic::Status;

use crate::budget::{ByteBudget, Held, WritePool};
use crate::connections::Connections;

/// The routes whose responses are budgeted: the ones that carry stored data.
const ROUTES: [&str; 2] = [
    "/cacheback.v1.Cacheback/Get",
    "/cacheback.v1.Cacheback/GetMany",
];
/// Responses over this size go to HTTP/2 in copied pieces of this size.
const PIECE: usize = 64 * 1024;

/// See the module doc.
#[derive(Clone)]
pub(crate) struct UnsentLayer {
    /// Shared by every connection.
    pub budget: ByteBudget,
    /// Where each connection's pool of unwritten bytes is found.
    pub connections: Connections,
}

/// Adds the budget's gauge and refusal counter to `registry`.
pub(crate) fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    budget: &ByteBudget,
) {
    budget.register_metrics(
        registry,
        "unsent_responses",
        "Bytes of Get and GetMany responses not yet taken by their clients (at most max_unsent_bytes)",
        (
            "responses_refused_unsent",
            "Get and GetMany responses refused with RESOURCE_EXHAUSTED because max_unsent_bytes were waiting for their clients",
        ),
    );
}

impl<S> tower::Layer<S> for UnsentLayer {
    type Service = Unsent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Unsent {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`UnsentLayer`].
#[derive(Clone)]
pub(crate) struct Unsent<S> {
    inner: S,
    layer: UnsentLayer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Unsent<S>
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
        let budgeted = ROUTES.contains(&req.uri().path());
        let pool = budgeted
            .then(|| self.layer.connections.write_pool(req.extensions()))
            .flatten();
        let budget = self.layer.budget.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if !budgeted {
                return Ok(response);
            }
            Ok(hold(response, budget, pool).await)
        })
    }
}

/// `response` with its data taken from `budget`, or RESOURCE_EXHAUSTED if it does not fit.
async fn hold(
    response: http::Response<tonic::body::Body>,
    budget: ByteBudget,
    pool: Option<Arc<WritePool>>,
) -> http::Response<tonic::body::Body> {
    let (parts, mut body) = response.into_parts();
    // A unary response's message comes whole in its first frame; an error has none.
    let (data, first) = match body.frame().await {
        None => (Bytes::new(), None),
        Some(Err(status)) => return status.into_http(),
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => (data, None),
            Err(frame) => (Bytes::new(), Some(frame)),
        },
    };
    let Some(held) = budget.take(data.len()) else {
        return Status::resource_exhausted(format!(
            "responses not yet read by their clients hold the daemon's budget of {} bytes (max_unsent_bytes); this response of {} bytes is refused: try again later",
            budget.limit(),
            data.len()
        ))
        .into_http();
    };
    let body = Waiting {
        copy: data.len() > PIECE,
        data,
        first,
        rest: body,
        held,
        pool,
    };
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// A response body holding its budget (see the module doc).
struct Waiting {
    /// The message, not yet handed over.
    data: Bytes,
    /// Whether it goes in copied pieces.
    copy: bool,
    /// A first frame that was not data (trailers), to hand over after it.
    first: Option<Frame<Bytes>>,
    rest: tonic::body::Body,
    held: Held,
    pool: Option<Arc<WritePool>>,
}

impl http_body::Body for Waiting {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if !this.data.is_empty() {
            let n = this.data.len().min(PIECE);
            let piece = if this.copy {
                let piece = Bytes::copy_from_slice(&this.data[..n]);
                this.data.advance(n);
                piece
            } else {
                this.data.split_to(n)
            };
            if let Some(pool) = &this.pool {
                if let Some(handed) = this.held.split(n) {
                    pool.add(handed);
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.first.is_none() && self.rest.is_end_stream()
    }
}
