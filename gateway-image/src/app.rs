//! Wiring: load the config, bind every listener, serve until shutdown, then drain.
//!
//! The health listener comes up first and stays up whatever the broker does, so
//! `/healthz` answers while the gateway keeps retrying an unreachable broker.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tributary_contract::gateway_config::{GatewayConfig, TlsListener};

use crate::auth::{AuthLoadError, Authenticator};
use crate::broker::Broker;
use crate::commands::Commands;
use crate::ingest::{Gateway, RateLimiter};
use crate::metrics::Metrics;
use crate::mqtt::registry::Sessions;
use crate::registry::{watch, Registry, RegistryLoadError};
use crate::topics::{Permissions, Router, TopicError};
use crate::{handshake, http, mqtt, tls};
use tributary_http_server::{self as http_listener, HEALTH_MAX_CONNECTIONS};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config file could not be read.
    #[error("reading config {path}")]
    ReadConfig {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("parsing config {path}")]
    ParseConfig {
        /// The file.
        path: String,
        /// The parse error.
        source: serde_yaml::Error,
    },
    /// A permission template is not a valid topic filter.
    #[error("permission template: {0}")]
    Permission(TopicError),
    /// A route's topic filter is invalid.
    #[error("route topic filter: {0}")]
    Route(TopicError),
    /// A `commands.subscribe` template is not a valid topic filter.
    #[error("commands subscribe template: {0}")]
    CommandTemplate(TopicError),
    /// An authentication source could not be loaded.
    #[error(transparent)]
    Auth(#[from] AuthLoadError),
    /// The device registry's keys or device CA could not be loaded.
    #[error(transparent)]
    Registry(#[from] RegistryLoadError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not bind.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Reads and parses a config file.
pub fn load_config(path: &Path) -> Result<GatewayConfig, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::ReadConfig {
        path: path.display().to_string(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| StartError::ParseConfig {
        path: path.display().to_string(),
        source,
    })
}

/// The addresses the gateway actually bound (port 0 resolves to a real port).
#[derive(Debug, Clone)]
pub struct Bound {
    /// Health and metrics.
    pub health: SocketAddr,
    /// Plain MQTT.
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS.
    pub mqtt_tls: Option<SocketAddr>,
    /// HTTP ingest.
    pub http: Option<SocketAddr>,
    /// HTTP ingest over TLS.
    pub http_tls: Option<SocketAddr>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// A started gateway.
pub struct Running {
    /// Where it listens.
    pub bound: Bound,
    /// The shared state (for tests: metrics, broker status).
    pub gateway: Arc<Gateway>,
    tracker: TaskTracker,
    broker_close: CancellationToken,
    broker_task: tokio::task::JoinHandle<()>,
    commands_close: CancellationToken,
    commands_task: Option<tokio::task::JoinHandle<()>>,
    health_stop: CancellationToken,
}

/// Builds the gateway, binds every listener and starts serving.
pub async fn start(config: GatewayConfig) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let permissions =
        Permissions::new(config.permissions.clone()).map_err(StartError::Permission)?;
    let router = Router::new(config.routes.clone()).map_err(StartError::Route)?;
    let sessions = Arc::new(Sessions::default());
    let registry = load_registry(&config, &sessions, &metrics)?;
    let auth = Arc::new(
        Authenticator::load(&config.auth)?
            .with_registry(registry.clone(), Some(Arc::clone(&metrics))),
    );
    let tls_configs = TlsConfigs::load(&config)?;
    let health_listener = bind(config.health_listen).await?;
    let health_stop = CancellationToken::new();
    if let (Some(registry), Some(files)) = (&registry, &config.auth.registry) {
        tokio::spawn(watch::watch(
            Arc::clone(registry),
            files.table_file.clone(),
            watch::POLL_INTERVAL,
            health_stop.clone(),
        ));
    }
    let commands_close = CancellationToken::new();
    let (commands, commands_task) = Commands::start(
        &config,
        Arc::clone(&metrics),
        registry.clone(),
        commands_close.clone(),
    )
    .map_err(StartError::CommandTemplate)?;
    let broker_close = CancellationToken::new();
    let (broker, broker_task) = Broker::start(
        config.broker.clone(),
        format!("tributary-gateway {}/{}", config.tenant, config.gateway),
        Arc::clone(&metrics),
        broker_close.clone(),
    );
    let gateway = Arc::new(Gateway {
        tenant: config.tenant.clone(),
        gateway: config.gateway.clone(),
        auth,
        permissions,
        router,
        broker,
        metrics,
        limits: config.limits.clone(),
        delivery: config.delivery,
        rate: RateLimiter::new(config.limits.messages_per_second, config.limits.burst),
        connections: Arc::new(Semaphore::new(config.limits.max_connections.max(1))),
        in_flight: Arc::new(Semaphore::new(config.limits.max_in_flight.max(1))),
        draining: CancellationToken::new(),
        sessions,
        registry,
        commands,
    });
    let mut bound = Bound {
        health: serve_health(health_listener, &gateway, &config, health_stop.clone()),
        mqtt: None,
        mqtt_tls: None,
        http: None,
        http_tls: None,
    };
    let tracker = TaskTracker::new();
    start_device_listeners(&config, &gateway, tls_configs, &tracker, &mut bound).await?;
    Ok(Running {
        bound,
        gateway,
        tracker,
        broker_close,
        broker_task,
        commands_close,
        commands_task,
        health_stop,
    })
}

/// Serves health and metrics until `stop`, on its own loop, cap and tasks: whatever the
/// ingest listener suffers, probes get answers. Returns the bound address.
fn serve_health(
    listener: TcpListener,
    gateway: &Arc<Gateway>,
    config: &GatewayConfig,
    stop: CancellationToken,
) -> SocketAddr {
    let addr = local(&listener, config.health_listen);
    let header_timeout = Duration::from_secs(config.limits.http_header_timeout_seconds.max(1));
    tokio::spawn(http_listener::serve(
        listener,
        http::health_router(Arc::clone(gateway)),
        http_listener::Bounds {
            name: "health",
            header_timeout,
            max_connections: HEALTH_MAX_CONNECTIONS,
        },
        stop,
        TaskTracker::new(),
    ));
    tracing::info!(%addr, "health and metrics listening");
    addr
}

/// The device registry, when `auth.registry` is set (its keys and device CA, then the
/// table file: a missing or invalid table is logged and the registry starts empty).
fn load_registry(
    config: &GatewayConfig,
    sessions: &Arc<Sessions>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Registry>>, StartError> {
    let Some(files) = &config.auth.registry else {
        return Ok(None);
    };
    let registry = Registry::load(files, Arc::clone(sessions), Arc::clone(metrics))?;
    Ok(Some(Arc::new(registry)))
}

/// The server TLS configurations of the TLS listeners the config names.
struct TlsConfigs {
    mqtt: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    http: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl TlsConfigs {
    fn load(config: &GatewayConfig) -> Result<Self, StartError> {
        let client_auth = config.auth.client_certificates.as_ref();
        let device_ca = config
            .auth
            .registry
            .as_ref()
            .and_then(|registry| registry.device_ca_file.as_deref());
        let build = |listener: Option<&TlsListener>, alpn: &[u8]| {
            listener
                .map(|listener| tls::server_config(listener, client_auth, device_ca, alpn))
                .transpose()
        };
        Ok(Self {
            mqtt: build(config.listeners.mqtt_tls.as_ref(), tls::ALPN_MQTT)?,
            http: build(config.listeners.http_tls.as_ref(), tls::ALPN_HTTP1)?,
        })
    }
}

/// Binds and serves the device listeners (MQTT, MQTT over TLS, HTTP ingest, HTTPS ingest)
/// the config names; their tasks join `tracker`, so the drain waits for them.
async fn start_device_listeners(
    config: &GatewayConfig,
    gateway: &Arc<Gateway>,
    tls_configs: TlsConfigs,
    tracker: &TaskTracker,
    bound: &mut Bound,
) -> Result<(), StartError> {
    let proxy_protocol = config.listeners.proxy_protocol;
    let unauthenticated = mqtt::places::Unauthenticated::default();
    if let Some(addr) = config.listeners.mqtt {
        let listener = bind(addr).await?;
        bound.mqtt = Some(local(&listener, addr));
        tracing::info!(addr = %local(&listener, addr), proxy_protocol, "mqtt listening");
        tokio::spawn(mqtt::server::serve_plain(
            Arc::clone(gateway),
            listener,
            proxy_protocol,
            unauthenticated.clone(),
            tracker.clone(),
        ));
    }
    if let (Some(listener_config), Some(tls_config)) =
        (&config.listeners.mqtt_tls, tls_configs.mqtt)
    {
        let addr = listener_config.listen;
        let listener = bind(addr).await?;
        bound.mqtt_tls = Some(local(&listener, addr));
        tracing::info!(addr = %local(&listener, addr), proxy_protocol, "mqtt tls listening");
        tokio::spawn(mqtt::server::serve_tls(
            Arc::clone(gateway),
            listener,
            tokio_rustls::TlsAcceptor::from(tls_config),
            proxy_protocol,
            unauthenticated,
            tracker.clone(),
        ));
    }
    start_http_listeners(config, gateway, tls_configs.http, tracker, bound).await
}

/// The plain and TLS HTTP ingest listeners: one router, one connection cap for both.
async fn start_http_listeners(
    config: &GatewayConfig,
    gateway: &Arc<Gateway>,
    tls_config: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    tracker: &TaskTracker,
    bound: &mut Bound,
) -> Result<(), StartError> {
    let proxy_protocol = config.listeners.proxy_protocol;
    let open = http_listener::ConnectionCap::new(config.limits.max_http_connections);
    let bounds = |name| http_listener::SharedBounds {
        name,
        header_timeout: Duration::from_secs(config.limits.http_header_timeout_seconds.max(1)),
        open: open.clone(),
    };
    if let Some(addr) = config.listeners.http {
        let listener = bind(addr).await?;
        bound.http = Some(local(&listener, addr));
        tracing::info!(addr = %local(&listener, addr), proxy_protocol, "http ingest listening");
        tracker.spawn(http_listener::serve_with(
            listener,
            http::ingest_router(Arc::clone(gateway)),
            bounds("http"),
            handshake::PlainHttp { proxy_protocol },
            gateway.draining.clone(),
            tracker.clone(),
        ));
    }
    if let (Some(listener_config), Some(tls_config)) = (&config.listeners.http_tls, tls_config) {
        let addr = listener_config.listen;
        let listener = bind(addr).await?;
        bound.http_tls = Some(local(&listener, addr));
        tracing::info!(addr = %local(&listener, addr), proxy_protocol, "https ingest listening");
        tracker.spawn(http_listener::serve_with(
            listener,
            http::ingest_router(Arc::clone(gateway)),
            bounds("https"),
            handshake::TlsHttp {
                proxy_protocol,
                acceptor: tokio_rustls::TlsAcceptor::from(tls_config),
                metrics: Arc::clone(&gateway.metrics),
            },
            gateway.draining.clone(),
            tracker.clone(),
        ));
    }
    Ok(())
}

impl Running {
    /// Drains: stop accepting, let sessions and requests finish their in-flight confirms
    /// and return the commands they hold to their queues (up to `deadline`), then close
    /// the commands and broker connections and the health listener.
    pub async fn drain(self, deadline: Duration) {
        tracing::info!("draining");
        self.gateway.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed with connections still open");
        }
        self.commands_close.cancel();
        if let Some(task) = self.commands_task {
            let _ = task.await;
        }
        self.broker_close.cancel();
        let _ = self.broker_task.await;
        self.health_stop.cancel();
        tracing::info!("drained");
    }
}

/// Runs the gateway until `shutdown` resolves, then drains.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = start(config).await?;
    shutdown.await;
    running.drain(Duration::from_secs(30)).await;
    Ok(())
}
