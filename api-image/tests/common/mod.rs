//! Shared helpers of the integration tests: real servers on loopback (started by
//! `tests/services/*.sh`, found through `TRIBUTARY_TEST_*` variables), a table filled the
//! way the worker's PostgreSQL sink fills it, the API itself on a free port, and an SSE
//! reader.
//!
//! A missing variable or an unreachable server fails the test with what to run; nothing is
//! skipped.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tributary_api::keys::hash_key;
use tributary_api::Api;
use tributary_contract::api_config::ApiConfig;

/// A required environment variable, or a failure that says how to provide it.
pub fn required_env(name: &str, script: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: start the server with `tests/services/{script} start` and load \
             its variables with `eval \"$(tests/services/{script} env)\"` before `cargo test`"
        ),
    }
}

/// Waits until `check` returns Some, polling every 50 ms, or fails with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A unique, lowercase name for per-test tables, exchanges and keys.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A fresh ULID (message id), strictly increasing within this process.
pub fn new_id() -> String {
    static GENERATOR: std::sync::LazyLock<std::sync::Mutex<ulid::Generator>> =
        std::sync::LazyLock::new(|| std::sync::Mutex::new(ulid::Generator::new()));
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::generate())
        .to_string()
}

/// A private directory for secret files, under the build's own temporary directory (not
/// the shared /tmp: the files hold the test servers' URLs).
pub fn temp_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("api-test"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Connects to the test database or fails saying how to start it.
pub async fn postgres() -> (String, Client) {
    let url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is unreachable ({e}); run `tests/services/postgres.sh start`")
        });
    tokio::spawn(connection);
    (url, client)
}

/// One row as the worker's PostgreSQL sink writes it for the mapping
/// `device: device`, `topic: topic`, `received_at: receivedAt (timestamptz)`,
/// `payload: payload (jsonb)`: every value arrives as text for PostgreSQL to parse.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub device: String,
    pub topic: String,
    /// RFC 3339 with milliseconds, as in the envelope's `receivedAt`.
    pub received_at: String,
    pub payload: Value,
}

impl Row {
    pub fn new(device: &str, received_at: &str, payload: Value) -> Self {
        Self {
            id: new_id(),
            device: device.into(),
            topic: format!("devices/{device}/telemetry"),
            received_at: received_at.into(),
            payload,
        }
    }
}

/// A table like the one a PostgreSQL Sink with `createTable: true` creates.
pub struct Table {
    pub name: String,
    pub client: Client,
    pub url: String,
}

impl Table {
    pub async fn create() -> Table {
        let (url, client) = postgres().await;
        let name = unique("api_readings");
        client
            .batch_execute(&format!(
                "CREATE TABLE {name} (\"id\" text PRIMARY KEY, \"device\" text, \"topic\" text, \
                 \"received_at\" timestamptz, \"payload\" jsonb); \
                 CREATE INDEX ON {name} (device, received_at, id)"
            ))
            .await
            .expect("create table");
        Table { name, client, url }
    }

    /// Inserts rows with text values cast by PostgreSQL, as the worker's sink does;
    /// duplicates of an id are skipped like the sink's `ON CONFLICT DO NOTHING`.
    pub async fn insert(&self, rows: &[Row]) {
        let column = |f: fn(&Row) -> String| rows.iter().map(f).collect::<Vec<String>>();
        self.client
            .execute(
                &format!(
                    "INSERT INTO {} (id, device, topic, received_at, payload) \
                     SELECT a, b, c, d::timestamptz, e::jsonb \
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(a, b, c, d, e) \
                     ON CONFLICT DO NOTHING",
                    self.name
                ),
                &[
                    &column(|r| r.id.clone()),
                    &column(|r| r.device.clone()),
                    &column(|r| r.topic.clone()),
                    &column(|r| r.received_at.clone()),
                    &column(|r| r.payload.to_string()),
                ],
            )
            .await
            .expect("insert rows");
    }

    pub async fn drop_table(&self) {
        let _ = self
            .client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.name))
            .await;
    }
}

/// The keys every test server knows: `admin` (all devices), `group-a` (prefix `a-`),
/// `pair-b` (the devices `b-1` and `b-2`), and `tight` (all devices, 1 request/s, burst 3).
pub const ADMIN: &str = "admin-key-0123456789";
pub const GROUP_A: &str = "group-a-key-0123456789";
pub const PAIR_B: &str = "pair-b-key-0123456789";
pub const TIGHT: &str = "tight-key-0123456789";

/// The config of a test server over `table`; `extra` is merged in (redis, live, limits…).
pub fn config(table: &Table, dir: &std::path::Path, extra: Value) -> ApiConfig {
    let pg_file = dir.join("postgres-url");
    std::fs::write(&pg_file, &table.url).expect("write url file");
    let mut value = json!({
        "listen": "127.0.0.1:0",
        "postgres": {"urlFile": pg_file, "table": table.name},
        "apiKeys": [
            {"name": "admin", "sha256": hash_key(ADMIN), "scope": "all",
             "rateLimit": {"requestsPerSecond": 1000, "burst": 1000}},
            {"name": "group-a", "sha256": hash_key(GROUP_A), "scope": {"devicePrefix": "a-"},
             "rateLimit": {"requestsPerSecond": 1000, "burst": 1000}},
            {"name": "pair-b", "sha256": hash_key(PAIR_B), "scope": {"devices": ["b-1", "b-2"]},
             "rateLimit": {"requestsPerSecond": 1000, "burst": 1000}},
            {"name": "tight", "sha256": hash_key(TIGHT), "scope": "all",
             "rateLimit": {"requestsPerSecond": 1, "burst": 3}}
        ],
        "shutdownGraceSeconds": 2
    });
    if let (Some(base), Some(extra)) = (value.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(value).expect("test config")
}

/// The API running in this process on a free port.
pub struct Server {
    pub base: String,
    pub address: SocketAddr,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(config: ApiConfig) -> Server {
        let api = Api::build(config).expect("build api");
        let (address, server) = api.bind().await.expect("bind");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            server.run(token).await.expect("server");
        });
        Server {
            base: format!("http://{address}"),
            address,
            http: http_client(),
            shutdown,
            task,
        }
    }

    /// GET with a key; status and JSON body (Null when not JSON).
    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// GET with a key, which must answer 200; the JSON body.
    pub async fn ok(&self, path: &str, key: &str) -> Value {
        let (status, body) = self.get(path, key).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// The Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one metric line (`name{labels}`), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Stops like SIGTERM does and waits for the server to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within its grace period")
            .expect("server task");
    }
}

/// The value of `series` (exact name with labels) in Prometheus text, or 0.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads events from an SSE response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub async fn open(server: &Server, query: &str, key: &str) -> SseReader {
        let response = server
            .http
            .get(format!("{}/v1/stream{query}", server.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("open stream");
        assert_eq!(response.status().as_u16(), 200, "stream {query}");
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// Reads an already opened stream (for example one opened with `access_token=`).
    pub fn from_response(response: reqwest::Response) -> SseReader {
        SseReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or None when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().into();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().into());
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = self.response.chunk().await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next event within `timeout`, or a failure naming `what`.
    pub async fn expect(&mut self, what: &str, timeout: Duration) -> SseEvent {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("stream ended while waiting for {what}"),
            Err(_) => panic!("no event within {timeout:?} while waiting for {what}"),
        }
    }
}

/// An HTTP client for the tests. `cargo test --workspace` unifies reqwest's features with the
/// worker's (`rustls-no-provider`), so a TLS crypto provider must be installed first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}
