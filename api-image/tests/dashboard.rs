//! The dashboard served by a real server over a real PostgreSQL table (and, for its live
//! call, a real RabbitMQ): the page and every file it loads, their security headers, no
//! other origin anywhere, and the endpoints its script calls.

mod common;

use std::time::Duration;

use common::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tributary_api::dashboard::{references, CONTENT_SECURITY_POLICY};

/// A GET without a key: status, headers, body text.
async fn fetch(server: &Server, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let response = server
        .http
        .get(format!("{}{path}", server.base))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The page's files (src/href), each fetched: (path, content type, body).
async fn referenced_files(server: &Server, page: &str) -> Vec<(String, String, String)> {
    let mut files = Vec::new();
    for path in references(page) {
        let (status, headers, body) = fetch(server, &path).await;
        assert_eq!(
            status, 200,
            "{path} is referenced by the page but not served"
        );
        files.push((path, header(&headers, "content-type").to_string(), body));
    }
    files
}

async fn plain_server() -> (Server, Table) {
    let table = Table::create().await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    (server, table)
}

#[tokio::test]
async fn dashboard_is_html_with_a_self_only_policy_and_needs_no_key() {
    let (server, table) = plain_server().await;
    let (status, headers, page) = fetch(&server, "/dashboard").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        header(&headers, "content-type").starts_with("text/html"),
        "{headers:?}"
    );
    let policy = header(&headers, "content-security-policy");
    assert_eq!(policy, CONTENT_SECURITY_POLICY);
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");

    // The policy forbids inline script and style, so the page must not rely on any.
    let lower = page.to_lowercase();
    for script in lower.split("<script").skip(1) {
        let (tag, rest) = script.split_once('>').unwrap_or_default();
        assert!(tag.contains("src="), "inline <script{tag}>");
        assert!(rest.starts_with("</script>"), "a script with a body");
    }
    for inline in [
        " onclick=",
        " onload=",
        " onerror=",
        " style=",
        "<style",
        "javascript:",
    ] {
        assert!(!lower.contains(inline), "the page uses {inline}");
    }

    // A data call without a key is still refused.
    let (status, _, _) = fetch(&server, "/v1/devices").await;
    assert_eq!(status, 401);
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn every_file_the_page_loads_is_served_with_its_type_and_headers() {
    let (server, table) = plain_server().await;
    let (_, _, page) = fetch(&server, "/dashboard").await;
    let files = referenced_files(&server, &page).await;
    let mut kinds = Vec::new();
    for (path, content_type, body) in &files {
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            Some("html") => "text/html",
            other => panic!("{path}: unexpected kind of file {other:?}"),
        };
        assert!(content_type.starts_with(expected), "{path}: {content_type}");
        assert!(!body.is_empty(), "{path} is empty");
        kinds.push(expected);
    }
    for kind in ["text/javascript", "text/css"] {
        assert!(kinds.contains(&kind), "the page loads no {kind}: {files:?}");
    }
    let (_, headers, _) = fetch(&server, "/dashboard/dashboard.js").await;
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&headers, "content-security-policy"),
        CONTENT_SECURITY_POLICY
    );

    let (status, _, body) = fetch(&server, "/dashboard/secret.txt").await;
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = fetch(&server, "/dashboard/..%2Fopenapi.json").await;
    assert_eq!(status, 404);
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn no_dashboard_file_names_another_origin() {
    let (server, table) = plain_server().await;
    let (_, _, page) = fetch(&server, "/dashboard").await;
    let mut texts = vec![("/dashboard".to_string(), page.clone())];
    texts.extend(
        referenced_files(&server, &page)
            .await
            .into_iter()
            .map(|(path, _, body)| (path, body)),
    );
    for (path, text) in texts {
        // The SVG namespace is an identifier, never fetched.
        let text = text.replace("http://www.w3.org/2000/svg", "");
        for origin in [
            "http://", "https://", "ws://", "wss://", "\"//", "'//", "(//",
        ] {
            assert!(!text.contains(origin), "{path} names {origin}…");
        }
    }
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn the_script_calls_only_endpoints_of_the_openapi_document() {
    let (server, table) = plain_server().await;
    table
        .insert(&[Row::new(
            "a-1",
            "2026-01-05T10:00:00.000Z",
            json!({"temperature": 21.5}),
        )])
        .await;
    let (_, _, script) = fetch(&server, "/dashboard/dashboard.js").await;
    let document = server.ok("/openapi.json", ADMIN).await;
    let paths = document["paths"].as_object().expect("paths");
    let called: Vec<&str> = script
        .split('"')
        .filter(|literal| literal.starts_with("/v1/"))
        .collect();
    for endpoint in ["/v1/devices", "/v1/stream"] {
        assert!(called.contains(&endpoint), "the script calls {endpoint}");
    }
    for endpoint in &called {
        assert!(
            paths.contains_key(*endpoint),
            "{endpoint} is not documented"
        );
    }
    // The list the script reads has the fields it shows.
    let devices = server.ok("/v1/devices", ADMIN).await;
    let first = &devices["devices"][0];
    assert_eq!(first["device"], json!("a-1"), "{devices}");
    assert!(first["lastSeen"].is_string(), "{devices}");
    assert!(first["messages"].is_i64(), "{devices}");
    server.stop().await;
    table.drop_table().await;
}

/// The script's live call: an EventSource with the key in `access_token` (no header), as a
/// browser makes it, receives the processed messages with their numbers.
#[tokio::test]
async fn the_scripts_live_call_with_access_token_receives_messages() {
    let amqp_url = required_env("TRIBUTARY_TEST_AMQP_URL", "rabbitmq.sh");
    let table = Table::create().await;
    let dir = temp_dir();
    let uri_file = dir.join("amqp-uri");
    std::fs::write(&uri_file, &amqp_url).expect("write uri file");
    let exchange = unique("api_dash");
    let live = json!({"uriFile": uri_file, "exchange": exchange, "declareExchange": true});
    let server = Server::start(config(&table, &dir, json!({"live": live}))).await;
    wait_for(
        "the API to consume live messages",
        Duration::from_secs(20),
        || async { (server.metric("tributary_api_live_connected").await == 1.0).then_some(()) },
    )
    .await;

    let response = server
        .http
        .get(format!("{}/v1/stream?access_token={GROUP_A}", server.base))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open stream");
    assert_eq!(response.status().as_u16(), 200);
    let refused = server
        .http
        .get(format!("{}/v1/stream?access_token=wrong", server.base))
        .send()
        .await
        .expect("open stream");
    assert_eq!(refused.status().as_u16(), 401);

    let mut events = SseReader::from_response(response);
    let ready = events.expect("ready", Duration::from_secs(20)).await;
    assert_eq!(ready.event, "ready");

    let connection = Connection::connect(&amqp_url, ConnectionProperties::default())
        .await
        .expect("RabbitMQ is unreachable; run `tests/services/rabbitmq.sh start`");
    let channel = connection.create_channel().await.expect("channel");
    for (device, temperature) in [("b-1", 9.0), ("a-1", 21.5)] {
        let message = json!({
            "id": new_id(), "device": device, "topic": format!("devices/{device}/telemetry"),
            "receivedAt": "2026-01-05T10:00:00.000Z", "payload": {"temperature": temperature},
        });
        channel
            .basic_publish(
                exchange.as_str().into(),
                format!("devices.{device}.telemetry").as_str().into(),
                BasicPublishOptions::default(),
                message.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
    let event = events.expect("a message", Duration::from_secs(20)).await;
    assert_eq!(event.event, "message");
    let message: Value = serde_json::from_str(&event.data).expect("JSON data");
    // Only the key's device (group A reads a-*), with the number the chart plots.
    assert_eq!(message["device"], json!("a-1"), "{message}");
    assert_eq!(message["payload"]["temperature"], json!(21.5), "{message}");

    drop(events);
    server.stop().await;
    table.drop_table().await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}
