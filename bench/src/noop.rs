//! The baseline: the same `cacheback.v1.Cacheback` service, served by the same tonic server
//! settings as the daemon's (multi-threaded runtime, TCP_NODELAY, the same message limits),
//! doing no work. Its Get answers a FRESH response of the size the args name, and its
//! RegisterJob stream plays ping-pong: a window of FetchRequests, and one more for each
//! FetchResult. It runs as a child process (`cachebackd-bench serve-noop`), like the daemon,
//! so that both servers are measured the same way.

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use cachebackd_proto::v1::{
    self as pb, cacheback_server::Cacheback, cacheback_server::CachebackServer, daemon_message,
    get_result, worker_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

/// The daemon's message limit with its default settings (4 MiB of data, 4 KiB of args, 64 KiB
/// of framing), so that both servers are configured alike.
const MAX_MESSAGE_BYTES: usize = cachebackd_proto::wire::MAX_DATA_BYTES
    + cachebackd_proto::wire::MAX_ARGS_BYTES
    + cachebackd_proto::wire::MESSAGE_OVERHEAD_BYTES;
/// The largest Get payload the baseline serves.
const MAX_PAYLOAD: usize = 1024 * 1024;

/// Serves the baseline on `listen` until SIGTERM or SIGINT.
pub fn serve(listen: SocketAddr) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("serve-noop: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let service = CachebackServer::new(Noop::new())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let stop = async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        match Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serve-noop: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

struct Noop {
    payload: Vec<u8>,
    stored_at: prost_types::Timestamp,
    expires_at: prost_types::Timestamp,
}

impl Noop {
    fn new() -> Noop {
        let now = SystemTime::now();
        Noop {
            payload: vec![b'x'; MAX_PAYLOAD],
            stored_at: now.into(),
            expires_at: (now + Duration::from_secs(3600)).into(),
        }
    }
}

impl Noop {
    /// A FRESH response of the size `args` names.
    fn response(&self, args: &[u8]) -> Result<pb::GetResponse, Status> {
        let n = payload_size(args)
            .filter(|&n| n <= MAX_PAYLOAD)
            .ok_or_else(|| Status::invalid_argument("args must be [size]"))?;
        Ok(pb::GetResponse {
            state: pb::ItemState::Fresh as i32,
            // One copy, as any server that owns its data and hands prost a Vec makes.
            data: self.payload[..n].to_vec(),
            stored_at: Some(self.stored_at),
            expires_at: Some(self.expires_at),
            refresh_scheduled: false,
            fetched: false,
            ..Default::default()
        })
    }
}

/// The payload size a request's args name: `[100]` (or `[100,7]`, item 7 of a batch) asks
/// for 100 bytes.
pub fn payload_size(args: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(args).ok()?;
    let list = s.strip_prefix('[')?.strip_suffix(']')?;
    list.split(',').next()?.parse().ok()
}

type DaemonStream = Pin<Box<dyn Stream<Item = Result<pb::DaemonMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Cacheback for Noop {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        Ok(Response::new(self.response(&req.get_ref().args)?))
    }

    async fn get_many(
        &self,
        req: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let results = req
            .get_ref()
            .requests
            .iter()
            .map(|r| pb::GetResult {
                outcome: Some(match self.response(&r.args) {
                    Ok(response) => get_result::Outcome::Response(response),
                    Err(status) => get_result::Outcome::Error(pb::ItemError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::GetManyResponse { results }))
    }

    async fn set(&self, _: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        Ok(Response::new(pb::SetResponse {
            expires_at: Some(self.expires_at),
        }))
    }

    async fn invalidate(
        &self,
        _: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        Ok(Response::new(pb::InvalidateResponse::default()))
    }

    async fn delete(
        &self,
        _: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        Ok(Response::new(pb::DeleteResponse::default()))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::ItemEvent, Status>> + Send>>;

    /// Nothing ever changes here: the stream stays open, sending nothing, until the
    /// client ends it.
    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn invalidate_tags(
        &self,
        _: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateTagsResponse>, Status> {
        Ok(Response::new(pb::InvalidateTagsResponse {
            invalidated_before: Some(self.expires_at),
        }))
    }

    type RegisterJobStream = DaemonStream;

    /// Ping-pong: after Registered, `max_in_flight` FetchRequests, then one more for each
    /// FetchResult, until the worker ends its stream. The messages are shaped like the
    /// daemon's (a 36-character request id, short args, a deadline).
    async fn register_job(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::RegisterJobStream>, Status> {
        let mut inbound = req.into_inner();
        let window = match inbound.message().await? {
            Some(pb::WorkerMessage {
                kind: Some(worker_message::Kind::Register(r)),
            }) => r.max_in_flight.max(1) as usize,
            _ => return Err(Status::failed_precondition("Register must come first")),
        };
        let (tx, rx) = mpsc::channel(window + 2);
        let deadline: prost_types::Timestamp = (SystemTime::now() + Duration::from_secs(60)).into();
        tokio::spawn(async move {
            let registered = pb::DaemonMessage {
                kind: Some(daemon_message::Kind::Registered(pb::Registered {
                    worker_id: request_id(0),
                    config: Some(pb::JobConfig::default()),
                })),
            };
            if tx.send(Ok(registered)).await.is_err() {
                return;
            }
            let fetch = |n: u64| {
                Ok(pb::DaemonMessage {
                    kind: Some(daemon_message::Kind::Fetch(pb::FetchRequest {
                        request_id: request_id(n),
                        args: format!("[{}]", n % 100_000).into_bytes(),
                        reason: pb::FetchReason::Stale as i32,
                        deadline: Some(deadline),
                        ..Default::default()
                    })),
                })
            };
            let mut sent = 0u64;
            for _ in 0..window {
                sent += 1;
                if tx.send(fetch(sent)).await.is_err() {
                    return;
                }
            }
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(worker_message::Kind::Result(_)) = message.kind {
                    sent += 1;
                    if tx.send(fetch(sent)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A request id of the daemon's length (a UUID's 36 characters).
fn request_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_size_reads_the_bracketed_number() {
        assert_eq!(payload_size(b"[100]"), Some(100));
        assert_eq!(payload_size(b"[10240]"), Some(10240));
        assert_eq!(payload_size(b"[100,7]"), Some(100));
        assert_eq!(payload_size(b"100"), None);
        assert_eq!(request_id(7).len(), 36);
    }
}
