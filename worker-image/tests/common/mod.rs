//! Shared helpers of the integration tests: real servers on loopback (started by
//! `tests/services/*.sh`, found through `TRIBUTARY_TEST_*` variables), envelopes, a worker
//! process, and waiting on conditions with deadlines.
//!
//! A missing variable or an unreachable server fails the test with what to run; nothing is
//! skipped.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};

/// The repository root (for the service scripts and the example).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

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

/// A unique, lowercase name for per-test queues, tables, buckets and keys.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

/// A fresh ULID (envelope id), strictly increasing within this process as the gateway's
/// are per message stream.
pub fn new_id() -> String {
    static GENERATOR: std::sync::LazyLock<std::sync::Mutex<ulid::Generator>> =
        std::sync::LazyLock::new(|| std::sync::Mutex::new(ulid::Generator::new()));
    let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::generate())
        .to_string()
}

/// An envelope as the gateway publishes it.
pub fn envelope(id: &str, device: &str, payload: Value) -> Value {
    json!({
        "id": id,
        "tenant": "factory",
        "gateway": "line-1",
        "device": device,
        "topic": format!("devices/{device}/telemetry"),
        "protocol": "mqtt",
        "receivedAt": "2026-11-26T09:00:00.000Z",
        "payload": {"encoding": "json", "data": payload},
    })
}

/// The broker, with a per-test queue and dead-letter queue.
pub struct Broker {
    pub url: String,
    pub connection: Connection,
    pub channel: Channel,
    pub queue: String,
    pub dead_letter_queue: String,
}

impl Broker {
    /// Connects to the shared test broker (or fails saying how to start RabbitMQ) and
    /// declares fresh queues.
    pub async fn connect(prefix: &str) -> Broker {
        let url = required_env("TRIBUTARY_TEST_AMQP_URL", "rabbitmq.sh");
        Broker::connect_to(&url, &unique(prefix)).await
    }

    /// Connects to the broker at `url` and declares the durable queue `queue` and its
    /// dead-letter queue (again, when they exist: declaring is idempotent).
    pub async fn connect_to(url: &str, queue: &str) -> Broker {
        let url = url.to_owned();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ at {} is unreachable ({e}); run `tests/services/rabbitmq.sh start`",
                    url.rsplit('@').next().unwrap_or_default()
                )
            });
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let queue = queue.to_owned();
        let dead_letter_queue = format!("{queue}.dlq");
        for name in [&queue, &dead_letter_queue] {
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("queue.declare");
        }
        Broker {
            url,
            connection,
            channel,
            queue,
            dead_letter_queue,
        }
    }

    /// Publishes raw bodies (persistent, with message ids), waiting for broker confirms.
    pub async fn publish_raw(&self, messages: &[(String, Vec<u8>)]) {
        let mut confirms = Vec::new();
        for (id, body) in messages {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_message_id(id.as_str().into());
            confirms.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        self.queue.as_str().into(),
                        BasicPublishOptions::default(),
                        body,
                        properties,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            assert!(
                confirm.await.expect("confirm").is_ack(),
                "broker nacked a publish"
            );
        }
    }

    /// Publishes envelopes.
    pub async fn publish(&self, envelopes: &[Value]) {
        let messages: Vec<(String, Vec<u8>)> = envelopes
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap_or_default().to_string(),
                    serde_json::to_vec(e).expect("json"),
                )
            })
            .collect();
        self.publish_raw(&messages).await;
    }

    /// Ready messages in a queue.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Takes one message from the dead-letter queue: (message id, reason header, body).
    pub async fn take_dead_letter(&self) -> Option<(String, String, Vec<u8>)> {
        let message = self
            .channel
            .basic_get(
                self.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")?;
        let properties = &message.delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let reason = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-tributary-reason").cloned())
            .map(|v| match v {
                lapin::types::AMQPValue::LongString(s) => s.to_string(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        Some((id, reason, message.delivery.data.clone()))
    }

    /// Deletes the test's queues.
    pub async fn cleanup(&self) {
        for name in [&self.queue, &self.dead_letter_queue] {
            let _ = self
                .channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// PostgreSQL (or a failure saying how to start it).
pub async fn postgres(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is unreachable ({e}); run `tests/services/postgres.sh start`"
            )
        });
    tokio::spawn(connection);
    client
}

/// Rows in a table (0 while it does not exist yet).
pub async fn count_rows(client: &tokio_postgres::Client, table: &str) -> i64 {
    match client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

/// A directory of files for one test (config, secrets, logs).
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(&format!("tributary-worker-{name}")));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir }
    }

    /// Writes a file and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).expect("write scratch file");
        path
    }
}

/// A free loopback port (bound and released; the worker binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The worker binary running with a config file.
pub struct WorkerProcess {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl WorkerProcess {
    /// Starts `tributary-worker --config CONFIG`, logging to a file in the scratch dir.
    pub fn start(scratch: &Scratch, config: &Path, metrics_port: u16, run: usize) -> WorkerProcess {
        let log = scratch.dir.join(format!("worker-{run}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tributary-worker"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,tributary_worker=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn worker");
        WorkerProcess {
            child: Some(child),
            log,
            metrics_port,
        }
    }

    /// SIGKILL: a crash, nothing flushed or acknowledged.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns whether it exited successfully.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let status = wait_for("the worker to exit after SIGTERM", timeout, || {
            let result = child.try_wait().ok().flatten();
            async move { result }
        })
        .await;
        status.success()
    }

    /// The worker's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP status of one of the worker's endpoints (`/readyz`), if it answers.
    pub async fn status(&self, path: &str) -> Option<u16> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let client = tributary_worker::http_client::client(Duration::from_secs(5)).ok()?;
        Some(client.get(&url).send().await.ok()?.status().as_u16())
    }

    /// A metric's value from `/metrics` (sum over label sets), if served yet.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let client = tributary_worker::http_client::client(Duration::from_secs(5)).ok()?;
        let text = client.get(&url).send().await.ok()?.text().await.ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// Waits until the worker has acknowledged exactly `count` messages, or fails after
    /// `timeout`.
    pub async fn wait_acked(&self, count: usize, timeout: Duration) {
        wait_for(
            &format!("{count} messages acknowledged"),
            timeout,
            || async {
                (self.metric("tributary_worker_messages_acked_total").await == Some(count as f64))
                    .then_some(())
            },
        )
        .await;
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the seq-rows worker of the outage tests is configured.
pub struct SeqRows<'a> {
    /// Dead-letter into the broker's `.dlq` queue (else: no dead-letter target at all).
    pub dead_letter: bool,
    /// `retry` as (maxAttempts, initialBackoffMs, maxBackoffMs).
    pub retry: (u32, u64, u64),
    /// The PostgreSQL URL.
    pub pg_url: &'a str,
    /// The table.
    pub table: &'a str,
    /// The metrics port.
    pub port: u16,
}

/// A worker config storing each message's `payload.seq` in a table (the outage tests).
pub fn seq_rows_config(scratch: &Scratch, broker: &Broker, rows: &SeqRows<'_>) -> PathBuf {
    let (max_attempts, initial_backoff_ms, max_backoff_ms) = rows.retry;
    let dead_letter = if rows.dead_letter {
        format!("deadLetter: {{routingKey: {}}}", broker.dead_letter_queue)
    } else {
        String::new()
    };
    scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 200, concurrency: 2}}
{dead_letter}
retry: {{maxAttempts: {max_attempts}, initialBackoffMs: {initial_backoff_ms}, maxBackoffMs: {max_backoff_ms}}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: seq, expr: payload.seq, type: bigint}}]
      batch: {{maxMessages: 50, maxBytes: 1000000, maxAgeMs: 50}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            pg = scratch.file("pg", rows.pg_url).display(),
            table = rows.table,
            port = rows.port,
        ),
    )
}

/// One envelope per `seq` in `range`, each with a fresh id.
pub fn seq_envelopes(range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| envelope(&new_id(), "d", json!({"seq": i})))
        .collect()
}

/// Distinct `seq` values stored in `table`.
pub async fn distinct_seq(pg: &tokio_postgres::Client, table: &str) -> i64 {
    pg.query_one(&format!("SELECT count(DISTINCT seq) FROM \"{table}\""), &[])
        .await
        .expect("distinct")
        .get(0)
}

/// A queue's delivery counters from the RabbitMQ management API (they lag by up to the
/// broker's statistics interval, 5 s by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounters {
    /// Deliveries to consumers, redeliveries included.
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acked: u64,
    /// Deliveries of messages that had been delivered before.
    pub redelivered: u64,
}

impl QueueCounters {
    /// Deliveries neither acknowledged nor followed by a redelivery: rejected (or nacked)
    /// without requeue, that is, dropped or dead-lettered by the broker.
    pub fn dropped(&self) -> u64 {
        self.delivered.saturating_sub(self.acked + self.redelivered)
    }
}

/// Reads `queue`'s counters from the shared test broker's management API.
pub async fn queue_counters(queue: &str) -> QueueCounters {
    let api = required_env("TRIBUTARY_TEST_RABBITMQ_API", "rabbitmq.sh");
    let user = required_env("TRIBUTARY_TEST_RABBITMQ_API_USER", "rabbitmq.sh");
    let password = required_env("TRIBUTARY_TEST_RABBITMQ_API_PASSWORD", "rabbitmq.sh");
    let client = tributary_worker::http_client::client(Duration::from_secs(5)).expect("client");
    let bytes = client
        .get(format!("{api}/api/queues/%2f/{queue}"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("management API")
        .bytes()
        .await
        .expect("queue JSON");
    let body: Value = serde_json::from_slice(&bytes).expect("queue JSON");
    let stat = |name: &str| body["message_stats"][name].as_u64().unwrap_or(0);
    QueueCounters {
        delivered: stat("deliver_get"),
        acked: stat("ack"),
        redelivered: stat("redeliver"),
    }
}

/// The port at the end of `host:port` in `address` (a URL or `host:port`), if any.
fn port_in(address: &str) -> Option<u16> {
    let after_host = address.rsplit('@').next()?;
    let host_port = after_host
        .split_once("://")
        .map_or(after_host, |(_, rest)| rest);
    let host_port = host_port.split('/').next()?;
    host_port.rsplit(':').next()?.parse().ok()
}

/// A RabbitMQ node of a test's own beside the shared test broker, which the test may stop
/// and start: same credentials, every port the shared broker's plus `offset`, and an
/// instance named after its port, so runs against different shared brokers never share
/// one.
pub struct SideBroker {
    /// Instance name; the AMQP port is appended.
    pub name: &'static str,
    /// Added to each of the shared broker's ports.
    pub offset: u16,
}

impl SideBroker {
    fn ports(&self) -> (u16, u16, u16) {
        let port = |variable: &str| {
            let value = required_env(variable, "rabbitmq.sh");
            port_in(&value).unwrap_or_else(|| panic!("{variable} names no port: {value}"))
                + self.offset
        };
        (
            port("TRIBUTARY_TEST_AMQP_URL"),
            port("TRIBUTARY_TEST_RABBITMQ_API"),
            port("TRIBUTARY_TEST_RABBITMQ_MQTT"),
        )
    }

    /// Its AMQP URL.
    pub fn url(&self) -> String {
        let shared = required_env("TRIBUTARY_TEST_AMQP_URL", "rabbitmq.sh");
        let port = port_in(&shared).expect("the shared broker's port");
        shared.replace(&format!(":{port}/"), &format!(":{}/", port + self.offset))
    }

    /// Runs `tests/services/rabbitmq.sh ACTION` for this node (blocking: `start` waits
    /// until it is ready).
    pub fn run(&self, action: &str) {
        let (amqp, management, mqtt) = self.ports();
        let script: PathBuf = repo_root().join("tests/services/rabbitmq.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(action)
            .env(
                "TRIBUTARY_RABBITMQ_INSTANCE",
                format!("{}-{amqp}", self.name),
            )
            .env("TRIBUTARY_RABBITMQ_PORT", amqp.to_string())
            .env("TRIBUTARY_RABBITMQ_MGMT_PORT", management.to_string())
            .env("TRIBUTARY_RABBITMQ_MQTT_PORT", mqtt.to_string())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "rabbitmq.sh {action} for the {} broker failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// [`SideBroker::run`] off the async runtime's threads.
    pub async fn run_async(&'static self, action: &'static str) {
        tokio::task::spawn_blocking(move || self.run(action))
            .await
            .expect("rabbitmq.sh task");
    }
}

/// Stops a side broker when dropped (the test's end, also when it fails half-way).
pub struct StopOnDrop(pub &'static SideBroker);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.run("stop");
    }
}
