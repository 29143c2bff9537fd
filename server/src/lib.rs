//! cachebackd: serves cached data at once and refreshes it in the background, with the fetch
//! code living in the app servers that register with it as workers.
//!
//! One module per concern: [`config`] (the command line and the TOML file), [`model`]
//! (validated names and configs), [`policy`] (the staleness rules, pure), [`store`] (sled),
//! [`workers`] (worker streams and dispatch), [`engine`] (single-flight, refresh
//! scheduling), [`service`] (the tonic service), [`worker_stream`] (one worker's stream),
//! [`convert`] (protobuf to model and back), [`subscriptions`] and [`subscribe_stream`] (the
//! near caches' events and their streams), and [`daemon`] (listeners, lifecycle and
//! shutdown). Operating it: [`admin`] (the admin service), [`health`] (gRPC health),
//! [`counters`] (what the engine counts), [`metrics`] (the Prometheus exporter), and [`systemd`] (readiness, watchdog, socket activation).
//! The command line (`cachebackd --help`, `check-config`, `ctl`) is the binary's own.

pub mod admin;
pub mod clock;
pub mod config;
pub mod convert;
pub mod counters;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod health;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod subscribe_stream;
pub mod subscriptions;
pub mod systemd;
#[cfg(test)]
mod testing;
pub mod worker_stream;
pub mod workers;
