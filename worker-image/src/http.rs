//! The operations endpoint: `/metrics`, `/healthz` (the process answers: its runtime is not
//! wedged; a lost broker is reconnected in-process, which a restart would not speed up),
//! `/readyz` (consuming, not shutting down) and `/status` (the targets it is waiting for, as
//! JSON, read by the operator).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tributary_service_kit as service_kit;

use crate::metrics::Metrics;
use crate::outages::Outages;

/// Health flags, flipped by the runtime.
#[derive(Debug, Default)]
pub struct Health {
    /// True while consuming.
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    outages: Arc<Outages>,
}

async fn status(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&state.outages.report()).unwrap_or_default(),
    )
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    service_kit::metrics::response(state.metrics.render())
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    service_kit::health::flag(state.health.ready.load(Ordering::Relaxed))
}

/// Binds the listener (so a bad address fails at start) and serves until `stop`.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    outages: Arc<Outages>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).await?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(service_kit::health::alive))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(AppState {
            health,
            metrics,
            outages,
        });
    Ok(service_kit::serve::spawn(listener, app, stop))
}
