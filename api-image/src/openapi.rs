//! The OpenAPI 3 document served at `/openapi.json`, written by hand next to the routes it
//! describes (a test checks every route appears, and the integration tests call each one).

use serde_json::{json, Value};
use tributary_contract::api_config::ApiLimits;

use crate::http::{
    BACKLOG, DASHBOARD, DASHBOARD_FILE, DEVICES, DEVICE_HISTORY, DEVICE_LATEST, GROUP_HISTORY,
    HEALTHZ, METRICS, OPENAPI, READYZ, STREAM, WEBSOCKET,
};

/// The configured bounds the document states as parameter maxima. The served document
/// states the running server's; without a config (`--openapi`) they are only described.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// `limits.maxPageSize`: the largest `limit`.
    pub max_page_size: Option<u32>,
    /// `limits.maxDevicesPerQuery`: the most ids in `devices`.
    pub max_devices_per_query: Option<usize>,
    /// `commands.maxWaitSeconds`: the largest `waitSeconds`.
    pub max_wait_seconds: Option<u32>,
}

impl Bounds {
    /// The bounds of a configured server (`max_wait_seconds` when commands are configured).
    pub fn of(limits: &ApiLimits, max_wait_seconds: Option<u32>) -> Self {
        Self {
            max_page_size: Some(limits.max_page_size),
            max_devices_per_query: Some(limits.max_devices_per_query),
            max_wait_seconds,
        }
    }
}

/// An integer schema from `minimum` to the bound, when known.
pub fn bounded_integer(minimum: u64, maximum: Option<u64>) -> Value {
    let mut schema = json!({"type": "integer", "minimum": minimum});
    if let Some(maximum) = maximum {
        schema["maximum"] = json!(maximum);
    }
    schema
}

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

/// A response with OpenAPI links: (name, target operationId, parameters).
fn with_links(response: Value, links: &[(&str, &str, Value)]) -> Value {
    let mut response = response;
    let links: serde_json::Map<String, Value> = links
        .iter()
        .map(|(name, operation, parameters)| {
            let link = json!({"operationId": operation, "parameters": parameters});
            ((*name).to_string(), link)
        })
        .collect();
    response["links"] = Value::Object(links);
    response
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

/// A `field`: a column, or a column and a path of members into its JSON.
const FIELD_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,62}(\\.[A-Za-z0-9_-]{1,128}){0,16}$";

fn history_params(bounds: &Bounds) -> Vec<Value> {
    let page = bounded_integer(1, bounds.max_page_size.map(u64::from));
    vec![
        query("from", "Start of the range (inclusive), RFC 3339", json!({"type": "string", "format": "date-time"})),
        query("to", "End of the range (exclusive), RFC 3339; not before `from`", json!({"type": "string", "format": "date-time"})),
        query("limit", "Rows per page (default 100, at most `limits.maxPageSize`); not with `bucket`", page),
        query("cursor", "The `nextCursor` of the previous page (other values are 400); not with `bucket`", json!({"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 1024})),
        query("order", "Row order by (time, id); not with `bucket`", json!({"type": "string", "enum": ["asc", "desc"], "default": "asc"})),
        query("bucket", "Bucket width (30s, 1m, 1h, 1d; at most 31d); with `field`, `from` and `to` the answer is buckets instead of rows, at most `limits.maxBuckets` of them", json!({"type": "string", "pattern": "^0*[1-9][0-9]*[smhd]$"})),
        query("field", "The numeric value to aggregate (with `bucket`): a column (`temperature_c`) or a path into a JSON column (`payload.temperature`)", json!({"type": "string", "pattern": FIELD_PATTERN})),
    ]
}

/// The `{id}` path parameter.
pub fn device_path() -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": "The device id", "schema": {"type": "string"}, "example": "site-a-1"})
}

/// `devices=a,b`: non-empty ids separated by commas, as many as the bound allows.
fn devices_schema(bounds: &Bounds) -> Value {
    let more = bounds.max_devices_per_query.map_or_else(
        || "*".to_string(),
        |max| format!("{{0,{}}}", max.saturating_sub(1)),
    );
    json!({"type": "string", "pattern": format!("^[^,]+(,[^,]+){more}$")})
}

/// The answers of a history operation; `next_page` names the parameters its next page
/// repeats from the request (with `cursor` from the answer).
fn history_responses(operation: &str, repeated: &[&str]) -> Value {
    let mut next = serde_json::Map::new();
    for name in repeated {
        next.insert((*name).into(), json!(format!("$request.path.{name}")));
    }
    next.insert("cursor".into(), json!("$response.body#/nextCursor"));
    let page = json!({"description": "A page of rows, or buckets when `bucket` and `field` are given", "content": {"application/json": {"schema": {"oneOf": [
        {"$ref": "#/components/schemas/HistoryPage"},
        {"$ref": "#/components/schemas/Buckets"}
    ]}}}});
    json!({
        "200": with_links(page, &[("nextPage", operation, Value::Object(next))]),
        "400": error("A parameter is invalid, parameters that do not go together, a cursor this API did not hand out, or a field the table cannot answer (no such column, not a number)"),
        "503": error("The database is unreachable"),
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
            "Only topics matching this MQTT filter (`+`, `#`), 1 to 256 characters",
            json!({"type": "string", "minLength": 1, "maxLength": crate::stream::MAX_TOPIC_CHARS}),
        ),
        query(
            "access_token",
            "The API key, for browsers whose EventSource/WebSocket cannot set headers",
            json!({"type": "string"}),
        ),
    ]
}

/// The document without a config: configured maxima are described, not stated.
pub fn document() -> Value {
    document_with(&Bounds::default())
}

/// The document of a server with these bounds.
pub fn document_with(bounds: &Bounds) -> Value {
    let mut paths = serde_json::Map::new();
    v1_paths(&mut paths, bounds);
    live_paths(&mut paths);
    crate::commands::openapi::paths(&mut paths, bounds);
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
fn v1_paths(paths: &mut serde_json::Map<String, Value>, bounds: &Bounds) {
    let page = bounded_integer(1, bounds.max_page_size.map(u64::from));
    paths.insert(DEVICES.into(), json!({"get": secured(json!({
        "summary": "Devices registered (Device resources) or seen in the table, limited to the key's devices",
        "operationId": "listDevices",
        "parameters": [query("limit", "Most devices returned (default and most: `limits.maxPageSize`)", page)],
        "responses": {
            "200": with_links(json_answer("Devices by id", "DeviceList"), &[
                ("latestValue", "latestValue", json!({"id": "$response.body#/devices/0/device"})),
                ("deviceHistory", "deviceHistory", json!({"id": "$response.body#/devices/0/device"})),
            ]),
            "400": error("An invalid `limit`, or an unknown parameter"),
            "503": error("The database is unreachable"),
            "504": error("The query took longer than the database's statement timeout")
        }
    }))}));
    paths.insert(BACKLOG.into(), json!({"get": secured(json!({
        "summary": "The pipeline's backlog: messages waiting in the live Queue's broker queue, read every few seconds",
        "operationId": "backlog",
        "responses": {
            "200": json_answer("The queue's depth", "Backlog"),
            "400": error("An unknown parameter"),
            "503": error("No live Queue configured, or its depth not read in the last 20 seconds")
        }
    }))}));
    paths.insert(DEVICE_LATEST.into(), json!({"get": secured(json!({
        "summary": "The latest value of a device: from the Redis Sink when configured, else the newest row",
        "operationId": "latestValue",
        "parameters": [device_path()],
        "responses": {
            "200": json_answer("The latest value", "Latest"),
            "400": error("An id that is not UTF-8 once percent-decoded"),
            "404": error("No such device, no value yet, or a device outside the key's scope"),
            "503": error("The database or Redis is unreachable"),
            "504": error("The query took longer than the database's statement timeout")
        }
    }))}));
    let mut params = vec![device_path()];
    params.extend(history_params(bounds));
    let mut responses = history_responses("deviceHistory", &["id"]);
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
            "Comma-separated device ids (at most `limits.maxDevicesPerQuery`); not with `devicePrefix`",
            devices_schema(bounds),
        ),
        query(
            "devicePrefix",
            "Devices whose id starts with this; not with `devices`",
            json!({"type": "string"}),
        ),
    ];
    params.extend(history_params(bounds));
    let mut responses = history_responses("groupHistory", &[]);
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

/// One event of the stream (the `schema` of an event stream describes each event, as in
/// OpenAPI 3.2's `itemSchema`); keep-alive comments are not events.
fn sse_event() -> Value {
    json!({"type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "enum": ["ready", "message"]},
        "data": {"type": "string", "description": "`{}` for `ready`; the message's JSON for `message`"},
        "id": {"type": "string", "description": "The message id (`message` events of messages that have one)"}
    }})
}

/// A required request header with a fixed value.
fn fixed_header(name: &str, value: &str, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": true, "description": description,
           "schema": {"type": "string", "enum": [value]}})
}

/// The live endpoints (SSE and WebSocket).
fn live_paths(paths: &mut serde_json::Map<String, Value>) {
    let bad =
        error("An unknown parameter, or a `topic` that is empty or longer than 256 characters");
    paths.insert(STREAM.into(), json!({"get": secured(json!({
        "summary": "Live processed messages as Server-Sent Events: `ready` once subscribed, then `message` events (data: the message JSON, id: its id)",
        "operationId": "liveStream",
        "parameters": live_params(),
        "responses": {
            "200": {"description": "An event stream", "content": {"text/event-stream": {"schema": sse_event()}}},
            "400": bad,
            "403": error("A device outside the key's scope"),
            "503": error("Live messages are not configured, or too many live clients")
        }
    }))}));
    let mut params = live_params();
    params.extend([
        fixed_header(
            "Connection",
            "Upgrade",
            "The WebSocket handshake (RFC 6455)",
        ),
        fixed_header("Upgrade", "websocket", "The WebSocket handshake"),
        fixed_header("Sec-WebSocket-Version", "13", "The WebSocket handshake"),
        json!({"name": "Sec-WebSocket-Key", "in": "header", "required": true,
               "description": "The WebSocket handshake: 16 random bytes in base64",
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}}),
    ]);
    paths.insert(WEBSOCKET.into(), json!({"get": secured(json!({
        "summary": "Live processed messages over a WebSocket: a `{\"type\":\"ready\"}` frame, then one text frame per message",
        "operationId": "liveWebSocket",
        "parameters": params,
        "responses": {
            "101": {"description": "Switching to the WebSocket protocol"},
            "400": error("Not a WebSocket handshake (the headers above), an unknown parameter, or an invalid `topic`"),
            "403": error("A device outside the key's scope"),
            "426": error("The connection cannot be upgraded to a WebSocket"),
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
    let files: Vec<&str> = crate::dashboard::ASSETS.iter().map(|a| a.name).collect();
    paths.insert(DASHBOARD_FILE.into(), json!({"get": {
        "summary": "A script, style or image of the dashboard, compiled into the binary",
        "operationId": "dashboardFile",
        "parameters": [{"name": "file", "in": "path", "required": true, "description": "The file name", "schema": {"type": "string", "enum": files}}],
        "responses": {
            "200": {"description": "The file", "content": {"text/html": {}, "text/javascript": {}, "text/css": {}, "image/svg+xml": {}}},
            "400": error("A name that is not UTF-8 once percent-decoded"),
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
        "DeviceList": {"type": "object", "required": ["devices", "rosterOmitted"], "properties": {
            "devices": {"type": "array", "items": {
                "type": "object", "required": ["device", "lastSeen", "messages", "registered"], "properties": {
                    "device": {"type": "string", "nullable": true, "description": "The device id (null for rows without one)"},
                    "lastSeen": {"type": "string", "format": "date-time", "nullable": true, "description": "The later of the newest row's time and the gateways' last report (null when neither knows one)"},
                    "messages": {"type": "integer", "minimum": 0, "description": "Rows stored (0 for a registered device that sent nothing yet)"},
                    "registered": {"type": "boolean", "description": "A Device resource has this id"},
                    "resource": {"type": "string", "description": "The Device resource (registered devices only)"},
                    "ready": {"type": "boolean", "description": "Its credentials are issued and its Gateways know it (registered devices only)"},
                    "disabled": {"type": "boolean", "description": "Its Device is disabled (registered devices only)"},
                    "connected": {"type": "boolean", "nullable": true, "description": "Whether it holds a connection to a gateway, as the gateways last reported (registered devices only; null before any report)"}
                }
            }},
            "rosterOmitted": {"type": "integer", "minimum": 0, "description": "Registered devices the operator left out of the API's roster for its size (the last ids)"}
        }},
        "Backlog": {"type": "object", "required": ["messages", "consumers", "observedAt"], "properties": {
            "messages": {"type": "integer", "minimum": 0, "description": "Messages waiting in the pipeline's queue for a worker"},
            "consumers": {"type": "integer", "minimum": 0, "description": "Consumers of the queue (workers' channels)"},
            "observedAt": {"type": "string", "format": "date-time", "description": "When the depth was read (every few seconds)"}
        }},
        "Latest": {"type": "object", "required": ["device", "source", "id", "value"], "properties": {
            "device": {"type": "string"},
            "source": {"type": "string", "enum": ["redis", "postgres"]},
            "id": {"type": "string", "nullable": true, "description": "The message id of the value"},
            "value": {"description": "The stored value (Redis) or row (PostgreSQL) as JSON"}
        }},
        "HistoryPage": {"type": "object", "required": ["items", "nextCursor"], "properties": {
            "items": {"type": "array", "items": {"type": "object", "description": "A row of the table as JSON (column: value)"}},
            "nextCursor": {"type": "string", "nullable": true, "description": "Pass as `cursor` for the next page; null on the last page"}
        }},
        "Buckets": {"type": "object", "required": ["bucket", "bucketSeconds", "field", "from", "to", "buckets"], "properties": {
            "bucket": {"type": "string"},
            "bucketSeconds": {"type": "integer", "minimum": 1},
            "field": {"type": "string"},
            "from": {"type": "string", "format": "date-time"},
            "to": {"type": "string", "format": "date-time"},
            "buckets": {"type": "array", "items": {"type": "object", "required": ["start", "count", "avg", "min", "max", "rows"], "properties": {
                "start": {"type": "string", "format": "date-time", "description": "Bucket start, aligned to the Unix epoch"},
                "count": {"type": "integer", "minimum": 0, "description": "Rows whose field is a number"},
                "avg": {"type": "number", "nullable": true},
                "min": {"type": "number", "nullable": true},
                "max": {"type": "number", "nullable": true},
                "rows": {"type": "integer", "minimum": 1, "description": "All rows in the bucket"}
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

    fn parameter(document: &Value, path: &str, method: &str, name: &str) -> Value {
        let parameters = document["paths"][path][method]["parameters"]
            .as_array()
            .expect("parameters");
        parameters
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
    }

    #[test]
    fn the_served_document_states_the_configured_maxima() {
        let limits = ApiLimits {
            max_page_size: 500,
            max_devices_per_query: 3,
            ..ApiLimits::default()
        };
        let served = document_with(&Bounds::of(&limits, Some(30)));
        let command = path_of(crate::http::DEVICE_COMMAND);
        assert_eq!(
            parameter(&served, DEVICES, "get", "limit")["schema"]["maximum"],
            500
        );
        assert_eq!(
            parameter(&served, GROUP_HISTORY, "get", "limit")["schema"]["maximum"],
            500
        );
        assert_eq!(
            parameter(&served, GROUP_HISTORY, "get", "devices")["schema"]["pattern"],
            "^[^,]+(,[^,]+){0,2}$"
        );
        assert_eq!(
            parameter(&served, &command, "post", "waitSeconds")["schema"]["maximum"],
            30
        );
        // Without a config the maxima are only described.
        let generic = document();
        assert!(parameter(&generic, DEVICES, "get", "limit")["schema"]["maximum"].is_null());
        assert!(
            parameter(&generic, &command, "post", "waitSeconds")["schema"]["maximum"].is_null()
        );
    }

    #[test]
    fn a_history_answer_matches_exactly_one_of_page_and_buckets() {
        let schemas = schemas();
        let required = |name: &str| -> Vec<String> {
            serde_json::from_value(schemas[name]["required"].clone()).expect("required")
        };
        let (page, buckets) = (required("HistoryPage"), required("Buckets"));
        assert!(page.iter().any(|p| !buckets.contains(p)));
        assert!(buckets.iter().any(|b| !page.contains(b)));
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
