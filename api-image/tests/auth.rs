//! API keys, scopes, rate limits, CORS, limits and the operations endpoints, against a real
//! server over a real PostgreSQL table.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

async fn filled_table() -> Table {
    let table = Table::create().await;
    let mut rows = Vec::new();
    for (i, device) in ["a-1", "a-2", "b-1", "b-2", "c-1"].iter().enumerate() {
        for j in 0..3 {
            rows.push(Row::new(
                device,
                &format!("2026-01-05T10:0{j}:0{i}.000Z"),
                json!({"temperature": 20 + i + j}),
            ));
        }
    }
    table.insert(&rows).await;
    table
}

fn devices_of(body: &Value) -> BTreeSet<String> {
    let list = body["devices"]
        .as_array()
        .or_else(|| body["items"].as_array())
        .expect("a list");
    list.iter()
        .map(|d| d["device"].as_str().expect("device").to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn keys_read_only_their_group() {
    let table = filled_table().await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;

    // Lists hold only the key's devices.
    assert_eq!(
        devices_of(&server.ok("/v1/devices", ADMIN).await),
        set(&["a-1", "a-2", "b-1", "b-2", "c-1"])
    );
    assert_eq!(
        devices_of(&server.ok("/v1/devices", GROUP_A).await),
        set(&["a-1", "a-2"])
    );
    assert_eq!(
        devices_of(&server.ok("/v1/devices", PAIR_B).await),
        set(&["b-1", "b-2"])
    );
    assert_eq!(
        devices_of(&server.ok("/v1/history", GROUP_A).await),
        set(&["a-1", "a-2"])
    );
    assert_eq!(
        devices_of(&server.ok("/v1/history", PAIR_B).await),
        set(&["b-1", "b-2"])
    );
    let buckets = server
        .ok(
            "/v1/history?from=2026-01-05T10:00:00Z&to=2026-01-05T11:00:00Z&bucket=1h&field=payload.temperature",
            GROUP_A,
        )
        .await;
    assert_eq!(
        buckets["buckets"][0]["rows"],
        json!(6),
        "only group A's rows: {buckets}"
    );

    // Another group's device looks like no device at all; explicit group queries are refused.
    for path in [
        "/v1/devices/b-1/latest",
        "/v1/devices/b-1/history",
        "/v1/devices/c-1/history?from=2026-01-05T10:00:00Z&to=2026-01-05T11:00:00Z&bucket=1m&field=payload.temperature",
    ] {
        let (status, body) = server.get(path, GROUP_A).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(server.get("/v1/devices/a-1/latest", PAIR_B).await.0, 404);
    for (path, key) in [
        ("/v1/history?devices=a-1,b-1", GROUP_A),
        ("/v1/history?devicePrefix=b-", GROUP_A),
        ("/v1/history?devicePrefix=", GROUP_A),
        ("/v1/history?devicePrefix=b-", PAIR_B),
        ("/v1/stream?device=b-1", GROUP_A),
        ("/v1/ws?device=a-1", PAIR_B),
    ] {
        let (status, body) = server.get(path, key).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    // Their own devices work.
    assert_eq!(server.get("/v1/devices/a-2/latest", GROUP_A).await.0, 200);
    assert_eq!(
        devices_of(&server.ok("/v1/history?devicePrefix=a-1", GROUP_A).await),
        set(&["a-1"])
    );
    assert_eq!(
        devices_of(&server.ok("/v1/history?devices=b-2", PAIR_B).await),
        set(&["b-2"])
    );

    // No key, an unknown key, or the configured hash itself: 401.
    let response = server
        .http
        .get(format!("{}/v1/devices", server.base))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(server.get("/v1/devices", "not-a-key").await.0, 401);
    let hash = tributary_api::keys::hash_key(ADMIN);
    assert_eq!(server.get("/v1/devices", &hash).await.0, 401);
    assert!(server.metric("tributary_api_auth_failures_total").await >= 3.0);

    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_and_others_do_not() {
    let table = filled_table().await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    // `tight` allows a burst of 3 and 1 request per second after it.
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let response = server
            .http
            .get(format!("{}/v1/devices", server.base))
            .bearer_auth(TIGHT)
            .send()
            .await
            .expect("request");
        if response.status().as_u16() == 429 {
            retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        statuses.push(response.status().as_u16());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    println!("tight key: {statuses:?} in {elapsed:.3}s");
    assert_eq!(statuses[0], 200);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // The bucket admits its burst plus what refilled meanwhile, whatever the machine's speed.
    assert!(
        ok as f64 <= 3.0 + elapsed.ceil(),
        "{ok} admitted in {elapsed}s"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "Retry-After on 429");
    // Another key is not slowed by it.
    for _ in 0..5 {
        assert_eq!(server.get("/v1/devices", ADMIN).await.0, 200);
    }
    assert!(
        server
            .metric("tributary_api_rate_limited_total{key=\"tight\"}")
            .await
            >= 1.0
    );
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn openapi_documents_every_route_the_server_answers() {
    let table = filled_table().await;
    let dir = temp_dir();
    let server = Server::start(config(&table, &dir, json!({}))).await;
    let document: Value = server
        .http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    let paths = document["paths"].as_object().expect("paths");
    for route in tributary_api::http::ROUTES {
        assert!(
            paths.contains_key(&tributary_api::openapi::path_of(route)),
            "{route} missing from /openapi.json"
        );
    }
    // Every documented path is served with its documented method (live ones and commands
    // answer 503 or 403 here: no broker configured, and ADMIN may not send commands).
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "a-1")
            .replace("{name}", "fan/set")
            .replace("{file}", "dashboard.js");
        let url = format!("{}{concrete}", server.base);
        let (status, body) = if item.get("post").is_some() {
            let response = server
                .http
                .post(&url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("post");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default().into())
        } else {
            server.get(&concrete, ADMIN).await
        };
        assert_ne!(status, 404, "{path} is documented but not served: {body}");
        assert_ne!(status, 405, "{path} does not answer its documented method");
        println!("{path}: {status}");
    }
    assert_eq!(server.get("/v1/nothing", ADMIN).await.0, 404);
    server.stop().await;
    table.drop_table().await;
}

#[tokio::test]
async fn operations_endpoints_cors_and_limits() {
    let table = filled_table().await;
    let dir = temp_dir();
    let server = Server::start(config(
        &table,
        &dir,
        json!({"corsAllowedOrigins": ["https://dashboard.example"], "limits": {"maxRequestBytes": 1024}}),
    ))
    .await;
    let get = |path: &str| server.http.get(format!("{}{path}", server.base));
    assert_eq!(
        get("/healthz")
            .send()
            .await
            .expect("healthz")
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get("/readyz")
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16(),
        200
    );

    // CORS: the allowed origin gets the header on a preflight, another origin does not.
    let preflight = |origin: &'static str| {
        server
            .http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/devices", server.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://dashboard.example")
        .await
        .expect("preflight");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://dashboard.example"[..])
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A body above the limit is refused before any handler reads it.
    let response = get("/v1/devices")
        .bearer_auth(ADMIN)
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 413);

    // Metrics: requests by route and status.
    server.ok("/v1/devices", ADMIN).await;
    let _ = server.get("/v1/devices/b-1/latest", GROUP_A).await;
    let metrics = server.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "tributary_api_requests_total{route=\"/v1/devices\",status=\"200\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_value(
            &metrics,
            "tributary_api_requests_total{route=\"/v1/devices/{id}/latest\",status=\"404\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains(ADMIN) && !metrics.contains(GROUP_A),
        "no key in metrics"
    );
    server.stop().await;
    table.drop_table().await;
}

/// The refusals axum and tower make themselves (a path that is not UTF-8, a body over the
/// limit, a method the route does not take) carry the documented JSON error body too.
#[tokio::test]
async fn every_refusal_is_a_json_error() {
    let table = filled_table().await;
    let dir = temp_dir();
    let limits = json!({"limits": {"maxRequestBytes": 1024}});
    let server = Server::start(config(&table, &dir, limits)).await;
    let cases = [
        (reqwest::Method::GET, "/v1/devices/%FF/latest", 0, 400),
        (reqwest::Method::GET, "/v1/devices", 4096, 413),
        (reqwest::Method::DELETE, "/v1/devices", 0, 405),
        (reqwest::Method::GET, "/v1/nothing-here", 0, 404),
    ];
    for (method, path, body, status) in cases {
        let response = server
            .http
            .request(method.clone(), format!("{}{path}", server.base))
            .bearer_auth(ADMIN)
            .body(vec![b'x'; body])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        let allow = response.headers().get("allow").cloned();
        let answer: Value = response.json().await.expect("a JSON body");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
        if status == 405 {
            assert!(allow.is_some(), "405 names the allowed methods");
        }
    }
    server.stop().await;
    table.drop_table().await;
}

/// Idle and half-header sockets are closed after the head deadline, connections past the
/// cap are closed at once, and a well-behaved client is served meanwhile.
#[tokio::test]
async fn slow_and_excess_connections_are_closed_while_a_client_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let table = filled_table().await;
    let dir = temp_dir();
    let server = Server::start(config(
        &table,
        &dir,
        json!({"limits": {"maxConnections": 8, "headerTimeoutSeconds": 6}}),
    ))
    .await;
    // Six sockets that never finish a request head (three silent, three half a header).
    let mut hostile = Vec::new();
    for i in 0..6 {
        let mut socket = tokio::net::TcpStream::connect(server.address)
            .await
            .expect("connect");
        if i % 2 == 1 {
            socket
                .write_all(b"GET /v1/devices HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("half a header");
        }
        hostile.push(socket);
    }
    // Four more: two fit under the cap (8) and wait for their head deadline (6 s); the two
    // past it are closed as soon as they are accepted.
    let mut excess = Vec::new();
    for _ in 0..4 {
        excess.push(
            tokio::net::TcpStream::connect(server.address)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut closed_at_once = 0;
    for socket in &mut excess {
        let mut byte = [0u8; 1];
        let read = std::time::Duration::from_millis(200);
        if let Ok(Ok(0)) = tokio::time::timeout(read, socket.read(&mut byte)).await {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, 2, "connections past the cap closed at once");
    // Every hostile socket is closed by the server after the head deadline.
    let started = Instant::now();
    for (i, socket) in hostile.iter_mut().enumerate() {
        let mut buffer = [0u8; 512];
        let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 answer may come before the close
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "hostile socket {i} still open after 20 s");
    }
    println!(
        "hostile sockets closed after {:.2} s; excess connections closed at once: {closed_at_once} of 4",
        started.elapsed().as_secs_f64()
    );
    // With the slots free again, a client is served.
    drop(excess);
    let devices = server.ok("/v1/devices", ADMIN).await;
    assert_eq!(devices_of(&devices).len(), 5, "{devices}");
    server.stop().await;
    table.drop_table().await;
}
