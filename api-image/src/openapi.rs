//! The OpenAPI 3 document served at `/openapi.json`, written by hand next to the routes it
//! describes (a test checks every route appears, and the integration tests call each one).

use serde_json::{json, Value};

use crate::http::{
    DASHBOARD, DASHBOARD_FILE, DEVICES, DEVICE_HISTORY, DEVICE_LATEST, GROUP_HISTORY, HEALTHZ,
    METRICS, OPENAPI, READYZ, STREAM, WEBSOCKET,
};

/// The OpenAPI path of a route: a catch-all `{*name}` is written `{name}` (OpenAPI has no
/// multi-level parameter; the description says the value may hold `/`).
pub fn path_of(route: &str) -> String {
    route.replace("{*", "{")
}

/// A query parameter.
pub fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// An answer with the `Error` body.
pub fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_answer(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

/// An operation with the API key's security and its 401 and 429 answers.
pub fn secured(operation: Value) -> Value {
    let mut operation = operation;
    if let Some(object) = operation.as_object_mut() {
        object.insert("security".into(), json!([{"apiKey": []}]));
        let responses = object.entry("responses").or_insert_with(|| json!({}));
        if let Some(responses) = responses.as_object_mut() {
            responses.insert("401".into(), error("No API key, or an unknown one"));
            responses.insert(
                "429".into(),
                error("The key's rate limit is exceeded; see Retry-After"),
            );
        }
    }
    operation
}

fn history_params() -> Vec<Value> {
    vec![
        query("from", "Start of the range (inclusive), RFC 3339", json!({"type": "string", "format": "date-time"})),
        query("to", "End of the range (exclusive), RFC 3339", json!({"type": "string", "format": "date-time"})),
        query("limit", "Rows per page (default 100, at most the configured maximum)", json!({"type": "integer", "minimum": 1})),
        query("cursor", "The `nextCursor` of the previous page", json!({"type": "string"})),
        query("order", "Row order by (time, id)", json!({"type": "string", "enum": ["asc", "desc"], "default": "asc"})),
        query("bucket", "Bucket width (30s, 1m, 1h, 1d); with `field`, `from` and `to` the answer is buckets instead of rows", json!({"type": "string", "pattern": "^[0-9]+[smhd]$"})),
        query("field", "The numeric value to aggregate: a column (`temperature_c`) or a path into a JSON column (`payload.temperature`)", json!({"type": "string"})),
    ]
}

/// The `{id}` path parameter.
pub fn device_path() -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": "The device id", "schema": {"type": "string"}})
}

fn history_responses() -> Value {
    json!({
        "200": {"description": "A page of rows, or buckets when `bucket` and `field` are given", "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/HistoryPage"},
            {"$ref": "#/components/schemas/Buckets"}
        ]}}}},
        "400": error("A parameter is invalid, or the table cannot answer it (no such column, not a number)"),
        "504": error("The query took longer than the database's statement timeout")
    })
}

fn live_params() -> Vec<Value> {
    vec![
        query(
            "device",
            "Only this device (403 when the key may not read it)",
            json!({"type": "string"}),
        ),
        query(
            "topic",
            "Only topics matching this MQTT filter (`+`, `#`)",
            json!({"type": "string"}),
        ),
        query(
            "access_token",
            "The API key, for browsers whose EventSource/WebSocket cannot set headers",
            json!({"type": "string"}),
        ),
    ]
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    v1_paths(&mut paths);
    live_paths(&mut paths);
    crate::commands::openapi::paths(&mut paths);
    operation_paths(&mut paths);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tributary application API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Devices, latest values, history with time buckets, and live messages, read from what Tributary's workers stored; and commands sent to devices. Every /v1 endpoint needs an API key (Authorization: Bearer) and answers only for the key's devices."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        }
    })
}

/// The `/v1` data endpoints.
fn v1_paths(paths: &mut serde_json::Map<String, Value>) {
    paths.insert(DEVICES.into(), json!({"get": secured(json!({
        "summary": "Devices seen in the table, limited to the key's devices",
        "operationId": "listDevices",
        "parameters": [query("limit", "Most devices returned", json!({"type": "integer", "minimum": 1}))],
        "responses": {"200": json_answer("Devices by id", "DeviceList")}
    }))}));
    paths.insert(DEVICE_LATEST.into(), json!({"get": secured(json!({
        "summary": "The latest value of a device: from the Redis Sink when configured, else the newest row",
        "operationId": "latestValue",
        "parameters": [device_path()],
        "responses": {
            "200": json_answer("The latest value", "Latest"),
            "404": error("No such device, no value yet, or a device outside the key's scope")
        }
    }))}));
    let mut params = vec![device_path()];
    params.extend(history_params());
    let mut responses = history_responses();
    responses["404"] = error("A device outside the key's scope");
    paths.insert(DEVICE_HISTORY.into(), json!({"get": secured(json!({
        "summary": "Rows of one device in a time range (keyset pages), or buckets of a numeric field",
        "operationId": "deviceHistory",
        "parameters": params,
        "responses": responses
    }))}));
    let mut params = vec![
        query(
            "devices",
            "Comma-separated device ids",
            json!({"type": "string"}),
        ),
        query(
            "devicePrefix",
            "Devices whose id starts with this",
            json!({"type": "string"}),
        ),
    ];
    params.extend(history_params());
    let mut responses = history_responses();
    responses["403"] = error("A device or prefix outside the key's scope");
    paths.insert(
        GROUP_HISTORY.into(),
        json!({"get": secured(json!({
            "summary": "Rows or buckets of a group of devices (default: every device of the key)",
            "operationId": "groupHistory",
            "parameters": params,
            "responses": responses
        }))}),
    );
}

/// The live endpoints (SSE and WebSocket).
fn live_paths(paths: &mut serde_json::Map<String, Value>) {
    paths.insert(STREAM.into(), json!({"get": secured(json!({
        "summary": "Live processed messages as Server-Sent Events: `ready` once subscribed, then `message` events (data: the message JSON, id: its id)",
        "operationId": "liveStream",
        "parameters": live_params(),
        "responses": {
            "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "403": error("A device outside the key's scope"),
            "503": error("Live messages are not configured, or too many live clients")
        }
    }))}));
    paths.insert(WEBSOCKET.into(), json!({"get": secured(json!({
        "summary": "Live processed messages over a WebSocket: a `{\"type\":\"ready\"}` frame, then one text frame per message",
        "operationId": "liveWebSocket",
        "parameters": live_params(),
        "responses": {
            "101": {"description": "Switching to the WebSocket protocol"},
            "403": error("A device outside the key's scope"),
            "503": error("Live messages are not configured, or too many live clients")
        }
    }))}));
}

/// The document itself, probes, metrics and the dashboard.
fn operation_paths(paths: &mut serde_json::Map<String, Value>) {
    paths.insert(OPENAPI.into(), json!({"get": {
        "summary": "This document", "operationId": "openapi",
        "responses": {"200": {"description": "OpenAPI 3 document", "content": {"application/json": {}}}}
    }}));
    for (path, summary, id) in [
        (HEALTHZ, "Liveness: the process answers", "healthz"),
        (
            READYZ,
            "Readiness: the database answers and the server is not stopping",
            "readyz",
        ),
    ] {
        paths.insert(path.into(), json!({"get": {
            "summary": summary, "operationId": id,
            "responses": {"200": {"description": "ok", "content": {"text/plain": {}}}, "503": {"description": "not ok", "content": {"text/plain": {}}}}
        }}));
    }
    paths.insert(METRICS.into(), json!({"get": {
        "summary": "Prometheus metrics (tributary_api_*)", "operationId": "metrics",
        "responses": {"200": {"description": "OpenMetrics text", "content": {"application/openmetrics-text": {}}}}
    }}));
    paths.insert(DASHBOARD.into(), json!({"get": {
        "summary": "The dashboard page: devices, live values and throughput, read with a key the user pastes (the page itself holds no data and needs no key)",
        "operationId": "dashboard",
        "responses": {"200": {"description": "The page", "content": {"text/html": {}}}}
    }}));
    paths.insert(DASHBOARD_FILE.into(), json!({"get": {
        "summary": "A script, style or image of the dashboard, compiled into the binary",
        "operationId": "dashboardFile",
        "parameters": [{"name": "file", "in": "path", "required": true, "description": "The file name (`dashboard.js`, `dashboard.css`, `icon.svg`)", "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The file", "content": {"text/javascript": {}, "text/css": {}, "image/svg+xml": {}}},
            "404": error("No such file")
        }
    }}));
}

/// The schemas of the answers.
fn schemas() -> Value {
    let mut schemas = data_schemas();
    if let Some(object) = schemas.as_object_mut() {
        object.insert(
            "CommandResult".into(),
            crate::commands::openapi::result_schema(),
        );
    }
    schemas
}

fn data_schemas() -> Value {
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "DeviceList": {"type": "object", "properties": {"devices": {"type": "array", "items": {
            "type": "object", "properties": {
                "device": {"type": "string"},
                "lastSeen": {"type": "string", "format": "date-time"},
                "messages": {"type": "integer"}
            }
        }}}},
        "Latest": {"type": "object", "properties": {
            "device": {"type": "string"},
            "source": {"type": "string", "enum": ["redis", "postgres"]},
            "id": {"type": "string", "nullable": true, "description": "The message id of the value"},
            "value": {"description": "The stored value (Redis) or row (PostgreSQL) as JSON"}
        }},
        "HistoryPage": {"type": "object", "properties": {
            "items": {"type": "array", "items": {"type": "object", "description": "A row of the table as JSON (column: value)"}},
            "nextCursor": {"type": "string", "nullable": true, "description": "Pass as `cursor` for the next page; null on the last page"}
        }},
        "Buckets": {"type": "object", "properties": {
            "bucket": {"type": "string"},
            "bucketSeconds": {"type": "integer"},
            "field": {"type": "string"},
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "buckets": {"type": "array", "items": {"type": "object", "properties": {
                "start": {"type": "string", "format": "date-time", "description": "Bucket start, aligned to the Unix epoch"},
                "count": {"type": "integer", "description": "Rows whose field is a number"},
                "avg": {"type": "number", "nullable": true},
                "min": {"type": "number", "nullable": true},
                "max": {"type": "number", "nullable": true},
                "rows": {"type": "integer", "description": "All rows in the bucket"}
            }}}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ROUTES;

    #[test]
    fn every_route_appears_and_nothing_else() {
        let document = document();
        let paths = document["paths"].as_object().expect("paths");
        for route in ROUTES {
            assert!(
                paths.contains_key(&path_of(route)),
                "{route} is missing from the document"
            );
        }
        assert_eq!(paths.len(), ROUTES.len());
        for (path, item) in paths {
            let item = item.as_object().expect("path item");
            assert_eq!(item.len(), 1, "{path}: one operation per route");
            let (method, operation) = item.iter().next().expect("an operation");
            assert!(["get", "post"].contains(&method.as_str()), "{path}");
            assert!(operation["operationId"].is_string(), "{path}");
            let responses = &operation["responses"];
            assert!(
                ["200", "101", "202"]
                    .iter()
                    .any(|code| responses[code].is_object()),
                "{path}"
            );
            if path.starts_with("/v1/") {
                assert!(responses["401"].is_object(), "{path} is secured");
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let document = document();
        let text = document.to_string();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                document["components"]["schemas"][name].is_object(),
                "{name}"
            );
        }
    }
}
