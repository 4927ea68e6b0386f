//! [`Broker`]: the AMQP connections kept open between operations, one per broker, and the
//! one HTTP client of management calls. The Queue controller and the autoscaler share one,
//! so a Queue resynced or a Worker polled every few seconds costs a channel per operation,
//! not a connection (which the broker would log, authenticate and tear down each time).
//! Only a replay, which publishes, takes a connection of its own.
//!
//! Keys are broker URIs, which carry credentials: they are never logged. A connection is
//! closed (cleanly: lapin sends `Connection.Close`) when its last holder drops it; one that
//! failed an operation is dropped from the pool, so the next operation reconnects.

use super::management::{self, HttpClient, Management};
use super::readings::{self, QueueCounts, Reading};
use super::replay::{self, ReplayReport, ReplayRequest};
use super::topology;
use super::users::{self, BrokerUser};
use super::BrokerError;
use crate::build::queue::ArgValue;
use lapin::Connection;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a connection no operation used stays open (its Queues and Workers were
/// deleted or moved).
pub const IDLE_CLOSE: Duration = Duration::from_secs(120);

struct Open {
    connection: Arc<Connection>,
    last_used: Instant,
}

/// Which broker an AMQP operation goes to: its URI and, for a private CA, the PEM bundle
/// (credentials inside: never logged).
#[derive(Clone, Copy, Debug)]
pub struct Amqp<'a> {
    /// The `amqp://` or `amqps://` URI.
    pub uri: &'a str,
    /// PEM bundle of the broker's private CA.
    pub ca: Option<&'a str>,
}

impl<'a> From<&'a str> for Amqp<'a> {
    fn from(uri: &'a str) -> Self {
        Amqp { uri, ca: None }
    }
}

impl Amqp<'_> {
    /// The pool key: a broker reached with another CA is another connection.
    fn key(&self) -> String {
        match self.ca {
            Some(ca) => format!("{}\n{ca}", self.uri),
            None => self.uri.to_owned(),
        }
    }
}

/// Open AMQP connections by broker URI (and CA), and the management HTTP client.
pub struct Broker {
    open: Mutex<HashMap<String, Open>>,
    http: HttpClient,
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            open: Mutex::default(),
            http: management::http_client(),
        }
    }
}

impl Broker {
    /// A connected connection to `uri`: the open one, or a new one when there is none or
    /// the broker closed it.
    pub async fn connection(&self, target: Amqp<'_>) -> Result<Arc<Connection>, BrokerError> {
        let key = target.key();
        if let Some(open) = self.open.lock().await.get_mut(&key) {
            if open.connection.status().connected() {
                open.last_used = Instant::now();
                return Ok(open.connection.clone());
            }
        }
        // Connect without holding the lock: one unreachable broker must not hold up the
        // operations on other brokers.
        let connection = Arc::new(topology::connect(target).await?);
        self.open.lock().await.insert(
            key,
            Open {
                connection: connection.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(connection)
    }

    /// Drops the connection to `uri`, so the next operation reconnects.
    pub async fn forget(&self, target: Amqp<'_>) {
        self.open.lock().await.remove(&target.key());
    }

    /// After an operation on `connection`: a failure drops it from the pool (unless another
    /// operation already replaced it), so the next operation starts afresh.
    async fn settle<T>(
        &self,
        target: Amqp<'_>,
        connection: &Arc<Connection>,
        result: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        if result.is_err() {
            let key = target.key();
            let mut open = self.open.lock().await;
            if open
                .get(&key)
                .is_some_and(|o| Arc::ptr_eq(&o.connection, connection))
            {
                open.remove(&key);
            }
        }
        result
    }

    /// Closes the connections no operation used for [`IDLE_CLOSE`].
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

    /// [`topology::declare`] over the kept connection to `target`.
    pub async fn declare(
        &self,
        target: Amqp<'_>,
        queue: &str,
        args: &BTreeMap<String, ArgValue>,
        dead_letter: Option<(&str, &BTreeMap<String, ArgValue>)>,
    ) -> Result<u32, BrokerError> {
        let connection = self.connection(target).await?;
        let result = topology::declare(&connection, queue, args, dead_letter).await;
        self.settle(target, &connection, result).await
    }

    /// [`topology::declare_topic_exchange`] over the kept connection to `target`.
    pub async fn declare_topic_exchange(
        &self,
        target: Amqp<'_>,
        exchange: &str,
    ) -> Result<(), BrokerError> {
        let connection = self.connection(target).await?;
        let result = topology::declare_topic_exchange(&connection, exchange).await;
        self.settle(target, &connection, result).await
    }

    /// [`topology::inspect`] over the kept connection to `target`.
    pub async fn inspect(&self, target: Amqp<'_>, queue: &str) -> Result<Option<u32>, BrokerError> {
        let connection = self.connection(target).await?;
        let result = topology::inspect(&connection, queue).await;
        self.settle(target, &connection, result).await
    }

    /// [`topology::delete`] over the kept connection to `target`.
    pub async fn delete(
        &self,
        target: Amqp<'_>,
        queue: &str,
        dead_letter_queue: Option<&str>,
        allow_non_empty: bool,
    ) -> Result<(), BrokerError> {
        let connection = self.connection(target).await?;
        let result = topology::delete(&connection, queue, dead_letter_queue, allow_non_empty).await;
        self.settle(target, &connection, result).await
    }

    /// [`replay::replay`] over a connection of its own, closed afterwards: the replay
    /// publishes, and a broker under a resource alarm blocks publishing connections, which
    /// must not stall the declarations and readings on the kept one.
    pub async fn replay(
        &self,
        target: Amqp<'_>,
        request: &ReplayRequest<'_>,
    ) -> Result<ReplayReport, BrokerError> {
        let connection = topology::connect(target).await?;
        let result = replay::replay(&connection, request).await;
        topology::close_connection(&connection).await;
        result
    }

    /// [`readings::message_total`] over the kept connection to `target`.
    pub async fn message_total(
        &self,
        target: Amqp<'_>,
        management: Option<&Management>,
        queues: &[&str],
    ) -> Result<u64, BrokerError> {
        let connection = self.connection(target).await?;
        let result = readings::message_total(&connection, &self.http, management, queues).await;
        self.settle(target, &connection, result).await
    }

    /// [`readings::reading`] over the kept connection to `target`.
    pub async fn reading(
        &self,
        target: Amqp<'_>,
        management: Option<&Management>,
        queue: &str,
    ) -> Result<Reading, BrokerError> {
        let connection = self.connection(target).await?;
        let result = readings::reading(&connection, &self.http, management, queue).await;
        self.settle(target, &connection, result).await
    }

    /// [`readings::counts`] through the management API.
    pub async fn counts(
        &self,
        management: &Management,
        queue: &str,
        dead_letter_queue: Option<&str>,
    ) -> Result<QueueCounts, BrokerError> {
        readings::counts(&self.http, management, queue, dead_letter_queue).await
    }

    /// [`management::queue_info`] through the management API.
    pub async fn queue_info(
        &self,
        management: &Management,
        queue: &str,
    ) -> Result<serde_json::Value, BrokerError> {
        management::queue_info(&self.http, management, queue).await
    }

    /// [`users::ensure`] through the management API.
    pub async fn ensure_user(
        &self,
        management: &Management,
        user: &BrokerUser<'_>,
    ) -> Result<(), BrokerError> {
        users::ensure(&self.http, management, user).await
    }

    /// [`users::delete`] through the management API.
    pub async fn delete_user(
        &self,
        management: &Management,
        name: &str,
    ) -> Result<(), BrokerError> {
        users::delete(&self.http, management, name).await
    }

    /// [`management::running_nodes`] through the management API.
    pub async fn running_nodes(&self, management: &Management) -> Result<usize, BrokerError> {
        management::running_nodes(&self.http, management).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_is_an_error_and_leaves_nothing_open() {
        let broker = Broker::default();
        // Port 1 on loopback: nothing listens there.
        let uri = Amqp::from("amqp://guest:guest@127.0.0.1:1/%2f");
        let result = broker.connection(uri).await;
        assert!(matches!(result, Err(BrokerError::Connect(_))), "{result:?}");
        let declared = broker.declare(uri, "q", &BTreeMap::new(), None).await;
        assert!(
            matches!(declared, Err(BrokerError::Connect(_))),
            "{declared:?}"
        );
        assert!(broker.is_empty().await);
        broker.forget(uri).await;
        broker.close_idle().await;
        assert!(broker.is_empty().await);
    }

    #[tokio::test]
    async fn management_calls_reuse_one_kept_http_connection() {
        use axum::extract::ConnectInfo;
        use axum::routing::get;
        use std::net::SocketAddr;
        use std::sync::Mutex as StdMutex;

        // The management API stand-in records the client address of every request: one
        // kept-alive connection shows as one address.
        let peers: Arc<StdMutex<Vec<SocketAddr>>> = Arc::default();
        let seen = peers.clone();
        let app = axum::Router::new().route(
            "/api/nodes",
            get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("not poisoned").push(peer);
                    axum::Json(serde_json::json!([{"name": "rabbit@a", "running": true}]))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        let management = Management {
            base_url: format!("http://{address}"),
            username: "u".into(),
            password: "p".into(),
        };
        let broker = Broker::default();
        for _ in 0..3 {
            assert_eq!(broker.running_nodes(&management).await.expect("answer"), 1);
        }
        let peers = peers.lock().expect("not poisoned").clone();
        assert_eq!(peers.len(), 3);
        assert!(
            peers.iter().all(|peer| *peer == peers[0]),
            "one connection for all calls: {peers:?}"
        );
        server.abort();
    }
}
