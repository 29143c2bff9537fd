//! cachebackd: serves cached data at once and refreshes it in the background, with the fetch
//! code living in the app servers that register with it as workers.
//!
//! The library is the daemon; its public face is what the `cachebackd` binary needs:
//! [`config`] (the settings), [`daemon`] (run it), [`shutdown`] (stop it), [`systemd`]
//! (the sockets systemd passed), [`security`] (the principals and TLS files: load, check,
//! reload on SIGHUP; `hash-token`, `gen-token`) and [`error`]. The command line (`cachebackd --help`,
//! `check-config`, `ctl`) is the binary's own.
//!
//! Inside, one module per concern: `model` (validated names and configs), `policy` (the
//! staleness rules, pure), `store` (sled), `workers` (dispatch to registered workers),
//! `engine` (single-flight, refresh scheduling), `service` (the tonic service),
//! `worker_stream` (one worker's stream), `subscriptions` and `subscribe_stream` (the near
//! caches' events and their streams), `convert` (protobuf to model and back), `clock`
//! (wall time, injectable), `admin` (the admin service), `health` (gRPC health),
//! `counters` (what the engine counts), `metrics` (the Prometheus exporter), `auth`
//! (principals, roles, the one auth layer) and `tls` (TLS and mTLS on TCP listeners).
//! `fleet` is the Redis a fleet of daemons shares (`--store redis://...`).
//! Bounds: `budget` (the memory one call may pin), `connections` (how many, idle ones,
//! accept back-off), `oversize` (requests over the message limit) and `logs`
//! (rate-limited, clipped log lines).

mod admin;
mod auth;
mod budget;
mod clock;
pub mod config;
mod connections;
mod convert;
mod counters;
pub mod daemon;
mod engine;
pub mod error;
mod fleet;
mod health;
mod intake;
mod logs;
mod metrics;
mod model;
mod oversize;
mod policy;
pub mod security;
mod service;
pub mod shutdown;
mod store;
mod subscribe_stream;
mod subscriptions;
pub mod systemd;
mod tls;
mod unsent;
mod worker_stream;
mod workers;
