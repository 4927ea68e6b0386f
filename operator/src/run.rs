//! `tributary-operator run`: leader election, the four controllers, the metrics and health
//! endpoint, and graceful shutdown on SIGTERM/SIGINT.

use crate::build::Images;
use crate::controller::{pdb::PdbApi, Context};
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::routing::get;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tributary_service_kit::{health, metrics as ops_metrics, serve, shutdown};

mod children;
mod controllers;

/// Settings of `run`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// Default images of the children.
    pub images: Images,
    /// Leader election: namespace of the Lease, or `None` to run without election.
    pub lease_namespace: Option<String>,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Extra labels on the PodMonitors and PrometheusRules the operator creates.
    pub monitoring_labels: std::collections::BTreeMap<String, String>,
    /// Whether webhook Sinks may point at loopback, link-local or the API server.
    pub allow_internal_webhooks: bool,
    /// Which images and Service types each namespace may choose.
    pub tenancy: crate::build::tenancy::TenantPolicy,
    /// The namespace of the operator's own pods, when it runs in one.
    pub operator_namespace: Option<String>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes configuration.
    #[error("no Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// The metrics endpoint could not listen.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// Leadership was lost: exit so that a fresh process re-elects.
    #[error("lost the leader Lease")]
    LostLease,
    /// Another Tributary operator acts on the same namespaces: two would fight over the
    /// same objects, so this one does not start.
    #[error(
        "another Tributary operator acts on the namespaces this one watches ({0}); \
         uninstall one of them, or give each its own namespaces (watchNamespaces)"
    )]
    AnotherOperator(String),
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// `/metrics`, `/healthz` and `/readyz` (200 `ok` once the controllers run, 503 before),
/// answered the way every Tributary process answers them (`tributary-service-kit`).
fn ops_router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { ops_metrics::response(s.metrics.render()) }),
        )
        .route("/healthz", get(health::alive))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                health::flag(s.ready.load(Ordering::Relaxed))
            }),
        )
        .with_state(state)
}

/// Resolves once `stop` carries `true` (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Serves `/metrics`, `/healthz` and `/readyz` in the background until `stop` fires.
async fn start_http(
    listen: SocketAddr,
    state: HttpState,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| RunError::Listen(listen, error))?;
    tracing::info!(listen = %listen, "serving /metrics, /healthz and /readyz");
    let cancel = CancellationToken::new();
    let cancel_on_stop = cancel.clone();
    tokio::spawn(async move {
        stopped(&mut stop).await;
        cancel_on_stop.cancel();
    });
    Ok(serve::spawn(listener, ops_router(state), cancel))
}

/// Sends `stop` on SIGTERM or SIGINT.
fn stop_on_signal(stop_tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        shutdown::signal().await;
        let _ = stop_tx.send(true);
    });
}

/// How leader election ended.
enum Election {
    /// This replica holds the Lease.
    Won,
    /// Stopped while waiting for the Lease.
    Stopped,
    /// Another Tributary operator acts on the same namespaces (described); the Lease is
    /// released and the operator stopped.
    Refused(String),
}

/// Waits for the leader Lease, then refuses to go on when another installation watches the
/// same namespaces (a second Helm release would fight the first over every object).
async fn elect(
    lock: &LeaseLock,
    client: &Client,
    stop_tx: &watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> Election {
    if !lock.acquire_unless_stopped(&mut stop).await {
        return Election::Stopped;
    }
    match crate::leader::other_operators(client, lock.lease(), lock.watched()).await {
        Ok(others) if !others.is_empty() => {
            let others = others.join("; ");
            tracing::error!(%others, "another Tributary operator acts on the same namespaces; not starting");
            if let Err(error) = lock.release().await {
                tracing::warn!(%error, "releasing the leader Lease failed");
            }
            let _ = stop_tx.send(true);
            return Election::Refused(others);
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot list other operators' Leases; going on without that check")
        }
    }
    Election::Won
}

/// The controllers' shared context.
async fn context(client: Client, settings: &Settings, metrics: Arc<Metrics>) -> Arc<Context> {
    Arc::new(Context {
        pdb: PdbApi::discover(&client).await,
        reads: Arc::new(crate::reads::Reads::new(client.clone())),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::build::FIELD_MANAGER.to_owned(),
                instance: Some(settings.identity.clone()),
            },
        ),
        client,
        images: settings.images.clone(),
        metrics,
        monitoring_labels: settings.monitoring_labels.clone(),
        broker: Arc::new(crate::broker::Broker::default()),
        sink_policy: crate::build::sink::SinkPolicy {
            allow_internal_webhooks: settings.allow_internal_webhooks,
        },
        tenancy: settings.tenancy.clone(),
        retries: Default::default(),
        registry: Default::default(),
        applied: Default::default(),
        operator_namespace: settings.operator_namespace.clone(),
    })
}

/// Runs the controllers of every watched namespace (or of all) until `stop` fires.
async fn run_namespaces(ctx: Arc<Context>, watched: &[String], stop: watch::Receiver<bool>) {
    let namespaces: Vec<Option<String>> = if watched.is_empty() {
        vec![None]
    } else {
        watched.iter().cloned().map(Some).collect()
    };
    let controllers = futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| controllers::run_controllers(ctx.clone(), ns, stop.clone())),
    );
    tokio::join!(
        controllers,
        crate::registry::collector::run(ctx.clone(), stop.clone()),
        crate::registry::roster::run(ctx.clone(), stop.clone())
    );
}

/// Runs the operator until SIGTERM/SIGINT (graceful) or loss of the leader Lease (error).
pub async fn run(settings: Settings) -> Result<(), RunError> {
    let config = kube::Config::infer().await?;
    let metrics = Arc::new(Metrics::new());
    let counted = crate::metrics::requests::CountRequests(metrics.api_requests.clone());
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&counted)
        .build();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let http = start_http(settings.listen, state, stop_rx.clone()).await?;
    stop_on_signal(stop_tx.clone());

    // Leader election: wait for the Lease, then keep renewing it in the background.
    let lost = Arc::new(AtomicBool::new(false));
    let lock = match &settings.lease_namespace {
        None => None,
        Some(namespace) => {
            let lock = Arc::new(LeaseLock::new(
                client.clone(),
                (namespace, &settings.lease_name),
                &settings.identity,
                15,
                &settings.namespaces,
            ));
            // A replica waiting for the Lease is a healthy stand-by, ready to take over: were
            // it unready, a rolling update (new pod up before the old one goes) would wait for
            // the new pod forever, since the old one keeps the Lease until it is stopped.
            ready.store(true, Ordering::Relaxed);
            match elect(&lock, &client, &stop_tx, stop_rx.clone()).await {
                Election::Won => {}
                Election::Stopped => {
                    let _ = http.await;
                    return Ok(());
                }
                Election::Refused(others) => {
                    let _ = http.await;
                    return Err(RunError::AnotherOperator(others));
                }
            }
            metrics.leader.set(1);
            tracing::info!(identity = %settings.identity, "acquired the leader Lease");
            lock.clone().keep_renewed(stop_tx.clone(), lost.clone());
            Some(lock)
        }
    };

    let ctx = context(client, &settings, metrics).await;
    tracing::info!(pdb = %ctx.pdb.api_version(), namespaces = ?settings.namespaces, "starting controllers");
    ready.store(true, Ordering::Relaxed);
    run_namespaces(ctx, &settings.namespaces, stop_rx).await;
    let _ = stop_tx.send(true);
    if let Some(lock) = lock.filter(|_| !lost.load(Ordering::Relaxed)) {
        if let Err(error) = lock.release().await {
            tracing::warn!(%error, "releasing the leader Lease failed");
        }
    }
    let _ = http.await;
    tracing::info!("stopped");
    if lost.load(Ordering::Relaxed) {
        return Err(RunError::LostLease);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One HTTP/1.1 GET against `addr`: (status line, body).
    async fn get_once(addr: SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }

    #[tokio::test]
    async fn the_ops_endpoint_answers_probes_and_scrapes_until_stopped() {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let ready = Arc::new(AtomicBool::new(false));
        let state = HttpState {
            metrics: Arc::new(Metrics::new()),
            ready: ready.clone(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = start_http(addr, state, stop_rx).await.expect("listens");
        assert_eq!(get_once(addr, "/healthz").await.0, "HTTP/1.1 200 OK");
        let (status, _) = get_once(addr, "/readyz").await;
        assert_eq!(
            status, "HTTP/1.1 503 Service Unavailable",
            "not ready before the controllers run"
        );
        ready.store(true, Ordering::Relaxed);
        assert_eq!(get_once(addr, "/readyz").await.0, "HTTP/1.1 200 OK");
        let (status, body) = get_once(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains("tributary_operator_"), "{body}");
        stop_tx.send(true).expect("stop");
        tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("the server stops when told")
            .expect("server task");
    }
}
