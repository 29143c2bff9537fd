//! cachebackd: serves cached data at once and refreshes it in the background, with the fetch
//! code living in the app servers that register with it as workers.
//!
//! One module per concern: [`config`] (the command line), [`model`] (validated names and
//! configs), [`policy`] (the staleness rules, pure), [`store`] (sled), [`workers`] (worker
//! streams and dispatch), [`engine`] (single-flight, refresh scheduling), [`service`] (the
//! tonic service), and [`daemon`] (listeners, lifecycle and shutdown).

pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod model;
pub mod policy;
pub mod service;
pub mod store;
pub mod workers;
