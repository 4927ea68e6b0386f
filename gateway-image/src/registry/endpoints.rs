//! The operator's endpoints on the health listener, present only with a registry:
//! `PUT /v1/devices/table` (a gzip JSON table; 204 applied, 400 invalid, 401 wrong token,
//! 404 no registry, 408 body too slow, 409 older than the current table, 413 too large)
//! and `GET /v1/devices/status` (the [`DeviceReport`](tributary_contract::device_table::DeviceReport)).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tributary_contract::device_table::{MAX_TABLE_BODY_BYTES, MAX_TABLE_JSON_BYTES};

use super::table::{decode_table, TableError};
use super::{ApplyError, Registry};
use crate::ingest::Gateway;
use crate::metrics::TableSource;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Why an operator request was refused before its body.
enum Refusal {
    /// No registry is configured.
    NoRegistry,
    /// The bearer token is missing or wrong.
    Unauthorized,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::NoRegistry => error(StatusCode::NOT_FOUND, "no device registry configured"),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": "unauthenticated" })),
            )
                .into_response(),
        }
    }
}

/// The registry when the request carries its sync token.
fn authorized<'a>(gateway: &'a Gateway, headers: &HeaderMap) -> Result<&'a Arc<Registry>, Refusal> {
    let registry = gateway.registry.as_ref().ok_or(Refusal::NoRegistry)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if registry.token_matches(token) => Ok(registry),
        _ => Err(Refusal::Unauthorized),
    }
}

/// `GET /v1/devices/status`.
pub async fn status(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match authorized(&gateway, &headers) {
        Ok(registry) => Json(registry.report()).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `PUT /v1/devices/table`.
pub async fn put_table(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let registry = match authorized(&gateway, &headers) {
        Ok(registry) => Arc::clone(registry),
        Err(refusal) => return refusal.into_response(),
    };
    if declared_too_large(&headers) {
        gateway.metrics.table_load(TableSource::Push, "invalid");
        return closing(error(StatusCode::PAYLOAD_TOO_LARGE, "table body too large"));
    }
    let deadline = Duration::from_secs(gateway.limits.http_body_timeout_seconds.max(1));
    let gzip = match read_bounded(body, deadline).await {
        Ok(gzip) => gzip,
        Err(refusal) => {
            gateway.metrics.table_load(TableSource::Push, "invalid");
            return refusal;
        }
    };
    // Decompressing and parsing up to 64 MiB of JSON is not for the async threads.
    let applied = tokio::task::spawn_blocking(move || {
        let table = decode_table(&gzip, MAX_TABLE_JSON_BYTES)?;
        registry.apply(table, TableSource::Push)
    })
    .await;
    match applied {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(ApplyError::Stale { .. })) => {
            error(StatusCode::CONFLICT, "older than the current table")
        }
        Ok(Err(ApplyError::Invalid(invalid))) => {
            gateway.metrics.table_load(TableSource::Push, "invalid");
            tracing::info!(error = %invalid, "pushed device table refused");
            match invalid {
                TableError::TooLarge(_) => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "decompressed table too large",
                ),
                other => error(StatusCode::BAD_REQUEST, &other.to_string()),
            }
        }
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "table not applied"),
    }
}

/// Reads at most [`MAX_TABLE_BODY_BYTES`] within `deadline`: 413 beyond (at once when the
/// declared length is, and never buffering more than the bound), 408 when too slow.
async fn read_bounded(body: Body, deadline: Duration) -> Result<bytes::Bytes, Response> {
    let too_large = || closing(error(StatusCode::PAYLOAD_TOO_LARGE, "table body too large"));
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_TABLE_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(failure)) if crate::http::is_length_limit(&failure) => Err(too_large()),
        Ok(Err(_)) | Err(_) => Err(closing(error(
            StatusCode::REQUEST_TIMEOUT,
            "body not received in time",
        ))),
    }
}

/// Whether the declared `Content-Length` is over the body bound.
fn declared_too_large(headers: &HeaderMap) -> bool {
    crate::http::declared_length(headers).is_some_and(|length| length > MAX_TABLE_BODY_BYTES)
}

fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
