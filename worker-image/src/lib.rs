//! The Tributary worker runtime: consume one queue, process each envelope (a CEL pipeline or
//! a custom container), write the result to every sink, acknowledge only when all confirmed.
#![forbid(unsafe_code)]

pub mod ack;
pub mod ack_window;
pub mod app;
pub mod batch;
pub mod config;
pub mod container;
pub mod expr;
pub mod field_path;
pub mod http;
pub mod http_client;
pub mod metrics;
pub mod outages;
pub mod pipeline;
pub mod process;
pub mod record;
pub mod sinks;
pub mod tls;

pub use app::Worker;
