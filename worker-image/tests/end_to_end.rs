//! The worker binary against real RabbitMQ, PostgreSQL, Redis and S3 (moto) on loopback.
//!
//! Needs: `tests/services/{rabbitmq,postgres,redis,s3}.sh start` and their `env` output
//! loaded; see worker-image/README.md.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use rusty_s3::Credentials;
use serde_json::{json, Value};
use tributary_worker::sinks::s3::S3Client;

const DEADLINE: Duration = Duration::from_secs(60);

struct S3Env {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
}

fn s3_env() -> S3Env {
    S3Env {
        endpoint: required_env("TRIBUTARY_TEST_S3_ENDPOINT", "s3.sh"),
        access_key: required_env("TRIBUTARY_TEST_S3_ACCESS_KEY", "s3.sh"),
        secret_key: required_env("TRIBUTARY_TEST_S3_SECRET_KEY", "s3.sh"),
        region: std::env::var("TRIBUTARY_TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
    }
}

fn s3_client(env: &S3Env) -> S3Client {
    tributary_worker::http_client::install_crypto_provider();
    S3Client::new(
        &env.endpoint,
        &env.region,
        Credentials::new(env.access_key.clone(), env.secret_key.clone()),
    )
    .expect("s3 client")
}

/// All JSON lines of all objects under a prefix.
async fn s3_lines(client: &S3Client, bucket: &str) -> Option<Vec<Value>> {
    let keys = client.list_keys(bucket, "").await.ok()?;
    let mut lines = Vec::new();
    for key in keys {
        let body = client.get_object(bucket, &key).await.ok()?;
        for line in String::from_utf8_lossy(&body).lines() {
            lines.push(serde_json::from_str(line).ok()?);
        }
    }
    Some(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_lands_once_in_postgres_s3_and_latest_in_redis() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let redis_url = required_env("TRIBUTARY_TEST_REDIS_URL", "redis.sh");
    let s3 = s3_env();
    let broker = Broker::connect("e2e").await;
    let pg = postgres(&pg_url).await;
    let redis_client = redis::Client::open(redis_url.as_str()).expect("redis url");
    let mut redis = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis unreachable ({e}); run `tests/services/redis.sh start`"));
    let s3_client = s3_client(&s3);
    if let Err(e @ tributary_worker::sinks::s3::S3Error::Request(_)) =
        s3_client.list_keys("does-not-matter", "").await
    {
        panic!("S3 unreachable ({e}); run `tests/services/s3.sh start`");
    }

    let scratch = Scratch::new("e2e");
    let table = unique("readings");
    let bucket = unique("raw").replace('_', "-");
    let key_prefix = unique("latest");
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 300, concurrency: 4}}
deadLetter: {{routingKey: {dlq}}}
processing:
  pipeline:
    steps:
      - set: {{field: fahrenheit, expr: "payload.temp * 9.0 / 5.0 + 32.0"}}
      - drop: [gateway]
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns:
        - {{name: device, expr: device}}
        - {{name: seq, expr: payload.seq, type: bigint}}
        - {{name: fahrenheit, expr: fahrenheit, type: double precision}}
        - {{name: payload, expr: payload, type: jsonb}}
      batch: {{maxMessages: 100, maxBytes: 1000000, maxAgeMs: 100}}
  - redis:
      name: latest
      urlFile: {redis}
      keyTemplate: "{key_prefix}:{{device}}"
      ttlSeconds: 600
  - s3:
      name: archive
      endpoint: {endpoint}
      bucket: {bucket}
      prefix: telemetry/
      createBucket: true
      accessKeyIdFile: {ak}
      secretAccessKeyFile: {sk}
      batch: {{maxMessages: 120, maxBytes: 1000000, maxAgeMs: 300}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", &pg_url).display(),
            redis = scratch.file("redis", &redis_url).display(),
            endpoint = s3.endpoint,
            ak = scratch.file("ak", &s3.access_key).display(),
            sk = scratch.file("sk", &s3.secret_key).display(),
        ),
    );

    const N: usize = 500;
    let devices = ["press-1", "press-2", "press-3", "press-4", "press-5"];
    let envelopes: Vec<Value> = (0..N)
        .map(|seq| {
            envelope(
                &new_id(),
                devices[seq % devices.len()],
                json!({"temp": 20.0 + (seq % 10) as f64, "seq": seq}),
            )
        })
        .collect();
    broker.publish(&envelopes).await;

    let mut worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("N rows in PostgreSQL", DEADLINE, || async {
        (count_rows(&pg, &table).await == N as i64).then_some(())
    })
    .await;
    let lines = wait_for("N lines in S3 objects", DEADLINE, || async {
        s3_lines(&s3_client, &bucket).await.filter(|l| l.len() >= N)
    })
    .await;
    wait_for(
        "the queue to be drained and acknowledged",
        DEADLINE,
        || async {
            (broker.depth(&broker.queue).await == 0
                && worker.metric("tributary_worker_messages_acked_total").await == Some(N as f64))
            .then_some(())
        },
    )
    .await;
    assert_eq!(worker.status("/readyz").await, Some(200));
    assert_eq!(worker.status("/healthz").await, Some(200));
    assert!(
        worker.terminate(Duration::from_secs(30)).await,
        "{}",
        worker.log_text()
    );

    // PostgreSQL: every message once, with the pipeline's field.
    assert_eq!(count_rows(&pg, &table).await, N as i64);
    let row = pg
        .query_one(
            &format!("SELECT device, fahrenheit, payload->>'seq' FROM \"{table}\" WHERE id = $1"),
            &[&envelopes[7]["id"].as_str()],
        )
        .await
        .expect("row of message 7");
    assert_eq!(row.get::<_, String>(0), "press-3");
    assert_eq!(row.get::<_, f64>(1), (20.0 + 7.0) * 9.0 / 5.0 + 32.0);
    assert_eq!(row.get::<_, String>(2), "7");

    // S3: N lines, one per message, processed.
    assert_eq!(lines.len(), N);
    let ids: HashSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids.len(), N);
    assert!(lines
        .iter()
        .all(|l| l.get("gateway").is_none() && l["fahrenheit"].is_number()));

    // Redis: the latest (largest id) message per device.
    let mut latest: HashMap<&str, &Value> = HashMap::new();
    for e in &envelopes {
        let device = e["device"].as_str().unwrap_or_default();
        latest.insert(device, e); // ids increase with publication order
    }
    for (device, expected) in latest {
        let stored: Option<String> = redis::cmd("GET")
            .arg(format!("{key_prefix}:{device}"))
            .query_async(&mut redis)
            .await
            .expect("redis GET");
        let stored: Value = serde_json::from_str(&stored.expect("latest value")).expect("json");
        assert_eq!(stored["id"], expected["id"], "latest value of {device}");
        assert_eq!(stored["payload"]["seq"], expected["payload"]["data"]["seq"]);
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("{key_prefix}:{device}"))
            .query_async(&mut redis)
            .await
            .expect("redis TTL");
        assert!(ttl > 0 && ttl <= 600, "ttl {ttl}");
    }
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    broker.cleanup().await;
}

/// The example user container (Python, standard library only), on a free loopback port.
struct UserContainer {
    child: std::process::Child,
}

impl Drop for UserContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_container_example_processes_messages_end_to_end() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("custom").await;
    let pg = postgres(&pg_url).await;
    let script = repo_root().join("examples/custom-worker/worker.py");
    // PORT=0: the container binds a free port itself and prints it (no port race).
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let _container = UserContainer { child };
    let mut first_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first_line)
        .expect("the example container prints where it listens");
    let container_port: u16 = first_line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in the container's first line {first_line:?}"));
    tributary_worker::http_client::install_crypto_provider();
    let http = reqwest::Client::new();
    wait_for(
        "the example container to answer /healthz",
        DEADLINE,
        || async {
            http.get(format!("http://127.0.0.1:{container_port}/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        },
    )
    .await;

    let scratch = Scratch::new("custom");
    let table = unique("custom");
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 100, concurrency: 8}}
deadLetter: {{routingKey: {dlq}}}
processing:
  container: {{url: "http://127.0.0.1:{container_port}/process", timeoutMs: 5000}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns:
        - {{name: device, expr: device}}
        - {{name: fahrenheit, expr: fahrenheit, type: double precision}}
        - {{name: level, expr: level}}
      batch: {{maxMessages: 20, maxBytes: 1000000, maxAgeMs: 50}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", &pg_url).display(),
        ),
    );
    const N: usize = 60;
    let mut envelopes: Vec<Value> = (0..N)
        .map(|i| envelope(&new_id(), "oven", json!({"temp": i as f64})))
        .collect();
    let refused = envelope(&new_id(), "oven", json!({"pressure": 3}));
    let refused_id = refused["id"].as_str().unwrap_or_default().to_string();
    envelopes.insert(N / 2, refused);
    broker.publish(&envelopes).await;

    let mut worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("the container's results stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == N as i64).then_some(())
    })
    .await;
    let dead = wait_for("the refused message dead-lettered", DEADLINE, || async {
        broker.take_dead_letter().await
    })
    .await;
    assert_eq!(dead.0, refused_id);
    assert!(dead.1.contains("422"), "{}", dead.1);
    assert!(dead.1.contains("payload.temp is missing"), "{}", dead.1);

    let row = pg
        .query_one(
            &format!("SELECT fahrenheit, level FROM \"{table}\" WHERE id = $1"),
            &[&envelopes[40]["id"].as_str()],
        )
        .await
        .expect("row");
    // envelopes[40] is message 39 (the refused one was inserted at 30): 39 °C.
    assert_eq!(row.get::<_, f64>(0), 102.2);
    assert_eq!(row.get::<_, String>(1), "hot");
    wait_for("every message settled", DEADLINE, || async {
        (worker.metric("tributary_worker_messages_acked_total").await == Some(N as f64 + 1.0))
            .then_some(())
    })
    .await;
    assert!(
        worker.terminate(Duration::from_secs(30)).await,
        "{}",
        worker.log_text()
    );
    broker.cleanup().await;
}

#[test]
fn invalid_cel_expression_stops_the_worker_naming_step_and_position() {
    let scratch = Scratch::new("badcel");
    let uri = scratch.file("amqp", "amqp://127.0.0.1:1/%2f");
    let pg = scratch.file("pg", "postgres://x@127.0.0.1:1/x");
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {uri}, name: q}}
processing:
  pipeline:
    steps:
      - filter: "true"
      - set: {{field: f, expr: "payload.temp *"}}
sinks:
  - postgres: {{name: rows, urlFile: {pg}, table: t, columns: [{{name: f, expr: f}}]}}
"#,
            uri = uri.display(),
            pg = pg.display()
        ),
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tributary-worker"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pipeline step 2 (set): invalid CEL expression `payload.temp *` at 1:"),
        "{stderr}"
    );
}

#[test]
fn unknown_config_field_stops_the_worker_with_its_name() {
    let scratch = Scratch::new("badfield");
    let config = scratch.file(
        "worker.yaml",
        "queue: {uriFile: /nonexistent, name: q, prefetsh: 3}\nsinks: []\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tributary-worker"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run worker");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown field `prefetsh`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_pending_batches_and_acknowledges_before_exit() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("drain").await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("drain");
    let table = unique("drain");
    let port = free_port();
    // The batch would wait 10 minutes: only the shutdown flush can write it (the prefetch
    // of 1000 allows batches of 250, more than the 200 messages).
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 1000}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: device, expr: device}}]
      batch: {{maxMessages: 10000, maxBytes: 100000000, maxAgeMs: 600000}}
http: {{listen: "127.0.0.1:{port}"}}
shutdownGraceSeconds: 20
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            pg = scratch.file("pg", &pg_url).display(),
        ),
    );
    const N: usize = 200;
    let envelopes: Vec<Value> = (0..N)
        .map(|_| envelope(&new_id(), "d", json!({})))
        .collect();
    broker.publish(&envelopes).await;
    let mut worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("every message received", DEADLINE, || async {
        (worker
            .metric("tributary_worker_messages_consumed_total")
            .await
            == Some(N as f64))
        .then_some(())
    })
    .await;
    assert_eq!(
        count_rows(&pg, &table).await,
        0,
        "the batch is still pending"
    );

    assert!(
        worker.terminate(Duration::from_secs(30)).await,
        "{}",
        worker.log_text()
    );
    assert_eq!(count_rows(&pg, &table).await, N as i64);
    assert_eq!(broker.depth(&broker.queue).await, 0, "all acknowledged");
    broker.cleanup().await;
}
