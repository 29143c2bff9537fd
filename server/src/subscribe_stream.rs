//! One near cache's `Subscribe` stream: a task reads its requests (adds and removes, each
//! item checked as a Get's would be) into the stream's subscriptions, and the stream sends
//! its outbox's events as `ItemEvent`s. It ends with the first bad request's status, with
//! RESET once it falls behind, with UNAVAILABLE when the daemon closes, and silently when
//! the reader goes (its subscriptions go with it).

use std::pin::Pin;

use cachebackd_proto::v1 as pb;
use futures_util::stream;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::convert;
use crate::engine::Engine;
use crate::error::Error;
use crate::model::{ItemKey, JobName};
use crate::shutdown::Shutdown;
use crate::subscriptions::{Changer, Next, Registration};

/// What the daemon sends down a Subscribe stream.
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ItemEvent, Status>> + Send>>;

/// Whether the stream's caller may read a job's items: each `add` is checked by it (the
/// authorization of Get, applied per item), and a refusal ends the stream with its status.
pub(crate) type ReadCheck = Box<dyn Fn(&JobName) -> Result<(), Status> + Send + Sync>;

/// Serves `inbound` in its own task (owned by `shutdown`); the stream of events back.
pub(crate) fn open(
    engine: Engine,
    shutdown: Shutdown,
    inbound: Streaming<pb::SubscribeRequest>,
    may_read: ReadCheck,
) -> EventStream {
    let registration = engine.subscriptions().open();
    let (refused_tx, refused_rx) = oneshot::channel();
    let reader = Reader {
        engine: engine.clone(),
        changer: registration.changer(),
        may_read,
    };
    let closing = shutdown.clone();
    shutdown.spawn(async move {
        tokio::select! {
            _ = closing.closing() => {}
            result = reader.run(inbound) => {
                if let Err(status) = result {
                    let _ = refused_tx.send(status);
                }
            }
        }
    });
    let state = Some(Sending {
        registration,
        refused: Some(refused_rx),
        engine,
        shutdown,
    });
    Box::pin(stream::unfold(state, |state| async move {
        let mut state = state?;
        let next = state.next().await;
        match next {
            Ok(Next::Event(event)) => Some((Ok(convert::item_event(event)), Some(state))),
            Ok(Next::Reset) => Some((Ok(convert::reset_event(state.engine.now())), None)),
            Err(status) => Some((Err(status), None)),
        }
    }))
}

/// The sending half's state: dropping it (the stream ended or the reader went) forgets the
/// stream's subscriptions.
struct Sending {
    registration: Registration,
    /// The reader's refusal; `None` once the reader ended without one (the caller stopped
    /// sending but may still read: events go on until it goes).
    refused: Option<oneshot::Receiver<Status>>,
    engine: Engine,
    shutdown: Shutdown,
}

impl Sending {
    /// The next event, or the status that ends the stream.
    async fn next(&mut self) -> Result<Next, Status> {
        loop {
            let outbox = self.registration.outbox();
            tokio::select! {
                biased;
                _ = self.shutdown.closing() => return Err(Status::from(Error::ShuttingDown)),
                refused = async { self.refused.as_mut().expect("guarded").await },
                    if self.refused.is_some() => match refused {
                    Ok(status) => return Err(status),
                    Err(_) => self.refused = None,
                },
                next = outbox.next() => return Ok(next),
            }
        }
    }
}

/// The receiving half: applies each request to the subscriptions.
struct Reader {
    engine: Engine,
    changer: Changer,
    may_read: ReadCheck,
}

impl Reader {
    async fn run(self, mut inbound: Streaming<pb::SubscribeRequest>) -> Result<(), Status> {
        while let Some(request) = inbound.message().await? {
            let add = self.keys(request.add, true)?;
            let remove = self.keys(request.remove, false)?;
            self.changer.change(add, remove)?;
        }
        Ok(())
    }

    fn keys(&self, refs: Vec<pb::ItemRef>, adding: bool) -> Result<Vec<ItemKey>, Status> {
        refs.into_iter()
            .map(|r| {
                let job = JobName::parse(&r.job, self.engine.limits())?;
                self.engine.limits().check_args(&r.args)?;
                if adding {
                    (self.may_read)(&job)?;
                }
                Ok(ItemKey::new(&job, &r.args))
            })
            .collect()
    }
}
