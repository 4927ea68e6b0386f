//! HTTP endpoints: device ingest (`POST /v1/publish/{topic}`) and the health/metrics
//! listener (`/healthz`, `/readyz`, `/metrics`).
//!
//! Ingest status codes: 202 accepted (after the broker confirmed, in `confirmed` mode),
//! 400 malformed, 401 unauthenticated, 403 topic not permitted, 408 body not received in
//! time, 413 too large (at once when the declared `Content-Length` is), 429 rate limited,
//! 503 broker unavailable or draining, or authentication busy or throttled (`Retry-After`).
//!
//! Both routers are served by `tributary_http_server`, which bounds connections and
//! request heads. The ingest router serves the plain and the TLS listener alike; on TLS,
//! a verified client certificate authenticates the device.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use base64::Engine;
use tributary_contract::device_table::{STATUS_PATH, TABLE_PATH};

use crate::auth::{AuthError, Credentials};
use crate::broker::PublishError;
use crate::handshake::CertificateDevice;
use crate::ingest::{Gateway, IngestError};
use crate::metrics::{ProtocolLabel, RejectReason};
use crate::registry::activity::Event;
use crate::registry::endpoints;
use crate::topics::validate_topic_name;

/// The device-facing ingest router.
pub fn ingest_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/publish/{*topic}", post(publish))
        .merge(crate::commands::http::router())
        .with_state(gateway)
}

/// The health and metrics router, with the device registry's endpoints (404 without a
/// registry).
pub fn health_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(tributary_service_kit::health::alive))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route(TABLE_PATH, put(endpoints::put_table))
        .route(STATUS_PATH, get(endpoints::status))
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
    tributary_service_kit::metrics::response(gateway.metrics.encode())
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// What the request presents: a verified client certificate (HTTPS) stands for the
/// device, as on MQTT over TLS; otherwise the `Authorization` header, if any.
fn credentials(
    certificate: Option<CertificateDevice>,
    headers: &HeaderMap,
) -> Result<Credentials, ()> {
    if let Some(CertificateDevice(peer)) = certificate {
        return Ok(Credentials::Certificate(peer));
    }
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
    certificate: Option<Extension<CertificateDevice>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Before anything costs CPU, and without reading a byte of the body.
    if declared_length(&headers).is_some_and(|length| length > gateway.limits.max_payload_bytes) {
        gateway
            .metrics
            .reject(ProtocolLabel::Http, RejectReason::TooLarge);
        return closing(error(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"));
    }
    let device = match authenticate(&gateway, peer, certificate, &headers).await {
        Ok(device) => device,
        Err(response) => return response,
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
    let payload = match read_body(body, &gateway).await {
        Ok(payload) => payload,
        Err(response) => return response,
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
        gateway.record(&device, Event::Rejected);
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

/// Authenticates a device request (client certificate, bearer token or basic password),
/// as the publish endpoint does; the refusal's response otherwise.
pub(crate) async fn authenticate(
    gateway: &Gateway,
    peer: SocketAddr,
    certificate: Option<Extension<CertificateDevice>>,
    headers: &HeaderMap,
) -> Result<String, Response> {
    let Ok(credentials) = credentials(certificate.map(|Extension(device)| device), headers) else {
        gateway.metrics.auth_failure(ProtocolLabel::Http, "none");
        return Err(unauthorized());
    };
    let method = credentials.method();
    gateway
        .auth
        .authenticate(peer.ip(), credentials)
        .await
        .map_err(|refusal| {
            gateway.metrics.auth_failure(ProtocolLabel::Http, method);
            match refusal {
                AuthError::Denied => unauthorized(),
                // Not a verdict on the credentials: the device should come back.
                AuthError::Throttled | AuthError::Busy => try_later(),
            }
        })
}

/// The declared `Content-Length`, when there is a valid one (hyper already refused
/// malformed and conflicting ones).
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<usize> {
    let value = headers.get(header::CONTENT_LENGTH)?.to_str().ok()?;
    // A length too big for usize is certainly over the limit.
    Some(
        value
            .trim()
            .parse::<u64>()
            .ok()?
            .try_into()
            .unwrap_or(usize::MAX),
    )
}

/// Reads the whole body within the payload limit and the body deadline. A body that is too
/// large gets 413; one that does not arrive in time, or whose connection fails, gets 408
/// (the client may never read it). Both close the connection, since the rest of the body
/// may still be on its way.
pub(crate) async fn read_body(body: Body, gateway: &Gateway) -> Result<bytes::Bytes, Response> {
    let deadline = Duration::from_secs(gateway.limits.http_body_timeout_seconds.max(1));
    let limit = gateway.limits.max_payload_bytes;
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(payload)) => Ok(payload),
        Ok(Err(failure)) if is_length_limit(&failure) => {
            gateway
                .metrics
                .reject(ProtocolLabel::Http, RejectReason::TooLarge);
            Err(closing(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload too large",
            )))
        }
        Ok(Err(failure)) => {
            tracing::debug!(error = %failure, "http body read failed");
            Err(closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "body not received",
            )))
        }
        Err(_) => {
            tracing::debug!(seconds = deadline.as_secs(), "http body deadline passed");
            Err(closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "body not received in time",
            )))
        }
    }
}

/// Whether a body error is the payload limit (rather than the connection failing).
pub(crate) fn is_length_limit(failure: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(failure);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Marks a response as the last on its connection.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

pub(crate) fn unauthorized() -> Response {
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

/// 503 with `Retry-After`: the password checks are busy or this device id is throttled.
pub(crate) fn try_later() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "2")],
        Json(serde_json::json!({ "error": "authentication busy, try again later" })),
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
