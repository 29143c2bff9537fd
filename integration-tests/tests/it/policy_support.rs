//! Helpers of the tests of the protocol's additions (`policy_*`): Gets with `max_age`,
//! tagged Sets, InvalidateTags, and the worker answers beyond data and error. Additive to
//! the harness.

#![allow(dead_code)]

use cachebackd_proto::v1::{
    fetch_result, worker_message, FetchResult, FetchedAbsent, FetchedValue, GetRequest,
    GetResponse, InvalidateTagsRequest, InvalidateTagsResponse, NotModified, SetRequest,
    SetResponse, WorkerMessage,
};
use tonic::Status;

use crate::harness::*;

/// `Get` with `max_age` (seconds).
pub async fn try_get_max_age(
    c: &mut Client,
    job: &str,
    args: &[u8],
    max_age: f64,
) -> Result<GetResponse, Status> {
    c.get(GetRequest {
        job: job.into(),
        args: args.to_vec(),
        max_age: Some(dur(max_age)),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// `Get` with `peek`; panics on an error status.
pub async fn peek(c: &mut Client, job: &str, args: &[u8]) -> GetResponse {
    c.get(GetRequest {
        job: job.into(),
        args: args.to_vec(),
        peek: true,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|s| panic!("peek {job}: {s:?}"))
    .into_inner()
}

/// `Set` with tags.
pub async fn try_set_tagged(
    c: &mut Client,
    job: &str,
    args: &[u8],
    data: &[u8],
    tags: &[&str],
) -> Result<SetResponse, Status> {
    c.set(SetRequest {
        job: job.into(),
        args: args.to_vec(),
        data: data.to_vec(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

/// `InvalidateTags`.
pub async fn try_invalidate_tags(
    c: &mut Client,
    tags: &[&str],
) -> Result<InvalidateTagsResponse, Status> {
    c.invalidate_tags(InvalidateTagsRequest {
        tags: tags.iter().map(|t| t.to_string()).collect(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn result(request_id: &str, outcome: fetch_result::Outcome) -> WorkerMessage {
    WorkerMessage {
        kind: Some(worker_message::Kind::Result(FetchResult {
            request_id: request_id.into(),
            outcome: Some(outcome),
        })),
    }
}

/// A `FetchedValue` with a validator and tags.
pub fn value_with(request_id: &str, data: &[u8], validator: &[u8], tags: &[&str]) -> WorkerMessage {
    result(
        request_id,
        fetch_result::Outcome::Value(FetchedValue {
            data: data.to_vec(),
            validator: validator.to_vec(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }),
    )
}

/// A `FetchedAbsent`, with an optional lifetime (seconds) and tags.
pub fn absent_msg(request_id: &str, lifetime: Option<f64>, tags: &[&str]) -> WorkerMessage {
    result(
        request_id,
        fetch_result::Outcome::Absent(FetchedAbsent {
            lifetime: lifetime.map(dur),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }),
    )
}

/// A `NotModified`, with an optional lifetime (seconds).
pub fn not_modified_msg(request_id: &str, lifetime: Option<f64>) -> WorkerMessage {
    result(
        request_id,
        fetch_result::Outcome::NotModified(NotModified {
            lifetime: lifetime.map(dur),
        }),
    )
}
