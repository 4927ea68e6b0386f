//! `POST /v1/devices/{id}/commands/{name}`: the key's permission and scope, the request's
//! checks, then the broker.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::commands::message::{new_command_id, Command};
use crate::commands::outcome::Outcome;
use crate::commands::request::CommandRequest;
use crate::commands::Commander;
use crate::http::{ApiError, AppState, Caller};
use crate::keys::Key;

/// Sends a command to a device; the answer says what became of it.
pub async fn send(
    State(state): State<AppState>,
    Caller(key): Caller,
    Path((device, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    payload: Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    let (request, commander) = match admit(&state, &key, &device, &name, &params, content_type) {
        Ok(admitted) => admitted,
        Err(error) => {
            state.metrics.commands.count("refused");
            return error.into_response();
        }
    };
    let command = Command {
        id: new_command_id(),
        request,
        sender: key.name.clone(),
        payload,
    };
    let outcome = commander.send(&command).await;
    state.metrics.commands.count(outcome.result());
    if let Outcome::Answered { seconds, .. } = &outcome {
        state.metrics.commands.round_trip.observe(*seconds);
    }
    // Never the payload: commands may carry settings an operator would not log.
    tracing::info!(
        command = %command.id,
        device = %command.request.device,
        name = %command.request.name,
        key = %key.name,
        result = outcome.result(),
        "command"
    );
    outcome.into_response(&command.id)
}

/// The checks before anything is sent: the key may send commands (403), commands are
/// configured (503), the request is valid (400), and the device is in the key's scope
/// (404, as reads answer for a device the key may not read).
fn admit(
    state: &AppState,
    key: &Key,
    device: &str,
    name: &str,
    params: &HashMap<String, String>,
    content_type: Option<&[u8]>,
) -> Result<(CommandRequest, Arc<Commander>), ApiError> {
    if !key.commands {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this key may not send commands (its config needs `commands: true`)",
        ));
    }
    let commander = state.commands.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "commands are not configured",
        )
    })?;
    let request = CommandRequest::parse(
        device,
        name,
        params,
        content_type,
        commander.max_wait_seconds(),
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.0))?;
    if !key.scope.allows(&request.device) {
        return Err(ApiError::no_device());
    }
    Ok((request, commander))
}
