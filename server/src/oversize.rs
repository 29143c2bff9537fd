//! A request over the gRPC message limit answers INVALID_ARGUMENT, as the contract says of
//! data over the limit, not tonic's OUT_OF_RANGE.
//!
//! tonic refuses such a message while decoding it, before any handler runs, with
//! OUT_OF_RANGE and its own wording; the daemon's handlers never answer OUT_OF_RANGE, so an
//! answer with that code is always this refusal, and this layer rewrites it (a unary
//! refusal travels in the response headers). Streams see the same refusal as an error of
//! their inbound messages and end with INVALID_ARGUMENT in `service`.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

/// See the module doc; `max_data_bytes` is named in the message.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OversizeLayer {
    /// The data limit, for the message.
    pub max_data_bytes: usize,
}

impl<S> tower::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Oversize {
            inner,
            max_data_bytes: self.max_data_bytes,
        }
    }
}

/// See [`OversizeLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Oversize<S> {
    inner: S,
    max_data_bytes: usize,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Oversize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let limit = self.max_data_bytes;
        let response = self.inner.call(req);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            if headers.get("grpc-status").is_some_and(|v| v == "11") {
                headers.insert("grpc-status", HeaderValue::from_static("3"));
                let message = format!(
                    "the request is over the message size limit: data may be at most {limit} bytes, args at most the args limit"
                );
                if let Ok(v) = HeaderValue::from_str(&message) {
                    headers.insert("grpc-message", v);
                }
            }
            Ok(response)
        })
    }
}
