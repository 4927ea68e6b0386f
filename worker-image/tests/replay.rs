//! Replay: messages dead-lettered by a wrong pipeline step go back to their queue once the
//! step is fixed (the operator's replay, as `spec.replay` on a Queue runs it) and are stored
//! once each, under their original ids.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tributary_operator::broker::{self as operator_broker, ReplayRequest};

const DEADLINE: Duration = Duration::from_secs(90);

/// A worker computing `celsius` with `expr`, stored with the message id.
fn step_config(
    scratch: &Scratch,
    broker: &Broker,
    (pg_url, table): (&str, &str),
    expr: &str,
    (run, port): (usize, u16),
) -> PathBuf {
    scratch.file(
        &format!("worker-{run}.yaml"),
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 100, concurrency: 2}}
deadLetter: {{routingKey: {dlq}}}
processing:
  pipeline:
    steps:
      - set: {{field: celsius, expr: "{expr}"}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: celsius, expr: celsius, type: double precision}}]
      batch: {{maxMessages: 50, maxBytes: 1000000, maxAgeMs: 50}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", pg_url).display(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dead_lettered_by_a_wrong_step_are_stored_after_the_fix_and_a_replay() {
    const N: usize = 100;
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("replay").await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("replay");
    let table = unique("replay");
    let envelopes: Vec<Value> = (0..N)
        .map(|i| envelope(&new_id(), "d", json!({"temp": i as f64})))
        .collect();
    let ids: BTreeSet<String> = envelopes
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    broker.publish(&envelopes).await;

    // The step has a typo: every message fails it and is dead-lettered.
    let port = free_port();
    let wrong = step_config(
        &scratch,
        &broker,
        (&pg_url, &table),
        "payload.tmep * 1.0",
        (1, port),
    );
    let mut worker = WorkerProcess::start(&scratch, &wrong, port, 1);
    wait_for(
        "all 100 dead-lettered by the wrong step",
        DEADLINE,
        || async {
            (worker.metric("tributary_worker_messages_acked_total").await == Some(N as f64))
                .then_some(())
        },
    )
    .await;
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, N as u32);
    assert_eq!(count_rows(&pg, &table).await, 0);
    assert!(worker.terminate(DEADLINE).await, "the worker stops cleanly");

    // The step fixed, the worker back; then the replay.
    let port = free_port();
    let fixed = step_config(
        &scratch,
        &broker,
        (&pg_url, &table),
        "payload.temp * 1.0",
        (2, port),
    );
    let worker = WorkerProcess::start(&scratch, &fixed, port, 2);
    let request = ReplayRequest {
        dead_letter_queue: &broker.dead_letter_queue,
        queue: &broker.queue,
        reason_kind: Some("pipeline"),
        max_messages: None,
    };
    let report = operator_broker::Broker::default()
        .replay(broker.url.as_str().into(), &request)
        .await
        .expect("replay");
    assert_eq!(
        (report.moved, report.skipped, report.remaining),
        (N as u64, 0, 0)
    );

    wait_for("the 100 replayed messages stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == N as i64).then_some(())
    })
    .await;
    let stored: BTreeSet<String> = pg
        .query(&format!("SELECT id FROM \"{table}\""), &[])
        .await
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(stored, ids, "stored once each, under the original ids");
    wait_for("the queue drained", DEADLINE, || async {
        (broker.depth(&broker.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    assert_eq!(
        worker
            .metric("tributary_worker_messages_dead_lettered_total")
            .await,
        None,
        "nothing dead-lettered again"
    );
    broker.cleanup().await;
}
