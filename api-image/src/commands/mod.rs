//! Commands to devices: `POST /v1/devices/{id}/commands/{name}` publishes one AMQP message
//! to the tenant's command exchange (`tributary_contract::command`), from which the gateway
//! that holds the device's connection delivers it.
//!
//! - [`request`]: the path, query and content type of a request, checked (pure);
//! - [`message`]: the AMQP properties of a command and the reading of a device's answer
//!   (pure);
//! - [`outcome`]: what the broker and the device made of a command, and its HTTP answer
//!   (pure);
//! - [`waiters`]: the bounded map of requests waiting for an answer;
//! - [`broker`]: the publisher's connection (reconnected with backoff), publishing with
//!   confirms, and the direct reply-to consumer on the same channel;
//! - [`handler`]: the endpoint, from the key's permission to the answer;
//! - [`openapi`]: the endpoint's part of the OpenAPI document.

pub mod broker;
pub mod handler;
pub mod message;
pub mod openapi;
pub mod outcome;
pub mod request;
pub mod waiters;

pub use broker::Commander;
