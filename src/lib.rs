//! The cachebackd wire contract (`cacheback.v1`), generated from
//! `proto/cacheback/v1/cacheback.proto` at build time. The daemon, the Rust client and the
//! tests all speak through these types, so there is exactly one definition of the protocol.
//! Beside the generated code: [`args`], the canonical encoding of args every client
//! shares, and [`wire`], the defaults and limits every party agrees on.

/// Package `cacheback.v1`: messages, the `Cacheback` client and server.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("cacheback.v1");
}

/// The encoded `FileDescriptorSet` of every proto file (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cacheback_descriptor.bin"));

pub mod args;
pub mod wire;

pub use prost_types::{Duration, Timestamp};
