//! The broker, for the Queue controller and the autoscaler alike: how to reach a Queue's
//! RabbitMQ ([`endpoint`]), the kept-open connections and the one HTTP client to it
//! ([`Broker`]), the queue topology over AMQP ([`topology`], [`replay`]), the management
//! API ([`management`]) and the workloads' users through it ([`users`]), and what a queue
//! holds ([`readings`]).
//!
//! This module knows nothing of the controllers or the autoscaler: both use it, it uses
//! neither. URIs carry credentials: they are never logged and never put into error
//! messages.

pub mod endpoint;
pub mod management;
pub mod pool;
pub mod readings;
pub mod replay;
pub mod topology;
pub mod users;

pub use endpoint::Endpoint;
pub use management::Management;
pub use pool::{Amqp, Broker};
pub use readings::{QueueCounts, Reading};
pub use replay::{ReplayReport, ReplayRequest};
pub use users::BrokerUser;

use std::time::Duration;

/// Longest wait for any broker operation.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to the broker: {0}")]
    Connect(String),
    /// The broker refused an operation (for example different arguments on a queue).
    #[error("broker refused {operation} of queue {queue:?}: {reason}")]
    Refused {
        /// What was attempted.
        operation: &'static str,
        /// The broker queue.
        queue: String,
        /// The broker's reason.
        reason: String,
    },
    /// Deletion was refused because the queue still holds messages.
    #[error("queue {queue:?} still holds {messages} messages; set deleteNonEmpty to drop them")]
    NotEmpty {
        /// The broker queue.
        queue: String,
        /// Messages it holds.
        messages: u32,
    },
    /// The operation took longer than the timeout.
    #[error("broker operation timed out after {0:?}")]
    Timeout(Duration),
    /// The management API failed.
    #[error("management API: {0}")]
    Management(String),
}

/// `future` bounded by [`TIMEOUT`], its error mapped by `map`.
async fn timed<T, E: std::fmt::Display>(
    future: impl std::future::Future<Output = Result<T, E>>,
    map: impl FnOnce(String) -> BrokerError,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(map(error.to_string())),
        Err(_) => Err(BrokerError::Timeout(TIMEOUT)),
    }
}
