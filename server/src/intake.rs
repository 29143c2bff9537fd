//! Workers' messages, read under a global budget of bytes ([`ByteBudget`], `max_answer_bytes`).
//!
//! 500 workers answering 4 MiB at once once took the daemon from 40 MB to 2.15 GB. tonic's
//! decoder cannot bound that: it reserves a message's whole declared length as soon as its
//! 5-byte header arrives, before any of it is read, and each stream's decoder keeps the
//! largest buffer it ever grew for as long as the stream lives (its `BytesMut` is reused,
//! never shrunk), so every worker that once answered 4 MiB pins 4 MiB while idle.
//!
//! So the `RegisterJob` route does its own framing: [`IntakeLayer`] takes the request body
//! away from tonic (its handler sees an empty one) and hands it to the handler as an
//! [`Inbound`]. That reads the gRPC length-prefixed messages itself. A message's declared
//! length is taken from the budget when its header arrives, before any of its bytes are
//! buffered, and given back once the decoded answer has been handed over
//! ([`Received::Message`]'s [`Held`]), so no buffer outlives its message. A message the
//! budget cannot take is skipped as it arrives (nothing of it is kept but the first bytes,
//! where its request id is: every encoder writes fields in number order) and comes out as a
//! [`Refusal`]: `worker_stream` fails that fetch with a message saying why, and the stream
//! stays open (as for any answer the daemon refuses).
//!
//! Messages of at most 64 KiB (registrations, errors, small values) are not budgeted: a
//! stream holds one at a time, so the stream caps bound them. What HTTP/2 buffers before
//! the handler reads is bounded by the connection window (1 MiB per connection).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use cachebackd_proto::v1 as pb;
use http_body::Body as _;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tonic::Status;

use crate::budget::{ByteBudget, Held};

/// The path of the route whose messages are read here.
const ROUTE: &str = "/cacheback.v1.Cacheback/RegisterJob";
/// Messages up to this size are not budgeted (see the module doc).
const UNBUDGETED: usize = 64 * 1024;
/// How much of a refused message is kept to find its request id: the keys and lengths of
/// `WorkerMessage.result` and `FetchResult.request_id`, and an id of up to 64 bytes (the
/// daemon's ids are 36-byte UUIDs).
const ID_PREFIX: usize = 1 + 10 + 1 + 1 + 64;
/// The gRPC message header: a compression flag and a big-endian length.
const HEADER: usize = 5;

/// Why a worker's stream cannot be read on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntakeError {
    /// The message declares a length over the message limit.
    #[error("a message of {len} bytes is over the message size limit of {limit} bytes")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The message says it is compressed; the daemon accepts no compression.
    #[error("compressed messages are not accepted (compression flag {0})")]
    Compressed(u8),
    /// The stream ended in the middle of a message.
    #[error("the stream ended inside a message")]
    Truncated,
    /// The bytes are not a `WorkerMessage`.
    #[error("it is not a WorkerMessage ({0})")]
    Decode(#[from] prost::DecodeError),
    /// The transport failed (the peer reset the stream, the connection broke).
    #[error("{}", .0.message())]
    Broken(Status),
}

/// What the worker sent next.
#[derive(Debug)]
pub(crate) enum Received {
    /// A message, with the budget it holds: drop it once the message is handed over.
    Message(pb::WorkerMessage, Option<Held>),
    /// A message the budget could not take: skipped, never held.
    Refused(Refusal),
}

/// A message refused for want of budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The request id it answers, when its first bytes say (`WorkerMessage.result`, whose
    /// first field is `request_id`).
    pub request_id: Option<String>,
    /// Its length.
    pub len: usize,
    /// The budget that was spent.
    pub budget: usize,
}

/// See the module doc; `max_message` is the gRPC message limit.
#[derive(Clone, Debug)]
pub(crate) struct IntakeLayer {
    /// Shared by every worker stream.
    pub budget: ByteBudget,
    /// The gRPC message limit.
    pub max_message: usize,
    /// Notices of refused answers (`DaemonMessage.refused`) dropped because the worker's
    /// stream held too many unsent (`worker_stream`); shared by every worker stream.
    pub notices_dropped: Counter,
}

impl<S> tower::Layer<S> for IntakeLayer {
    type Service = Intake<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Intake {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`IntakeLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Intake<S> {
    inner: S,
    layer: IntakeLayer,
}

/// The body of a `RegisterJob` call, in the request's extensions until its handler takes it.
#[derive(Clone)]
struct Taken(Arc<Mutex<Option<Inbound>>>);

impl<S> tower::Service<http::Request<tonic::body::Body>> for Intake<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != ROUTE {
            return self.inner.call(req);
        }
        let (parts, body) = req.into_parts();
        let mut req = http::Request::from_parts(parts, tonic::body::Body::empty());
        let inbound = Inbound::new(
            body,
            self.layer.budget.clone(),
            self.layer.max_message,
            self.layer.notices_dropped.clone(),
        );
        req.extensions_mut()
            .insert(Taken(Arc::new(Mutex::new(Some(inbound)))));
        self.inner.call(req)
    }
}

/// Adds the answer budget's gauge and refusal counter, and the counter of dropped refusal
/// notices, to `registry`.
pub(crate) fn register_metrics(
    registry: &mut prometheus_client::registry::Registry,
    layer: &IntakeLayer,
) {
    registry.register(
        "answer_refusal_notices_dropped",
        "Notices of a refused answer not sent to its worker because its stream already held too many unsent",
        layer.notices_dropped.clone(),
    );
    layer.budget.register_metrics(
        registry,
        "answers_held",
        "Bytes of workers' answers being received or handed over now (at most max_answer_bytes)",
        (
            "answers_refused",
            "Workers' answers refused because max_answer_bytes were held; each failed its fetch",
        ),
    );
}

/// The messages of a `RegisterJob` call (taken by its handler from the request).
pub(crate) fn take<T>(req: &tonic::Request<T>) -> Result<Inbound, Status> {
    req.extensions()
        .get::<Taken>()
        .and_then(|t| t.0.lock().take())
        .ok_or_else(|| Status::internal("RegisterJob is served only behind the answer intake"))
}

/// A worker's messages, read under the budget (see the module doc). Cancel-safe: what was
/// read of a message is kept here, not in a future.
pub(crate) struct Inbound {
    body: tonic::body::Body,
    budget: ByteBudget,
    max_message: usize,
    /// Bytes received and not yet taken by `state`.
    chunk: Bytes,
    state: State,
    notices_dropped: Counter,
}

enum State {
    /// Reading a header; `have` bytes of it are in `header`.
    Header { header: [u8; HEADER], have: usize },
    /// Reading a message of `len` bytes into `buf`, under `held`.
    Body {
        buf: BytesMut,
        len: usize,
        held: Option<Held>,
    },
    /// Skipping a refused message: `left` bytes to go, its first bytes in `prefix`.
    Skip {
        prefix: Vec<u8>,
        left: usize,
        len: usize,
    },
}

impl State {
    fn header() -> State {
        State::Header {
            header: [0; HEADER],
            have: 0,
        }
    }
}

impl Inbound {
    fn new(
        body: tonic::body::Body,
        budget: ByteBudget,
        max_message: usize,
        notices_dropped: Counter,
    ) -> Inbound {
        Inbound {
            body,
            budget,
            max_message,
            chunk: Bytes::new(),
            state: State::header(),
            notices_dropped,
        }
    }

    /// Counts the notices of refused answers this daemon could not send (see
    /// [`IntakeLayer::notices_dropped`]).
    pub(crate) fn notices_dropped(&self) -> &Counter {
        &self.notices_dropped
    }

    /// The next message; `None` once the worker has closed its side.
    pub(crate) async fn message(&mut self) -> Result<Option<Received>, IntakeError> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Received>, IntakeError>> {
        loop {
            if self.chunk.is_empty() {
                match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        // Trailers carry nothing for the daemon.
                        if let Ok(data) = frame.into_data() {
                            self.chunk = data;
                        }
                        continue;
                    }
                    Some(Err(status)) => return Poll::Ready(Err(IntakeError::Broken(status))),
                    None => {
                        let between = matches!(self.state, State::Header { have: 0, .. });
                        return Poll::Ready(if between {
                            Ok(None)
                        } else {
                            Err(IntakeError::Truncated)
                        });
                    }
                }
            }
            if let Some(done) = self.advance()? {
                return Poll::Ready(Ok(Some(done)));
            }
        }
    }

    /// Takes what it can of `chunk` into the state; a message when one is complete.
    fn advance(&mut self) -> Result<Option<Received>, IntakeError> {
        match &mut self.state {
            State::Header { header, have } => {
                let n = (HEADER - *have).min(self.chunk.len());
                header[*have..*have + n].copy_from_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                *have += n;
                if *have < HEADER {
                    return Ok(None);
                }
                let flag = header[0];
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                self.begin(flag, len)
            }
            State::Body { buf, len, .. } => {
                let n = (*len - buf.len()).min(self.chunk.len());
                buf.extend_from_slice(&self.chunk.split_to(n));
                if buf.len() < *len {
                    return Ok(None);
                }
                let State::Body { buf, held, .. } =
                    std::mem::replace(&mut self.state, State::header())
                else {
                    unreachable!("matched above")
                };
                let message = pb::WorkerMessage::decode(buf.freeze())?;
                Ok(Some(Received::Message(message, held)))
            }
            State::Skip { prefix, left, len } => {
                let n = (*left).min(self.chunk.len());
                let keep = (ID_PREFIX - prefix.len()).min(n);
                prefix.extend_from_slice(&self.chunk[..keep]);
                self.chunk.advance(n);
                *left -= n;
                if *left > 0 {
                    return Ok(None);
                }
                let refusal = Refusal {
                    request_id: request_id(prefix),
                    len: *len,
                    budget: self.budget.limit(),
                };
                self.state = State::header();
                Ok(Some(Received::Refused(refusal)))
            }
        }
    }

    /// A header has been read: where the message's bytes go.
    fn begin(&mut self, flag: u8, len: usize) -> Result<Option<Received>, IntakeError> {
        if flag != 0 {
            return Err(IntakeError::Compressed(flag));
        }
        if len > self.max_message {
            return Err(IntakeError::TooLarge {
                len,
                limit: self.max_message,
            });
        }
        let held = match len {
            0 => {
                self.state = State::header();
                return Ok(Some(Received::Message(pb::WorkerMessage::default(), None)));
            }
            n if n <= UNBUDGETED => None,
            n => match self.budget.take(n) {
                Some(held) => Some(held),
                None => {
                    self.state = State::Skip {
                        prefix: Vec::with_capacity(ID_PREFIX),
                        left: n,
                        len: n,
                    };
                    return Ok(None);
                }
            },
        };
        self.state = State::Body {
            buf: BytesMut::with_capacity(len),
            len,
            held,
        };
        Ok(None)
    }
}

/// The request id of a `WorkerMessage.result` from its first bytes, if they hold it.
fn request_id(mut prefix: &[u8]) -> Option<String> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let (field, wire) = decode_key(&mut prefix).ok()?;
    if field != 2 || wire != WireType::LengthDelimited {
        return None;
    }
    decode_varint(&mut prefix).ok()?;
    let (field, wire) = decode_key(&mut prefix).ok()?;
    if field != 1 || wire != WireType::LengthDelimited {
        return None;
    }
    let len = usize::try_from(decode_varint(&mut prefix).ok()?).ok()?;
    let id = prefix.get(..len)?;
    String::from_utf8(id.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, data: usize) -> Vec<u8> {
        pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Result(pb::FetchResult {
                request_id: id.into(),
                outcome: Some(pb::fetch_result::Outcome::Value(pb::FetchedValue {
                    data: vec![7; data],
                    ..Default::default()
                })),
            })),
        }
        .encode_to_vec()
    }

    #[test]
    fn the_request_id_is_read_from_the_first_bytes() {
        let id = "0f9e3c52-55b8-4c4e-9a43-1b2f0b8a5e11";
        let bytes = answer(id, 100_000);
        assert_eq!(request_id(&bytes[..ID_PREFIX]).as_deref(), Some(id));
        assert_eq!(request_id(&bytes[..10]), None);
        let register = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Register(pb::Register {
                job: "j".into(),
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert_eq!(request_id(&register), None);
    }

    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.push(0);
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// A body that yields `bytes` in chunks of `size`.
    fn body(bytes: Vec<u8>, size: usize) -> tonic::body::Body {
        let chunks: Vec<Result<http_body::Frame<Bytes>, Status>> = bytes
            .chunks(size)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )))
    }

    #[tokio::test]
    async fn messages_past_the_budget_are_refused_and_the_rest_read_across_chunks() {
        let budget = ByteBudget::new(150_000);
        let bytes = framed(&[answer("a", 100_000), answer("b", 100_000), answer("c", 10)]);
        let mut inbound = Inbound::new(
            body(bytes, 7_000),
            budget.clone(),
            1 << 20,
            Counter::default(),
        );
        let Some(Received::Message(first, held)) = inbound.message().await.unwrap() else {
            panic!("the first answer fits")
        };
        assert!(held.is_some());
        assert!(matches!(
            first.kind,
            Some(pb::worker_message::Kind::Result(_))
        ));
        match inbound.message().await.unwrap() {
            Some(Received::Refused(r)) => {
                assert_eq!(r.request_id.as_deref(), Some("b"));
                assert_eq!(r.budget, 150_000);
            }
            other => panic!("the second answer is past the budget: {other:?}"),
        }
        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(matches!(
            inbound.message().await.unwrap(),
            Some(Received::Message(_, None))
        ));
        assert!(inbound.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_message_or_over_the_limit_is_an_error() {
        let budget = ByteBudget::new(1 << 20);
        let mut bytes = framed(&[answer("a", 1000)]);
        bytes.truncate(500);
        let mut inbound = Inbound::new(
            body(bytes, 100),
            budget.clone(),
            1 << 20,
            Counter::default(),
        );
        assert!(matches!(
            inbound.message().await,
            Err(IntakeError::Truncated)
        ));
        let bytes = framed(&[answer("a", 2000)]);
        let mut inbound = Inbound::new(body(bytes, 100), budget, 1000, Counter::default());
        assert!(matches!(
            inbound.message().await,
            Err(IntakeError::TooLarge { limit: 1000, .. })
        ));
    }
}
