//! The Tributary application API: devices, latest values, history with time buckets, and a
//! live stream, read from what the workers' sinks stored; and commands sent to devices
//! through the broker.
//!
//! Data plane: no Kubernetes dependencies; it runs standalone from its config file.
#![forbid(unsafe_code)]

pub mod backlog;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod handlers;
pub mod http;
pub mod keys;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod roster;
pub mod sql;
pub mod store;
pub mod stream;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_contract::api_config::ApiConfig;

use crate::backlog::Backlog;
use crate::commands::broker::BrokerAddress;
use crate::commands::Commander;
use crate::http::AppState;
use crate::keys::Keys;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::roster::Roster;
use crate::sql::Table;
use crate::store::{Postgres, RedisLatest};

/// Why the API cannot start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A value of the config is unusable.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A secret file cannot be read.
    #[error("cannot read {path}: {message}")]
    Secret {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {address}: {message}")]
    Listen {
        /// The address.
        address: String,
        /// The I/O error.
        message: String,
    },
}

fn read_secret(path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| StartError::Secret {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// A configured API, not yet serving.
pub struct Api {
    config: ApiConfig,
    state: AppState,
    live_uri: Option<String>,
    broker: Option<BrokerAddress>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("listen", &self.config.listen)
            .finish()
    }
}

impl Api {
    /// Checks the config and reads its secrets; connects to nothing yet.
    pub fn build(config: ApiConfig) -> Result<Self, StartError> {
        let keys = Keys::build(&config.api_keys, &config.rate_limit)
            .map_err(|e| StartError::Invalid(e.to_string()))?;
        let table = Table::new(&config.postgres).map_err(StartError::Invalid)?;
        let postgres = Postgres::new(
            read_secret(&config.postgres.url_file)?,
            config.postgres.connections,
            config.postgres.statement_timeout_ms,
        );
        let redis = match &config.redis {
            Some(redis) => Some(Arc::new(
                RedisLatest::new(&read_secret(&redis.url_file)?, &redis.key_template)
                    .map_err(StartError::Invalid)?,
            )),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let (hub, live_uri) = match &config.live {
            Some(live) => (
                Some(Arc::new(Hub::new(
                    live.client_buffer,
                    live.max_clients,
                    metrics.clone(),
                ))),
                Some(read_secret(&live.uri_file)?),
            ),
            None => (None, None),
        };
        let (commands, broker) = match &config.commands {
            Some(target) => (
                Some(Arc::new(Commander::new(
                    &config.tenant,
                    target,
                    Duration::from_millis(config.limits.request_timeout_ms.max(1)),
                    metrics.clone(),
                ))),
                Some(BrokerAddress {
                    uri: read_secret(&target.uri_file)?,
                    ca_file: target.ca_file.clone(),
                    max_delay: Duration::from_millis(target.reconnect_max_delay_ms),
                }),
            ),
            None => (None, None),
        };
        let state = AppState {
            limits: Arc::new(config.limits.clone()),
            keys: Arc::new(keys),
            table: Arc::new(table),
            postgres: Arc::new(postgres),
            redis,
            hub,
            commands,
            roster: Arc::new(Roster::default()),
            backlog: config
                .live
                .as_ref()
                .and_then(|live| live.backlog_queue.clone())
                .map(|queue| Arc::new(Backlog::new(queue))),
            metrics,
            stop: CancellationToken::new(),
            accepting: Arc::new(AtomicBool::new(true)),
        };
        Ok(Self {
            config,
            state,
            live_uri,
            broker,
        })
    }

    /// Binds the listener; the bound address (useful with port 0) and the server.
    pub async fn bind(self) -> Result<(std::net::SocketAddr, Server), StartError> {
        let listener =
            TcpListener::bind(&self.config.listen)
                .await
                .map_err(|e| StartError::Listen {
                    address: self.config.listen.clone(),
                    message: e.to_string(),
                })?;
        let address = listener.local_addr().map_err(|e| StartError::Listen {
            address: self.config.listen.clone(),
            message: e.to_string(),
        })?;
        Ok((
            address,
            Server {
                api: self,
                listener,
            },
        ))
    }
}

/// A bound API, ready to serve.
#[derive(Debug)]
pub struct Server {
    api: Api,
    listener: TcpListener,
}

impl Server {
    /// Serves until `shutdown`, then stops accepting, ends live streams, and gives requests
    /// in flight `shutdownGraceSeconds` to finish.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Server { api, listener } = self;
        let state = api.state.clone();
        let consumer = match (&api.config.live, &api.live_uri, &state.hub) {
            (Some(live), Some(uri), Some(hub)) => Some(tokio::spawn(live::run(
                live.clone(),
                uri.clone(),
                hub.clone(),
                state.backlog.clone(),
                state.stop.clone(),
            ))),
            _ => None,
        };
        let roster = api.config.device_roster_file.clone().map(|path| {
            tokio::spawn(roster::watch(
                path,
                state.roster.clone(),
                state.stop.clone(),
            ))
        });
        // The publisher outlives the live streams: commands in flight (some waiting for an
        // answer) get the grace period too.
        let publisher_stop = CancellationToken::new();
        let publisher = match (&state.commands, &api.broker) {
            (Some(commander), Some(address)) => Some(tokio::spawn(commands::broker::run(
                commander.clone(),
                address.clone(),
                publisher_stop.clone(),
            ))),
            _ => None,
        };
        let app = http::router(state.clone(), &api.config.cors_allowed_origins);
        tracing::info!(listen = %api.config.listen, keys = api.config.api_keys.len(), "serving the API");
        // Bounded connections: a cap, and a deadline for each request head (slow or idle
        // sockets cannot pile up).
        let limits = &api.config.limits;
        let bounds = tributary_http_server::Bounds {
            name: "api",
            header_timeout: Duration::from_secs(limits.header_timeout_seconds.max(1)),
            max_connections: limits.max_connections,
        };
        let stop_accepting = CancellationToken::new();
        let connections = TaskTracker::new();
        let serve = tokio::spawn(tributary_http_server::serve(
            listener,
            app,
            bounds,
            stop_accepting.clone(),
            connections.clone(),
        ));
        shutdown.cancelled().await;
        state.accepting.store(false, Ordering::Relaxed);
        // Live streams never finish on their own: end them now.
        state.stop.cancel();
        stop_accepting.cancel();
        let _ = serve.await;
        connections.close();
        let grace = Duration::from_secs(api.config.shutdown_grace_seconds);
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still running after the shutdown grace period; exiting");
        }
        publisher_stop.cancel();
        for task in [consumer, publisher, roster].into_iter().flatten() {
            let _ = task.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}
