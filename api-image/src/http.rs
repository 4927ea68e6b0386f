//! The HTTP server: routes, key authentication and rate limits, CORS, limits, metrics, the
//! operations endpoints (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`) and the
//! dashboard (`/dashboard`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tributary_contract::api_config::ApiLimits;

use crate::commands::Commander;
use crate::keys::{Key, Keys};
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::query::BadParam;
use crate::sql::Table;
use crate::store::{Postgres, RedisLatest, StoreError};
use crate::{commands, dashboard, handlers, openapi, stream};

/// `GET`: devices registered or seen in the table.
pub const DEVICES: &str = "/v1/devices";
/// `GET`: the pipeline queue's depth.
pub const BACKLOG: &str = "/v1/backlog";
/// `GET`: a device's latest value.
pub const DEVICE_LATEST: &str = "/v1/devices/{id}/latest";
/// `GET`: a device's rows or buckets.
pub const DEVICE_HISTORY: &str = "/v1/devices/{id}/history";
/// `POST`: a command to a device (the name may hold `/`).
pub const DEVICE_COMMAND: &str = "/v1/devices/{id}/commands/{*name}";
/// `GET`: rows or buckets of a group of devices.
pub const GROUP_HISTORY: &str = "/v1/history";
/// `GET`: live messages as Server-Sent Events.
pub const STREAM: &str = "/v1/stream";
/// `GET`: live messages over a WebSocket.
pub const WEBSOCKET: &str = "/v1/ws";
/// `GET`: the OpenAPI document.
pub const OPENAPI: &str = "/openapi.json";
/// `GET`: liveness.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: readiness.
pub const READYZ: &str = "/readyz";
/// `GET`: Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// `GET`: the dashboard page (no key: it holds no data).
pub const DASHBOARD: &str = "/dashboard";
/// `GET`: the dashboard's scripts, styles and images.
pub const DASHBOARD_FILE: &str = "/dashboard/{file}";

/// Every route the server answers, for the OpenAPI document's check.
pub const ROUTES: [&str; 14] = [
    DEVICES,
    BACKLOG,
    DEVICE_LATEST,
    DEVICE_HISTORY,
    DEVICE_COMMAND,
    GROUP_HISTORY,
    STREAM,
    WEBSOCKET,
    OPENAPI,
    HEALTHZ,
    READYZ,
    METRICS,
    DASHBOARD,
    DASHBOARD_FILE,
];

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Limits on requests.
    pub limits: Arc<ApiLimits>,
    /// The configured keys.
    pub keys: Arc<Keys>,
    /// The table's names.
    pub table: Arc<Table>,
    /// The database.
    pub postgres: Arc<Postgres>,
    /// The Redis Sink's latest values, when configured.
    pub redis: Option<Arc<RedisLatest>>,
    /// Live clients, when live messages are configured.
    pub hub: Option<Arc<Hub>>,
    /// The command publisher, when commands are configured.
    pub commands: Option<Arc<Commander>>,
    /// The registered devices (empty without a roster file).
    pub roster: Arc<crate::roster::Roster>,
    /// The pipeline queue's depth, when the live source names the queue.
    pub backlog: Option<Arc<crate::backlog::Backlog>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled at shutdown: streams end, `/readyz` fails.
    pub stop: CancellationToken,
    /// False once shutting down.
    pub accepting: Arc<AtomicBool>,
}

/// An error answer: a status and a JSON `{"error": "..."}` body.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 for a device the key may not read, as for one that does not exist: a key learns
    /// nothing about other groups' devices.
    pub fn no_device() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no such device")
    }
}

impl From<BadParam> for ApiError {
    fn from(error: BadParam) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let status = match error {
            StoreError::BadQuery(_) => StatusCode::BAD_REQUEST,
            StoreError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({"error": self.message})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The key a request carries, after its rate limit admitted the request.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Key>);

/// The presented key: `Authorization: Bearer <key>`, or for the live endpoints (browsers'
/// `EventSource` and `WebSocket` cannot set headers) an `access_token` query parameter.
fn presented_key(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim().to_string());
    }
    let path = parts.uri.path();
    if path == STREAM || path == WEBSOCKET {
        let query = parts.uri.query()?;
        return query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "access_token").then(|| percent_decode(value))
        });
    }
    None
}

/// Decodes `%XX` escapes and `+` of a query value (invalid escapes stay as they are).
pub fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = presented_key(parts)
            .filter(|key| !key.is_empty() && key.len() <= 512)
            .and_then(|presented| state.keys.find(&presented));
        let Some(key) = key else {
            state.metrics.auth_failures.inc();
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a valid API key is required (Authorization: Bearer <key>)",
            ));
        };
        if let Err(wait) = key.bucket.take() {
            state.metrics.rate_limited(&key.name);
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit of this API key exceeded",
            );
            error.retry_after = Some(wait.ceil().max(1.0) as u64);
            return Err(error);
        }
        Ok(Caller(key))
    }
}

/// Counts every answer by route and status.
async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state
        .metrics
        .request(&route, status, started.elapsed().as_secs_f64());
    tracing::debug!(route = %route, status, "request");
    response
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ready = state.accepting.load(Ordering::Relaxed)
        && tokio::time::timeout(Duration::from_secs(2), state.postgres.ping())
            .await
            .unwrap_or(false);
    tributary_service_kit::health::flag(ready)
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    tributary_service_kit::metrics::response(state.metrics.render())
}

/// The document with this server's configured maxima (page size, devices per query, wait).
async fn openapi_document(State(state): State<AppState>) -> impl IntoResponse {
    let max_wait = state.commands.as_ref().map(|c| c.max_wait_seconds());
    Json(openapi::document_with(&openapi::Bounds::of(
        &state.limits,
        max_wait,
    )))
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

/// Gives every error answer the documented JSON body: axum's and tower's own refusals (a
/// path that is not UTF-8, a body over the limit, a method not allowed) come as plain text
/// or empty. Their status and headers (`Allow`, `Retry-After`) stay; the probes' plain
/// answers are left alone.
async fn json_errors(request: Request, next: Next) -> Response {
    let probe = [HEALTHZ, READYZ, METRICS].contains(&request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if probe || json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let body = serde_json::json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Answers a request still running after `limit` with a JSON 504 like every other error
/// (tower's timeout layer answers with an empty body, which the document does not describe).
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the request took longer than the API's request timeout",
        )
        .into_response(),
    }
}

/// The whole application.
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let timeout = Duration::from_millis(state.limits.request_timeout_ms.max(1));
    let max_bytes = state.limits.max_request_bytes;
    // Requests that answer once are bounded in time; live streams are not.
    let bounded = Router::new()
        .route(DEVICES, get(handlers::devices))
        .route(BACKLOG, get(handlers::backlog))
        .route(DEVICE_LATEST, get(handlers::latest))
        .route(DEVICE_HISTORY, get(handlers::device_history))
        .route(GROUP_HISTORY, get(handlers::group_history))
        .route(OPENAPI, get(openapi_document))
        .route(HEALTHZ, get(tributary_service_kit::health::alive))
        .route(READYZ, get(readyz))
        .route(METRICS, get(render_metrics))
        .route(DASHBOARD, get(dashboard::page))
        .route(DASHBOARD_FILE, get(dashboard::file))
        .layer(axum::middleware::from_fn_with_state(timeout, time_limit));
    let live = Router::new()
        .route(STREAM, get(stream::sse))
        .route(WEBSOCKET, get(stream::websocket));
    // A command may wait for its device's answer past the request timeout, by at most the
    // configured longest wait.
    let max_wait = state.commands.as_ref().map_or(0, |c| c.max_wait_seconds());
    let commands = Router::new()
        .route(DEVICE_COMMAND, post(commands::handler::send))
        .layer(axum::middleware::from_fn_with_state(
            timeout + Duration::from_secs(u64::from(max_wait)),
            time_limit,
        ));
    let mut app = bounded
        .merge(live)
        .merge(commands)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(max_bytes))
        .layer(RequestBodyLimitLayer::new(max_bytes))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state);
    if let Some(cors) = cors(cors_origins) {
        app = app.layer(cors);
    }
    app
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn bearer_header_or_live_query_token_is_the_key() {
        let parts = |uri: &str, auth: Option<&str>| {
            let mut builder = axum::http::Request::builder().uri(uri);
            if let Some(auth) = auth {
                builder = builder.header(header::AUTHORIZATION, auth);
            }
            builder.body(()).expect("request").into_parts().0
        };
        assert_eq!(
            presented_key(&parts("/v1/devices", Some("Bearer k1"))).as_deref(),
            Some("k1")
        );
        assert_eq!(
            presented_key(&parts("/v1/devices", Some("bearer  k1 "))).as_deref(),
            Some("k1")
        );
        assert_eq!(presented_key(&parts("/v1/devices", Some("Basic k1"))), None);
        assert_eq!(
            presented_key(&parts("/v1/stream?device=a&access_token=k%2B2", None)).as_deref(),
            Some("k+2")
        );
        // Only the live endpoints take a key in the query.
        assert_eq!(
            presented_key(&parts("/v1/devices?access_token=k", None)),
            None
        );
    }
}
