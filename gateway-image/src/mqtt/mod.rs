//! The MQTT 3.1.1 / 5.0 server: packet codec, per-connection sessions and listeners.

pub mod codec;
pub mod encode;
pub mod names;
pub mod places;
pub mod properties;
pub mod registry;
pub mod server;
pub mod session;
