//! Bounds on user CEL against a real worker: a value built past the size limit dead-letters
//! that message (with the reason) while the others are stored; an over-long expression stops
//! the worker at start with a message saying so.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_value_built_by_a_step_is_dead_lettered_while_others_store() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("celhuge").await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("celhuge");
    let table = unique("celhuge");
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 100, concurrency: 2}}
deadLetter: {{routingKey: {dlq}}}
processing:
  pipeline:
    steps:
      - set: {{field: copies, expr: "payload.items.map(i, payload.s + payload.s)"}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: copies, expr: "size(copies)", type: bigint}}]
      batch: {{maxMessages: 10, maxBytes: 1000000, maxAgeMs: 20}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", &pg_url).display(),
        ),
    );
    let ordinary = |_: usize| envelope(&new_id(), "d", json!({"s": "ab", "items": [1, 2, 3]}));
    // 1000 copies of a 2000-character string: about 2 MB, past the 1 MiB bound.
    let huge = envelope(
        &new_id(),
        "d",
        json!({"s": "x".repeat(1000), "items": (0..1000).collect::<Vec<_>>()}),
    );
    let huge_id = huge["id"].as_str().unwrap_or_default().to_string();
    let mut envelopes: Vec<Value> = (0..10).map(ordinary).collect();
    envelopes.push(huge);
    envelopes.extend((10..20).map(ordinary));
    broker.publish(&envelopes).await;

    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("the 20 ordinary messages stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == 20).then_some(())
    })
    .await;
    let letter = wait_for("the huge message dead-lettered", DEADLINE, || async {
        broker.take_dead_letter().await
    })
    .await;
    let (id, reason, _) = letter;
    assert_eq!(id, huge_id);
    assert!(
        reason.starts_with("pipeline step 1 (set): CEL evaluation of")
            && reason.contains("larger than the 1048576 bytes allowed"),
        "{reason}"
    );
    assert!(
        worker.status("/readyz").await.is_some(),
        "the worker keeps running"
    );
    broker.cleanup().await;
}

#[test]
fn an_over_long_expression_stops_the_worker_at_start() {
    let scratch = Scratch::new("cellong");
    let long = format!("payload.v{}", " + 1".repeat(1100));
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: q}}
processing:
  pipeline:
    steps:
      - set: {{field: v, expr: "{long}"}}
sinks:
  - webhook: {{name: hook, url: "http://127.0.0.1:9/", secretFile: {amqp}}}
"#,
            amqp = scratch.file("amqp", "amqp://127.0.0.1:9").display(),
        ),
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tributary-worker"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run the worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("pipeline step 1 (set)") && stderr.contains("4096 allowed"),
        "{stderr}"
    );
}
