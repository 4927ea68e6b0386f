//! The AMQP connections the autoscaler keeps open between polls: one per broker, so a
//! Worker polled every few seconds costs a channel per reading, not a connection (which
//! the broker would log, authenticate and tear down each time).
//!
//! Keys are broker URIs, which carry credentials: they are never logged. A connection is
//! closed (cleanly: lapin sends `Connection.Close`) when its last holder drops it.

use crate::controller::broker::{self, BrokerError};
use lapin::Connection;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a connection no poll used stays open (its Workers were deleted or moved).
pub const IDLE_CLOSE: Duration = Duration::from_secs(120);

struct Open {
    connection: Arc<Connection>,
    last_used: Instant,
}

/// Open connections by broker URI.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<String, Open>>,
}

impl Connections {
    /// A connected connection to `uri`: the open one, or a new one when there is none or
    /// the broker closed it.
    pub async fn get(&self, uri: &str) -> Result<Arc<Connection>, BrokerError> {
        if let Some(open) = self.open.lock().await.get_mut(uri) {
            if open.connection.status().connected() {
                open.last_used = Instant::now();
                return Ok(open.connection.clone());
            }
        }
        // Connect without holding the lock: one unreachable broker must not hold up the
        // readings of Workers on other brokers.
        let connection = Arc::new(broker::connect(uri).await?);
        self.open.lock().await.insert(
            uri.to_owned(),
            Open {
                connection: connection.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(connection)
    }

    /// Drops the connection to `uri` after a failed reading, so the next poll reconnects.
    pub async fn forget(&self, uri: &str) {
        self.open.lock().await.remove(uri);
    }

    /// Closes the connections no poll used for [`IDLE_CLOSE`].
    pub async fn close_idle(&self) {
        let now = Instant::now();
        self.open
            .lock()
            .await
            .retain(|_, entry| now.duration_since(entry.last_used) < IDLE_CLOSE);
    }

    /// How many connections are open (for tests and logs).
    pub async fn len(&self) -> usize {
        self.open.lock().await.len()
    }

    /// Whether no connection is open.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_is_an_error_and_leaves_nothing_open() {
        let connections = Connections::default();
        // Port 1 on loopback: nothing listens there.
        let result = connections.get("amqp://guest:guest@127.0.0.1:1/%2f").await;
        assert!(matches!(result, Err(BrokerError::Connect(_))), "{result:?}");
        assert!(connections.is_empty().await);
        connections
            .forget("amqp://guest:guest@127.0.0.1:1/%2f")
            .await;
        connections.close_idle().await;
        assert!(connections.is_empty().await);
    }
}
