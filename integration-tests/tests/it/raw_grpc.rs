//! gRPC calls spoken frame by frame over the `h2` crate, for what no gRPC client can be
//! made to do: send part of a message and hold it, send bytes that are not protobuf, or
//! read nothing of a response (a zero HTTP/2 window). Additive to the harness.

#![allow(dead_code)]

use bytes::{Buf, Bytes, BytesMut};
use cachebackd_proto::v1::{daemon_message, DaemonMessage};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use prost::Message;
use tokio::net::TcpStream;

use crate::harness::{job_config, register_msg, within};

/// A gRPC message's header: not compressed, then the length.
pub fn header(len: usize) -> [u8; 5] {
    let l = (len as u32).to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// `message` as one gRPC frame (header and bytes).
pub fn framed(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&header(body.len()));
    out.extend_from_slice(&body);
    out.freeze()
}

/// An HTTP/2 connection to the daemon, closed when dropped (so that a daemon stopped
/// after the test need not wait for it).
pub struct Conn {
    pub h2: SendRequest<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to the daemon; `window` is the initial window of every stream the daemon sends
/// on (0: it can send no data at all).
pub async fn connect(port: u16, window: u32) -> Conn {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (h2, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .max_concurrent_streams(10_000)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Conn { h2, task }
}

/// The sending side of one call.
pub struct Sender(pub SendStream<Bytes>);

pub const REGISTER_JOB: &str = "/cacheback.v1.Cacheback/RegisterJob";
pub const GET: &str = "/cacheback.v1.Cacheback/Get";

/// Opens `method` (as [`GET`]) without sending anything yet: its sender, and its response
/// headers to come.
pub async fn open(conn: &mut Conn, method: &str) -> (Sender, h2::client::ResponseFuture) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let ready = conn
        .h2
        .clone()
        .ready()
        .await
        .expect("a stream may be opened");
    conn.h2 = ready;
    let (response, send) = conn.h2.send_request(request, false).expect("send request");
    (Sender(send), response)
}

impl Sender {
    /// Sends `bytes` (any part of the request's messages) as the flow control lets it:
    /// once this returns, the daemon has taken all but at most its windows' worth.
    pub async fn send(&mut self, mut bytes: Bytes, end: bool) {
        while !bytes.is_empty() {
            self.0.reserve_capacity(bytes.len());
            let room = std::future::poll_fn(|cx| self.0.poll_capacity(cx))
                .await
                .expect("the stream is open")
                .expect("capacity");
            let part = bytes.split_to(room.min(bytes.len()));
            self.0
                .send_data(part, end && bytes.is_empty())
                .expect("send data");
        }
    }
}

/// The response of a call: its HTTP status and, when the call ended in its headers (a
/// "trailers-only" answer), its grpc-status and grpc-message.
pub struct Opened {
    pub body: RecvStream,
    pub grpc_status: Option<(i32, String)>,
}

/// Waits for the response headers of `call`.
pub async fn opened(response: h2::client::ResponseFuture) -> Opened {
    let response = response.await.expect("response headers");
    assert_eq!(response.status(), 200, "{response:?}");
    let grpc_status = status_of(response.headers());
    Opened {
        body: response.into_body(),
        grpc_status,
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| s.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the messages of a response body as they come.
pub struct Messages {
    body: RecvStream,
    buf: BytesMut,
}

impl Messages {
    pub fn new(body: RecvStream) -> Messages {
        Messages {
            body,
            buf: BytesMut::new(),
        }
    }

    /// The next message, or the call's end: `Err((grpc-status, grpc-message))`, where
    /// status 0 is a clean end.
    pub async fn next<M: Message + Default>(&mut self) -> Result<M, (i32, String)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let m = self.buf.split_to(len);
                    return Ok(M::decode(m.freeze()).expect("a message of the daemon"));
                }
            }
            match self.body.data().await {
                Some(Ok(data)) => {
                    let _ = self.body.flow_control().release_capacity(data.len());
                    self.buf.extend_from_slice(&data);
                }
                Some(Err(e)) => return Err((-1, e.to_string())),
                None => {
                    let trailers = self.body.trailers().await.ok().flatten();
                    return Err(trailers
                        .as_ref()
                        .and_then(status_of)
                        .unwrap_or((-1, "no grpc-status".into())));
                }
            }
        }
    }
}

/// A worker of `job` on its own HTTP/2 stream of `conn`, registered.
pub async fn raw_worker(conn: &mut Conn, job: &str, max_in_flight: u32) -> (Sender, Messages) {
    let (mut send, response) = open(conn, REGISTER_JOB).await;
    let register = register_msg(job, job_config(300.0, 30.0), max_in_flight, "raw");
    send.send(framed(&register), false).await;
    let mut messages = Messages::new(within("headers", opened(response)).await.body);
    let first = within("Registered", messages.next::<DaemonMessage>()).await;
    assert!(
        matches!(
            first,
            Ok(DaemonMessage {
                kind: Some(daemon_message::Kind::Registered(_))
            })
        ),
        "{first:?}"
    );
    (send, messages)
}

/// `message` framed, split where `hold_back` bytes are left to send.
pub fn framed_split(message: &impl Message, hold_back: usize) -> (Bytes, Bytes) {
    let mut all = framed(message);
    let rest = all.split_off(all.len() - hold_back);
    (all, rest)
}
