//! HTTP endpoints: device ingest (`POST /v1/publish/{topic}`) and the health/metrics
//! listener (`/healthz`, `/readyz`, `/metrics`).
//!
//! Ingest status codes: 202 accepted (after the broker confirmed, in `confirmed` mode),
//! 400 malformed, 401 unauthenticated, 403 topic not permitted, 413 too large, 429 rate
//! limited, 503 broker unavailable or draining.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;

use crate::auth::Credentials;
use crate::broker::PublishError;
use crate::ingest::{Gateway, IngestError};
use crate::metrics::{ProtocolLabel, RejectReason};
use crate::topics::validate_topic_name;

/// The device-facing ingest router.
pub fn ingest_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/publish/{*topic}", post(publish))
        .with_state(gateway)
}

/// The health and metrics router.
pub fn health_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    if gateway.draining.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !gateway.broker.is_connected() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker not connected\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gateway.metrics.encode(),
    )
        .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Credentials::None);
    };
    let value = value.to_str().map_err(|_| ())?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(Credentials::Token(token.trim().to_owned()));
    }
    let encoded = value.strip_prefix("Basic ").ok_or(())?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ())?;
    let text = String::from_utf8(decoded).map_err(|_| ())?;
    let (device, password) = text.split_once(':').ok_or(())?;
    Ok(Credentials::Password {
        device: device.to_owned(),
        password: password.as_bytes().to_vec(),
    })
}

async fn publish(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(credentials) = credentials(&headers) else {
        gateway.metrics.auth_failure(ProtocolLabel::Http, "none");
        return unauthorized();
    };
    let method = credentials.method();
    let device = match gateway.auth.authenticate(peer.ip(), credentials).await {
        Ok(device) => device,
        Err(_) => {
            gateway.metrics.auth_failure(ProtocolLabel::Http, method);
            return unauthorized();
        }
    };
    if validate_topic_name(&topic).is_err() {
        gateway
            .metrics
            .reject(ProtocolLabel::Http, RejectReason::Malformed);
        return error(StatusCode::BAD_REQUEST, "invalid topic");
    }
    let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(value)) => Some(value.to_owned()),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "invalid content type"),
    };
    let payload = match axum::body::to_bytes(body, gateway.limits.max_payload_bytes).await {
        Ok(payload) => payload,
        Err(_) => {
            gateway
                .metrics
                .reject(ProtocolLabel::Http, RejectReason::TooLarge);
            return error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
        }
    };
    let prepared =
        match gateway.prepare(&device, &topic, ProtocolLabel::Http, content_type, &payload) {
            Ok(prepared) => prepared,
            Err(refusal) => return refusal_response(&refusal),
        };
    if gateway.rate.try_take(&device).is_err() {
        gateway
            .metrics
            .reject(ProtocolLabel::Http, RejectReason::RateLimited);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(serde_json::json!({ "error": "rate limited" })),
        )
            .into_response();
    }
    if gateway.draining.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "gateway draining");
    }
    let Ok(_permit) = Arc::clone(&gateway.in_flight).acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "gateway draining");
    };
    match gateway.deliver(prepared, ProtocolLabel::Http).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"tributary\", Bearer",
        )],
        Json(serde_json::json!({ "error": "unauthenticated" })),
    )
        .into_response()
}

fn refusal_response(refusal: &IngestError) -> Response {
    let status = match refusal {
        IngestError::NotPermitted => StatusCode::FORBIDDEN,
        IngestError::NoRoute => StatusCode::FORBIDDEN,
        IngestError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        IngestError::Broker(PublishError::Unroutable(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        IngestError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &refusal.to_string())
}
