//! Integration tests: each test starts the real `cachebackd` binary and drives it over
//! gRPC, one test per rule of PROTOCOL.md, named after the rule. One test binary (a lean
//! build); one module per area.

mod harness;

mod bounds_calls;
mod bounds_connections;
mod bounds_memory;
mod bounds_store;
mod bounds_support;

mod client_additions;
mod client_attribute;
mod client_failover;
mod client_interop;
mod client_jobs;
mod client_near_cache;
mod client_support;
mod client_worker;
mod durability;
mod errors;
mod fetching;
mod fleet;
mod fleet_cluster;
mod fleet_support;
mod get_many;
mod listeners;
mod near_cache;
mod ops_admin;
mod ops_config;
mod ops_lifecycle;
mod ops_observability;
mod ops_support;
mod policy_absent;
mod policy_batch;
mod policy_conditional;
mod policy_early;
mod policy_reading;
mod policy_support;
mod policy_tags;
mod raw_grpc;
mod reads;
mod registration;
mod restart_count;
mod security_auth;
mod security_support;
mod security_tls;
mod store_damage;
mod workers;
mod writes;
