//! The command endpoint's part of the OpenAPI document.

use serde_json::{json, Map, Value};
use tributary_contract::command::{DEFAULT_TTL_SECONDS, MAX_COMMAND_NAME, MAX_TTL_SECONDS};

use crate::commands::request::{DEFAULT_CONTENT_TYPE, MAX_DEVICE_ID};
use crate::http::DEVICE_COMMAND;
use crate::openapi::{bounded_integer, error, path_of, query, secured, Bounds};

fn result(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CommandResult"}}}})
}

/// A command name: levels of ASCII letters, digits, `-`, `_` and `.` separated by `/`, the
/// first one not `req` or `res` (the contract's `valid_command_name`).
const NAME_PATTERN: &str = "^(?!(req|res)(/|$))[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$";
/// A device id commands can address: no `/`, `+`, `#` or control characters (the
/// contract's `valid_device_id`; its bound is in bytes, stated in the description).
const DEVICE_PATTERN: &str = "^[^/+#\\u0000-\\u001f\\u007f-\\u009f]+$";

/// An answer that is a `CommandResult` or, for refusals before a command exists, an
/// `Error`. `anyOf`: a result carries an `error` text too, so it may match both.
fn result_or_error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/CommandResult"},
        {"$ref": "#/components/schemas/Error"}
    ]}}}})
}

fn parameters(bounds: &Bounds) -> Value {
    let mut wait = bounded_integer(0, bounds.max_wait_seconds.map(u64::from));
    wait["default"] = json!(0);
    json!([
        {"name": "id", "in": "path", "required": true,
         "description": format!("The device id: 1 to {MAX_DEVICE_ID} bytes (UTF-8) without `/`, `+`, `#` or control characters"),
         "schema": {"type": "string", "pattern": DEVICE_PATTERN, "maxLength": MAX_DEVICE_ID}},
        {"name": "name", "in": "path", "required": true,
         "description": format!("The command name: levels of letters, digits, `-`, `_` and `.` separated by `/` (`fan/set`; the slashes may be sent as they are), at most {MAX_COMMAND_NAME} bytes, not starting with `req` or `res`"),
         "schema": {"type": "string", "pattern": NAME_PATTERN, "maxLength": MAX_COMMAND_NAME}},
        query("ttlSeconds", &format!("Seconds the command may wait in the device's queue before the broker drops it (default {DEFAULT_TTL_SECONDS})"),
              json!({"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS, "default": DEFAULT_TTL_SECONDS})),
        query("waitSeconds", "Seconds to wait for the device's answer (0: answer 202 once queued); at most the configured `commands.maxWaitSeconds`", wait),
    ])
}

fn responses() -> Value {
    json!({
        "200": result("The device answered within `waitSeconds`: `responseStatus`, `contentType`, and `response` (JSON, or base64 with `responseEncoding: base64`)"),
        "202": result("Queued for the device (`status: queued`); the broker confirmed it"),
        "400": error(&format!("An invalid device id (1 to {MAX_DEVICE_ID} bytes without `/`, `+`, `#` or control characters), command name, `ttlSeconds`, `waitSeconds`, Content-Type, or an unknown parameter")),
        "403": error("The key may not send commands (`commands: true` in its config)"),
        "404": error("A device outside the key's scope (answered as for a device that does not exist)"),
        "409": result("Undeliverable: no queue takes commands for the device (it never subscribed, or its session ended); `reason` is the broker's"),
        "413": error("The body is larger than `limits.maxRequestBytes`"),
        "429": result_or_error("The key's rate limit is exceeded (an `error` body), or the device's command queue is full (`status: queueFull`); see Retry-After"),
        "503": result_or_error("Not sent, or its fate unknown (`status: error`): the broker is unreachable, did not confirm, or the connection was lost while waiting; or too many requests wait for answers (`status: busy`, Retry-After); or commands are not configured (an `error` body)"),
        "504": result_or_error("Queued, but the device did not answer within `waitSeconds` (`status: timeout`); or the request outlived `limits.requestTimeoutMs` plus `commands.maxWaitSeconds` (an `error` body)")
    })
}

/// Adds the command endpoint.
pub fn paths(paths: &mut Map<String, Value>, bounds: &Bounds) {
    let mut operation = secured(json!({
        "summary": "Send a command to a device through the broker; optionally wait for its answer",
        "operationId": "sendCommand",
        "parameters": parameters(bounds),
        "requestBody": {
            "required": false,
            "description": format!("The command payload, passed to the device as it is with its Content-Type (default `{DEFAULT_CONTENT_TYPE}`); at most `limits.maxRequestBytes`"),
            "content": {"*/*": {"schema": {}}}
        },
        "responses": responses()
    }));
    // The generic 429 of `secured` does not mention a full device queue.
    operation["responses"]["429"] = responses()["429"].clone();
    paths.insert(path_of(DEVICE_COMMAND), json!({"post": operation}));
}

/// The body of every answer that names a command.
pub fn result_schema() -> Value {
    json!({"type": "object", "required": ["status"], "properties": {
        "commandId": {"type": "string", "description": "The command's id (a ULID): its AMQP message and correlation id"},
        "status": {"type": "string", "enum": ["queued", "answered", "timeout", "undeliverable", "queueFull", "busy", "error"]},
        "responseStatus": {"type": "integer", "minimum": 100, "maximum": 599, "description": "The device's status (answered)"},
        "contentType": {"type": "string", "nullable": true, "description": "The answer's content type (answered)"},
        "response": {"description": "The device's answer: its JSON, or base64 of its bytes (answered)"},
        "responseEncoding": {"type": "string", "enum": ["json", "base64"]},
        "reason": {"type": "string", "description": "The broker's reason (undeliverable: NO_ROUTE)"},
        "error": {"type": "string", "description": "What went wrong, for people"}
    }})
}
