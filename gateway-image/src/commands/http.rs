//! Commands for HTTP devices, authenticated like the publish endpoint:
//!
//! - `GET /v1/commands?waitSeconds=N` waits up to N seconds (at most
//!   `commands.maxLongPollSeconds`, the default) for one command of the device's queue
//!   (declared persistent on first use): 200 with the command as JSON, acknowledged once
//!   answered; 204 when none came. At most `commands.maxLongPolls` polls at once (503
//!   beyond) and one per device (409 for a second).
//! - `POST /v1/commands/{id}/response?status=S` answers a request with the body: 202 once
//!   the broker confirmed it to the sender, 404 when no such request is awaited.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tributary_contract::command::{valid_command_id, ResponseAddress, DEFAULT_RESPONSE_STATUS};

use super::feed::Feed;
use super::message::http_command;
use crate::broker::PublishError;
use crate::handshake::CertificateDevice;
use crate::http::{authenticate, error, read_body};
use crate::ingest::Gateway;
use crate::metrics::{ResponseResult, Undeliverable};

/// The command routes of the device-facing router.
pub fn router() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/commands", get(poll))
        .route("/v1/commands/{id}/response", post(respond))
}

/// The long polls in progress: a gateway-wide cap and one per device.
pub struct Polls {
    slots: Arc<Semaphore>,
    devices: Arc<Mutex<HashSet<String>>>,
}

/// A poll in progress: its slot and its device's place, both given back on drop.
pub struct PollGuard {
    _slot: OwnedSemaphorePermit,
    devices: Arc<Mutex<HashSet<String>>>,
    device: String,
}

/// Why a poll cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollRefusal {
    /// `maxLongPolls` polls run already.
    Busy,
    /// This device polls already.
    Conflict,
}

impl Polls {
    /// At most `max` polls at once (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            devices: Arc::default(),
        }
    }

    /// Takes a slot for `device`'s poll (a device that polls already is told so first).
    pub fn begin(&self, device: &str) -> Result<PollGuard, PollRefusal> {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        if devices.contains(device) {
            return Err(PollRefusal::Conflict);
        }
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| PollRefusal::Busy)?;
        devices.insert(device.to_owned());
        Ok(PollGuard {
            _slot: slot,
            devices: Arc::clone(&self.devices),
            device: device.to_owned(),
        })
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.device);
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PollQuery {
    wait_seconds: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct ResponseQuery {
    status: Option<u16>,
}

async fn poll(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    certificate: Option<Extension<CertificateDevice>>,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let device = match authenticate(&gateway, peer, certificate, &headers).await {
        Ok(device) => device,
        Err(response) => return response,
    };
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "waitSeconds must be a number of seconds",
        );
    };
    let commands = &gateway.commands;
    if !commands.enabled() {
        return error(StatusCode::NOT_FOUND, "commands are disabled");
    }
    if gateway.draining.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "gateway draining");
    }
    let guard = match commands.polls.begin(&device) {
        Ok(guard) => guard,
        Err(PollRefusal::Busy) => return busy(),
        Err(PollRefusal::Conflict) => {
            return error(StatusCode::CONFLICT, "this device polls already")
        }
    };
    let max = commands.config().max_long_poll_seconds;
    let wait = Duration::from_secs(u64::from(query.wait_seconds.unwrap_or(max).min(max)));
    // In a task of its own: a client that goes away mid-poll drops this handler, while the
    // poll still ends by releasing its consumer (cancelled through the guard).
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let task = tokio::spawn(wait_for_command(Arc::clone(&gateway), device, wait, stop));
    let answer = task.await;
    drop(guard);
    match answer {
        Ok(Ok(Some(command))) => (StatusCode::OK, Json(command)).into_response(),
        Ok(Ok(None)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(())) | Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "commands unavailable, try again later",
        ),
    }
}

/// Consumes the device's queue until one command comes, `wait` passes, the client goes
/// or the gateway drains; the command as JSON (acknowledged), `None` without one.
async fn wait_for_command(
    gateway: Arc<Gateway>,
    device: String,
    wait: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Option<serde_json::Value>, ()> {
    let commands = &gateway.commands;
    let started = async {
        commands.ensure_queue(&device).await?;
        commands.consume(&device, 1, "http").await
    };
    let mut feed = match started.await {
        Ok(feed) => feed,
        Err(error) => {
            tracing::warn!(%device, %error, "cannot poll the device's commands");
            return Err(());
        }
    };
    let deadline = tokio::time::Instant::now() + wait;
    let answer = loop {
        let incoming = tokio::select! {
            incoming = feed.next() => incoming,
            _ = tokio::time::sleep_until(deadline) => break Ok(None),
            _ = stop.cancelled() => break Ok(None),
            _ = gateway.draining.cancelled() => break Ok(None),
        };
        // The consumer ended (connection lost, queue deleted): try again later.
        let Some(incoming) = incoming else {
            break Err(());
        };
        if let Some(answer) = take(&gateway, &device, &mut feed, incoming).await {
            break Ok(Some(answer));
        }
    };
    feed.release().await;
    answer
}

/// One delivery of a poll: the command as JSON, acknowledged; `None` for an invalid
/// command, discarded (the poll waits on).
async fn take(
    gateway: &Gateway,
    device: &str,
    feed: &mut Feed,
    incoming: super::feed::Incoming,
) -> Option<serde_json::Value> {
    let metrics = &gateway.metrics.commands;
    match incoming.command {
        Ok(command) => {
            gateway.commands.remember_request(device, &command);
            metrics.delivered("http").inc();
            feed.acknowledge(incoming.tag).await;
            Some(http_command(&command, device))
        }
        Err(problem) => {
            tracing::info!(device, %problem, "invalid command discarded");
            metrics.undeliverable(Undeliverable::Invalid).inc();
            feed.discard(incoming.tag).await;
            None
        }
    }
}

async fn respond(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    certificate: Option<Extension<CertificateDevice>>,
    Path(id): Path<String>,
    query: Result<Query<ResponseQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let device = match authenticate(&gateway, peer, certificate, &headers).await {
        Ok(device) => device,
        Err(response) => return response,
    };
    if !gateway.commands.enabled() {
        return error(StatusCode::NOT_FOUND, "commands are disabled");
    }
    let status = match query {
        Ok(Query(ResponseQuery { status: None })) => DEFAULT_RESPONSE_STATUS,
        Ok(Query(ResponseQuery { status: Some(s) })) if (100..=599).contains(&s) => s,
        _ => {
            gateway.commands.count_invalid_response();
            return error(StatusCode::BAD_REQUEST, "status must be a number 100-599");
        }
    };
    if !valid_command_id(&id) {
        gateway.commands.count_invalid_response();
        return error(StatusCode::BAD_REQUEST, "invalid command id");
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let payload = match read_body(body, &gateway).await {
        Ok(payload) => payload,
        Err(response) => return response,
    };
    forward(
        &gateway,
        &device,
        id,
        status,
        &payload,
        content_type.as_deref(),
    )
    .await
}

async fn forward(
    gateway: &Gateway,
    device: &str,
    command_id: String,
    status: u16,
    payload: &[u8],
    content_type: Option<&str>,
) -> Response {
    if gateway.draining.is_cancelled() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "gateway draining");
    }
    let Ok(_permit) = Arc::clone(&gateway.in_flight).acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "gateway draining");
    };
    let address = ResponseAddress { command_id, status };
    let result = gateway
        .commands
        .respond(&gateway.broker, device, &address, payload, content_type)
        .await;
    match result {
        Ok(ResponseResult::Forwarded) => StatusCode::ACCEPTED.into_response(),
        Ok(_) => error(StatusCode::NOT_FOUND, "no such command awaits a response"),
        Err(PublishError::Unavailable | PublishError::Timeout | PublishError::Lost) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
        }
        Err(refused) => error(StatusCode::SERVICE_UNAVAILABLE, &refused.to_string()),
    }
}

/// 503 with `Retry-After`: `maxLongPolls` polls run already.
fn busy() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        Json(serde_json::json!({ "error": "too many polls, try again later" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_are_capped_gateway_wide_and_one_per_device() {
        let polls = Polls::new(2);
        let first = polls.begin("a").expect("room");
        assert_eq!(polls.begin("a").err(), Some(PollRefusal::Conflict));
        let second = polls.begin("b").expect("room");
        assert_eq!(polls.begin("c").err(), Some(PollRefusal::Busy));
        assert_eq!(polls.begin("b").err(), Some(PollRefusal::Conflict));
        drop(first);
        let again = polls.begin("a");
        assert!(
            again.is_ok(),
            "a finished poll frees its slot and its device"
        );
        drop((second, again));
    }
}
