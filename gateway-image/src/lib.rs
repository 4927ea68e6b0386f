//! The Tributary gateway: devices connect over MQTT and HTTP, and every message it
//! acknowledges is durably queued in RabbitMQ.
//!
//! One module per job: [`mqtt`] (codec, sessions, listeners), [`http`] (ingest, health),
//! [`auth`], [`topics`] (permissions, routes), [`ingest`] (the shared message path),
//! [`commands`] (commands to devices and their responses),
//! [`broker`] (publisher confirms, reconnect), [`registry`] (the device table: devices,
//! credentials, extra topics, attributes, activity), [`metrics`], [`tls`], [`proxy_protocol`] and
//! [`handshake`] (what precedes a connection's protocol), and [`app`] (wiring).
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod broker;
pub mod commands;
pub mod handshake;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod mqtt;
pub mod proxy_protocol;
pub mod registry;
pub mod tls;
pub mod topics;
