//! The Tributary device simulator: many MQTT devices publish predictable JSON readings at
//! QoS 1 through the gateway and count every PUBACK.
//!
//! The pure parts (message plan, pacing, templates, payloads, credentials, per-device
//! bookkeeping) are separate modules with their own tests; `device` and `run` do the I/O.
#![forbid(unsafe_code)]

pub mod credentials;
pub mod device;
pub mod ledger;
pub mod payload;
pub mod plan;
pub mod report;
pub mod run;
pub mod settings;
pub mod template;
