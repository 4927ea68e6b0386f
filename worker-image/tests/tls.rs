//! TLS to the data stores against the real servers: `tests/services/{postgres,redis}.sh tls`
//! makes the running test servers serve TLS as well, with a certificate from a throwaway CA.
//! A certificate the worker cannot verify is an outage it waits for, never a reason to
//! dead-letter.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use rustls::pki_types::{ServerName, UnixTime};
use serde_json::json;
use tributary_contract::worker_config::{BatchConfig, RedisSinkConfig, SinkConfig};
use tributary_worker::expr::CelEnv;
use tributary_worker::record::Record;
use tributary_worker::sinks::{Sink, SinkError};
use tributary_worker::tls::Verify;

const DEADLINE: Duration = Duration::from_secs(90);

/// Runs `tests/services/SCRIPT tls` (same instance as the plain tests) and reads its exports.
fn tls_env(script: &str) -> HashMap<String, String> {
    let output = Command::new("bash")
        .arg(repo_root().join("tests/services").join(script))
        .arg("tls")
        .output()
        .expect("run the service script");
    assert!(
        output.status.success(),
        "`tests/services/{script} tls` failed (is the server started?): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The TLS URL and CA file of the test PostgreSQL.
fn postgres_tls() -> (String, String) {
    required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let env = tls_env("postgres.sh");
    (
        env["TRIBUTARY_TEST_POSTGRES_TLS_URL"].clone(),
        env["TRIBUTARY_TEST_POSTGRES_CA_FILE"].clone(),
    )
}

/// A worker storing each message's `payload.seq` through a sink with `url` and `ca_file`.
fn worker_config(scratch: &Scratch, broker: &Broker, url: &str, ca: Option<&str>) -> String {
    let ca_line = ca.map(|c| format!("caFile: {c}")).unwrap_or_default();
    format!(
        r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 50, concurrency: 2}}
deadLetter: {{routingKey: {dlq}}}
retry: {{maxAttempts: 3, initialBackoffMs: 50, maxBackoffMs: 200}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      {ca_line}
      table: {table}
      createTable: true
      columns: [{{name: seq, expr: payload.seq, type: bigint}}]
      batch: {{maxMessages: 50, maxBytes: 1000000, maxAgeMs: 20}}
"#,
        amqp = scratch.file("amqp", &broker.url).display(),
        queue = broker.queue,
        dlq = broker.dead_letter_queue,
        pg = scratch.file("pg", url).display(),
        table = broker.queue,
    )
}

/// Publishes 10 messages, runs a worker with the sink's `url`, waits for the 10 rows.
async fn stores_rows(name: &str, url: &str, ca: Option<&str>) {
    let plain = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect(name).await;
    let pg = postgres(&plain).await;
    let scratch = Scratch::new(name);
    let port = free_port();
    let yaml = worker_config(&scratch, &broker, url, ca);
    let config = scratch.file(
        "worker.yaml",
        &format!("{yaml}http: {{listen: \"127.0.0.1:{port}\"}}\n"),
    );
    broker.publish(&seq_envelopes(0..10)).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    let stored = tokio::time::timeout(DEADLINE, async {
        while count_rows(&pg, &broker.queue).await != 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        stored.is_ok(),
        "rows not stored; worker log:\n{}",
        worker.log_text()
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_full_with_the_ca_file_stores_rows() {
    let (url, ca) = postgres_tls();
    stores_rows(
        "pgverifyfull",
        &format!("{url}?sslmode=verify-full"),
        Some(&ca),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_ca_with_the_ca_file_stores_rows() {
    let (url, ca) = postgres_tls();
    stores_rows("pgverifyca", &format!("{url}?sslmode=verify-ca"), Some(&ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_require_encrypts_without_a_ca_file() {
    let (url, _) = postgres_tls();
    stores_rows("pgrequire", &format!("{url}?sslmode=require"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_disable_still_connects_in_plain_text() {
    let plain = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    stores_rows("pgdisable", &format!("{plain}?sslmode=disable"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_certificate_not_trusted_is_waited_for_never_dead_lettered() {
    let (url, ca) = postgres_tls();
    let plain = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("pguntrusted").await;
    let pg = postgres(&plain).await;
    let scratch = Scratch::new("pguntrusted");
    let port = free_port();
    let url = format!("{url}?sslmode=verify-full");
    // System roots only: the throwaway CA is not among them.
    let yaml = worker_config(&scratch, &broker, &url, None);
    let config = scratch.file(
        "worker.yaml",
        &format!("{yaml}http: {{listen: \"127.0.0.1:{port}\"}}\n"),
    );
    broker.publish(&seq_envelopes(0..10)).await;
    let mut worker = WorkerProcess::start(&scratch, &config, port, 1);
    let log = wait_for(
        "the worker to report the refused certificate",
        DEADLINE,
        || {
            let log = worker.log_text();
            async move { log.contains("sink not ready").then_some(log) }
        },
    )
    .await;
    assert!(
        log.contains("TLS handshake") && log.contains("certificate"),
        "{log}"
    );
    assert!(
        !log.contains("tributary:tributary"),
        "the password must not be logged: {log}"
    );
    // Waited for: nothing consumed, nothing dead-lettered, nothing stored.
    assert_eq!(broker.depth(&broker.queue).await, 10);
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    assert_eq!(count_rows(&pg, &broker.queue).await, 0);
    worker.kill();

    // With the CA the same messages are stored: none was lost while the sink was refused.
    let yaml = worker_config(&scratch, &broker, &url, Some(&ca));
    let config = scratch.file(
        "worker.yaml",
        &format!("{yaml}http: {{listen: \"127.0.0.1:{port}\"}}\n"),
    );
    let _worker = WorkerProcess::start(&scratch, &config, port, 2);
    wait_for(
        "the 10 rows stored once the CA is trusted",
        DEADLINE,
        || async { (count_rows(&pg, &broker.queue).await == 10).then_some(()) },
    )
    .await;
    broker.cleanup().await;
}

fn redis_sink(url: &str, ca: Option<&Path>, scratch: &Scratch, prefix: &str) -> Sink {
    let config = SinkConfig::Redis(RedisSinkConfig {
        name: "latest".into(),
        url_file: scratch.file("redis", url),
        ca_file: ca.map(Path::to_path_buf),
        key_template: format!("{prefix}:{{device}}"),
        value: Some("payload.v".into()),
        ttl_seconds: 0,
        batch: BatchConfig {
            max_messages: 10,
            max_bytes: 1 << 20,
            max_age_ms: 10,
        },
    });
    Sink::build(&CelEnv::default(), &config, "amqp://unused").expect("build")
}

#[tokio::test]
async fn redis_over_tls_with_the_ca_file_stores_the_value() {
    let plain = required_env("TRIBUTARY_TEST_REDIS_URL", "redis.sh");
    let env = tls_env("redis.sh");
    let (url, ca) = (
        &env["TRIBUTARY_TEST_REDIS_TLS_URL"],
        &env["TRIBUTARY_TEST_REDIS_CA_FILE"],
    );
    let scratch = Scratch::new("redistls");
    let prefix = unique("tls");
    let sink = redis_sink(url, Some(Path::new(ca)), &scratch, &prefix);
    sink.init().await.expect("TLS connection with the CA file");
    let id = new_id();
    let record = Record {
        id: id.clone(),
        value: json!({"id": id, "device": "d1", "payload": {"v": 7}}),
    };
    sink.write(&[sink.prepare(&record).expect("prepare").expect("written")])
        .await
        .expect("write over TLS");
    let client = redis::Client::open(plain.as_str()).expect("url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let stored: String = redis::cmd("GET")
        .arg(format!("{prefix}:d1"))
        .query_async(&mut connection)
        .await
        .expect("GET");
    assert_eq!(stored, "7");
}

#[tokio::test]
async fn redis_certificate_not_trusted_is_an_outage() {
    required_env("TRIBUTARY_TEST_REDIS_URL", "redis.sh");
    let env = tls_env("redis.sh");
    let scratch = Scratch::new("redisuntrusted");
    let sink = redis_sink(
        &env["TRIBUTARY_TEST_REDIS_TLS_URL"],
        None,
        &scratch,
        "untrusted",
    );
    match sink.init().await {
        Err(SinkError::Unavailable(message)) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("expected an outage naming the certificate, got {other:?}"),
    }
}

/// The verdict of `verify` on the test server's certificate presented for `name`.
fn verdict(verify: Verify, ca: &str, name: &str) -> Result<(), rustls::Error> {
    let ca = Path::new(ca);
    let server = ca.with_file_name("server.pem");
    let chain = tributary_worker::tls::read_ca_file(&server).expect("server certificate");
    let name = ServerName::try_from(name.to_string()).expect("name");
    tributary_worker::tls::verifier(verify, Some(ca))
        .expect("verifier")
        .verify_server_cert(&chain[0], &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn verify_ca_accepts_another_host_name_and_verify_full_does_not() {
    required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let (_, ca) = postgres_tls();
    assert!(verdict(Verify::Full, &ca, "localhost").is_ok());
    assert!(verdict(Verify::Chain, &ca, "db.example.net").is_ok());
    let refused = verdict(Verify::Full, &ca, "db.example.net").expect_err("name mismatch");
    assert!(
        refused.to_string().contains("not valid for name"),
        "{refused}"
    );
}
