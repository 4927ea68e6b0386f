//! The wire contract shared by the operator and the data plane (gateway, worker, api).
//!
//! Kept free of Kubernetes dependencies so the data-plane binaries stay small and run
//! standalone with the same files the operator renders.
#![forbid(unsafe_code)]

pub mod api_config;
pub mod cel_bounds;
pub mod command;
pub mod config_file;
pub mod device_roster;
pub mod device_table;
pub mod envelope;
pub mod gateway_config;
pub mod redis_key;
pub mod sql;
pub mod worker_config;
pub mod worker_status;
