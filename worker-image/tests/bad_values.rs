//! Values PostgreSQL refuses, against real servers: the message holding one is dead-lettered
//! alone with the reason, and the rest of its batch is stored in one transaction (refusals
//! seen before the write) or in a few (refusals only the server sees).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(90);
const MESSAGES: usize = 50;

/// A worker config storing `payload.seq` (bigint), `payload.note` (text) and `payload.doc`
/// (jsonb) in `table`, in batches of exactly [`MESSAGES`] (the age cap is far away, so the
/// messages published before the worker starts make one batch).
fn config(scratch: &Scratch, broker: &Broker, pg_url: &str, table: &str, port: u16) -> String {
    format!(
        r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 200}}
deadLetter: {{routingKey: {dlq}}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns:
        - {{name: seq, expr: payload.seq, type: bigint}}
        - {{name: note, expr: payload.note, type: text}}
        - {{name: doc, expr: payload.doc, type: jsonb}}
      batch: {{maxMessages: {MESSAGES}, maxBytes: 10000000, maxAgeMs: 60000}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
        amqp = scratch.file("amqp", &broker.url).display(),
        queue = broker.queue,
        dlq = broker.dead_letter_queue,
        pg = scratch.file("pg", pg_url).display(),
    )
}

/// [`MESSAGES`] envelopes; those at the positions in `bad` get their payload from `bad_payload`.
fn envelopes(bad: &[(usize, Value)]) -> (Vec<Value>, Vec<String>) {
    let mut bad_ids = Vec::new();
    let envelopes = (0..MESSAGES)
        .map(|seq| {
            let payload = match bad.iter().find(|(at, _)| *at == seq) {
                Some((_, payload)) => payload.clone(),
                None => json!({"seq": seq, "note": format!("note {seq}"), "doc": {"seq": seq}}),
            };
            let envelope = envelope(&new_id(), "d", payload);
            if bad.iter().any(|(at, _)| *at == seq) {
                bad_ids.push(envelope["id"].as_str().unwrap_or_default().to_string());
            }
            envelope
        })
        .collect();
    (envelopes, bad_ids)
}

/// Runs one batch of [`MESSAGES`] through a worker; returns the dead letters (id → reason)
/// and the number of transactions that stored the rows (distinct `xmin`).
async fn run_batch(name: &str, bad: &[(usize, Value)]) -> (Vec<(String, String)>, i64) {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect(name).await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new(name);
    let table = unique(name);
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &config(&scratch, &broker, &pg_url, &table, port),
    );
    let (envelopes, bad_ids) = envelopes(bad);
    broker.publish(&envelopes).await;

    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    let good = (MESSAGES - bad.len()) as i64;
    wait_for("the good rows stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == good).then_some(())
    })
    .await;
    wait_for("every message settled", DEADLINE, || async {
        (worker.metric("tributary_worker_messages_acked_total").await == Some(MESSAGES as f64))
            .then_some(())
    })
    .await;
    let mut dead = Vec::new();
    while let Some((id, reason, _)) = broker.take_dead_letter().await {
        dead.push((id, reason));
    }
    let dead_ids: HashSet<&str> = dead.iter().map(|(id, _)| id.as_str()).collect();
    let expected: HashSet<&str> = bad_ids.iter().map(String::as_str).collect();
    assert_eq!(dead_ids, expected, "dead letters: {dead:?}");
    assert_eq!(dead.len(), bad.len(), "each bad message dead-lettered once");
    assert_eq!(
        worker
            .metric("tributary_worker_messages_dead_lettered_total")
            .await,
        Some(bad.len() as f64)
    );
    // All of them as refused by the sink, not as poison the worker could not encode.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let rejected = format!(
        "tributary_worker_messages_dead_lettered_total{{reason=\"sink-rejected\"}} {}",
        bad.len()
    );
    assert!(
        metrics.lines().any(|line| line == rejected),
        "no `{rejected}` in\n{metrics}"
    );
    // Nothing lost: every good message is a row, no bad one is, and the queue is empty.
    let stored: Vec<String> = pg
        .query(&format!("SELECT id FROM \"{table}\""), &[])
        .await
        .expect("select ids")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let stored: HashSet<&str> = stored.iter().map(String::as_str).collect();
    for envelope in &envelopes {
        let id = envelope["id"].as_str().unwrap_or_default();
        assert_eq!(stored.contains(id), !expected.contains(id), "{id}");
    }
    assert_eq!(broker.depth(&broker.queue).await, 0);
    let transactions: i64 = pg
        .query_one(
            &format!("SELECT count(DISTINCT xmin::text) FROM \"{table}\""),
            &[],
        )
        .await
        .expect("count xmin")
        .get(0);
    broker.cleanup().await;
    (dead, transactions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_values_are_dead_lettered_and_the_rest_is_stored_in_one_transaction() {
    let (dead, transactions) = run_batch(
        "nul",
        &[
            (7, json!({"seq": 7, "note": "a\u{0}b", "doc": {}})),
            (
                33,
                json!({"seq": 33, "note": "ok", "doc": {"k": ["x\u{0}"]}}),
            ),
        ],
    )
    .await;
    assert_eq!(transactions, 1, "the 48 rows in one transaction");
    for (_, reason) in &dead {
        assert!(
            reason.starts_with("sink rows refused the message: column "),
            "{reason}"
        );
        assert!(reason.contains("U+0000 (NUL)"), "{reason}");
    }
    let reasons: HashSet<&str> = dead
        .iter()
        .filter_map(|(_, r)| r.split(':').nth(1))
        .collect();
    assert_eq!(
        reasons,
        HashSet::from([" column note", " column doc"]),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_only_the_server_refuses_cost_a_few_transactions_not_one_per_row() {
    let (dead, transactions) = run_batch(
        "refused",
        &[
            (7, json!({"seq": "not a number", "note": "n", "doc": {}})),
            (33, json!({"seq": 33, "note": "n", "doc": "{not json"})),
        ],
    )
    .await;
    for (_, reason) in &dead {
        assert!(
            reason.starts_with("sink rows refused the message: 22P02"),
            "{reason}"
        );
    }
    // Halving finds each bad row with one stored range per level: at most
    // 2 bad × ceil(log2 50) = 12 transactions, where one row at a time would take 48.
    assert!(transactions <= 12, "48 rows in {transactions} transactions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_an_integer_column_cannot_hold_is_dead_lettered_before_the_write() {
    let (dead, transactions) = run_batch(
        "fraction",
        &[(20, json!({"seq": 20.5, "note": "n", "doc": {}}))],
    )
    .await;
    assert_eq!(transactions, 1, "the 49 rows in one transaction");
    assert!(
        dead[0]
            .1
            .starts_with("sink rows refused the message: column seq: is not an integer"),
        "{dead:?}"
    );
}
