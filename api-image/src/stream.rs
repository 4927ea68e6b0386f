//! The live endpoints: Server-Sent Events (`/v1/stream`) and WebSocket (`/v1/ws`), both
//! filtered by `device` and `topic` and limited to the key's devices.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, Stream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::http::{ApiError, AppState, Caller};
use crate::live::{LiveFilter, Subscription};

/// Longest `topic` filter, in characters.
pub const MAX_TOPIC_CHARS: usize = 256;

/// Counts a live client for as long as it is held.
struct ClientGauge(Gauge);

impl ClientGauge {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Checks the filters against the key and registers the client.
fn subscribe(
    state: &AppState,
    caller: &Caller,
    params: &HashMap<String, String>,
) -> Result<Subscription, ApiError> {
    if let Some(name) = params
        .keys()
        .find(|k| !["device", "topic", "access_token"].contains(&k.as_str()))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown query parameter `{name}`; known: device, topic"),
        ));
    }
    let device = params.get("device").cloned();
    if let Some(device) = &device {
        if !caller.0.scope.allows(device) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this key may not read device `{device}`"),
            ));
        }
    }
    let topic = params.get("topic").cloned();
    if topic
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.chars().count() > MAX_TOPIC_CHARS)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "`topic` must be an MQTT topic filter of at most 256 characters",
        ));
    }
    let hub = state.hub.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "live messages are not configured",
        )
    })?;
    hub.subscribe(LiveFilter {
        scope: caller.0.scope.clone(),
        device,
        topic,
    })
    .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many live clients"))
}

/// `GET /v1/stream`: an `event: ready` once subscribed, then one `message` event per live
/// message (`id` is the message id), until the client leaves or the server stops.
pub async fn sse(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let subscription = subscribe(&state, &caller, &params)?;
    let gauge = ClientGauge::new(state.metrics.stream_clients("sse"));
    let events = events(subscription, gauge, state.stop.clone());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn events(
    subscription: Subscription,
    gauge: ClientGauge,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let ready = futures::stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let messages = futures::stream::unfold(
        (subscription, gauge, stop),
        |(mut subscription, gauge, stop)| async move {
            let message = tokio::select! {
                message = subscription.receiver.recv() => message?,
                () = stop.cancelled() => return None,
            };
            let mut event = Event::default().event("message").data(&message.json);
            if let Some(id) = &message.id {
                event = event.id(id);
            }
            Some((Ok(event), (subscription, gauge, stop)))
        },
    );
    ready.chain(messages)
}

/// `GET /v1/ws`: a text frame `{"type":"ready"}` once subscribed, then one text frame per
/// live message (its JSON). Messages from the client other than close are ignored.
pub async fn websocket(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // The key and filters are checked first, so a refused scope is 403 whatever the headers.
    let subscription = subscribe(&state, &caller, &params)?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        // As a JSON error like every other refusal (axum's own answer is plain text).
        Err(rejection) => return Err(ApiError::new(rejection.status(), rejection.body_text())),
    };
    let gauge = ClientGauge::new(state.metrics.stream_clients("ws"));
    let stop = state.stop.clone();
    Ok(upgrade
        .max_message_size(4096)
        .on_upgrade(move |socket| serve_socket(socket, subscription, gauge, stop)))
}

async fn serve_socket(
    socket: WebSocket,
    mut subscription: Subscription,
    _gauge: ClientGauge,
    stop: CancellationToken,
) {
    let (mut sender, mut receiver) = socket.split();
    if sender
        .send(Message::Text("{\"type\":\"ready\"}".into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            message = subscription.receiver.recv() => {
                let Some(message) = message else { break };
                if sender.send(Message::Text(message.json.as_str().into())).await.is_err() {
                    break;
                }
            }
            incoming = receiver.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            () = stop.cancelled() => {
                let _ = sender.send(Message::Close(None)).await;
                break;
            }
        }
    }
}
