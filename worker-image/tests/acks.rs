//! Bulk acknowledgements against real servers: the worker acknowledges settled runs of
//! deliveries with one `multiple` ack, and that never covers a message settled otherwise
//! (dead-lettered, rejected) nor one not yet stored — through bad messages in the middle of
//! a stream, a sink outage with a crash in it, and duplicates.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);

/// A worker storing `payload.seq` (bigint) in `table` (which the test creates), batches of
/// 50 under a prefetch of 200, dead letters into the broker's `.dlq` queue.
fn config(scratch: &Scratch, broker: &Broker, (pg_url, table): (&str, &str), port: u16) -> String {
    format!(
        r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 200, concurrency: 4}}
deadLetter: {{routingKey: {dlq}}}
retry: {{maxAttempts: 3, initialBackoffMs: 50, maxBackoffMs: 200}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      columns: [{{name: seq, expr: payload.seq, type: bigint}}]
      batch: {{maxMessages: 50, maxBytes: 1000000, maxAgeMs: 50}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
        amqp = scratch.file("amqp", &broker.url).display(),
        queue = broker.queue,
        dlq = broker.dead_letter_queue,
        pg = scratch.file("pg", pg_url).display(),
    )
}

async fn create_table(pg: &tokio_postgres::Client, table: &str) {
    pg.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id text PRIMARY KEY, seq bigint)"
    ))
    .await
    .expect("create table");
}

/// The worker's counter, 0 when it has not been counted yet.
async fn counted(worker: &WorkerProcess, name: &str) -> f64 {
    worker.metric(name).await.unwrap_or(0.0)
}

async fn wait_acked_by_broker(broker: &Broker, count: u64) -> QueueCounters {
    wait_for(
        &format!("the broker counting {count} acknowledgements"),
        DEADLINE,
        || async {
            let counters = queue_counters(&broker.queue).await;
            (counters.acked == count).then_some(counters)
        },
    )
    .await
}

/// One test's servers: PostgreSQL with its own table, a broker queue, a scratch directory
/// and a port for the worker's HTTP server.
struct Rig {
    pg_url: String,
    pg: tokio_postgres::Client,
    broker: Broker,
    scratch: Scratch,
    table: String,
    port: u16,
}

impl Rig {
    async fn new(name: &str) -> Rig {
        let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
        let pg = postgres(&pg_url).await;
        let table = unique(&name.replace('-', "_"));
        create_table(&pg, &table).await;
        Rig {
            broker: Broker::connect(name).await,
            scratch: Scratch::new(name),
            pg_url,
            pg,
            table,
            port: free_port(),
        }
    }

    /// The worker config of [`config`] for this rig, as written.
    fn config_text(&self) -> String {
        config(
            &self.scratch,
            &self.broker,
            (&self.pg_url, &self.table),
            self.port,
        )
    }

    /// Writes `text` as the worker's config file.
    fn config_file(&self, text: &str) -> std::path::PathBuf {
        self.scratch.file("worker.yaml", text)
    }
}

/// Each envelope as (id, JSON body).
fn encoded(envelopes: &[Value]) -> Vec<(String, Vec<u8>)> {
    envelopes
        .iter()
        .map(|e| (id_of(e), serde_json::to_vec(e).expect("json")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_mid_stream_are_dead_lettered_alone_and_the_rest_acknowledged_in_bulk() {
    const N: usize = 600;
    let rig = Rig::new("bulk-dlq").await;
    let (pg, broker, table) = (&rig.pg, &rig.broker, &rig.table);
    // Two bad messages among good ones: one the worker cannot parse (settled while its
    // neighbours are still being batched), one PostgreSQL refuses in the middle of a batch.
    let mut messages = encoded(&seq_envelopes(0..N));
    messages[137] = ("unparsable".into(), b"{not an envelope".to_vec());
    let refused = envelope(&new_id(), "d", json!({"seq": "not a number"}));
    let refused_id = id_of(&refused);
    messages[401] = (
        refused_id.clone(),
        serde_json::to_vec(&refused).expect("json"),
    );
    broker.publish_raw(&messages).await;

    let config = rig.config_file(&rig.config_text());
    let worker = WorkerProcess::start(&rig.scratch, &config, rig.port, 1);
    worker.wait_acked(N, DEADLINE).await;
    assert_eq!(count_rows(pg, table).await, N as i64 - 2);
    let mut dead = HashSet::new();
    while let Some((id, reason, _)) = broker.take_dead_letter().await {
        assert!(!reason.is_empty(), "{id} carries its reason");
        dead.insert(id);
    }
    let expected: HashSet<String> = ["unparsable".to_string(), refused_id].into();
    assert_eq!(dead, expected);
    assert_eq!(broker.depth(&broker.queue).await, 0);
    let counters = wait_acked_by_broker(broker, N as u64).await;
    assert_eq!(counters.dropped(), 0, "{counters:?}");
    assert_eq!(
        counted(&worker, "tributary_worker_broker_reconnects_total").await,
        0.0,
        "no channel error (an ack of a tag settled before closes the channel)"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_rejected_alone_mid_stream_are_never_covered_by_a_bulk_ack() {
    const N: usize = 600;
    let rig = Rig::new("bulk-reject").await;
    let (pg, broker, table) = (&rig.pg, &rig.broker, &rig.table);
    let mut messages = encoded(&seq_envelopes(0..N));
    for at in [0, 99, 300, 301, 599] {
        messages[at] = (format!("bad-{at}"), b"{not an envelope".to_vec());
    }
    broker.publish_raw(&messages).await;

    // No dead-letter target: a bad message is rejected without requeue, alone.
    let text: String = rig
        .config_text()
        .lines()
        .filter(|line| !line.starts_with("deadLetter"))
        .map(|line| format!("{line}\n"))
        .collect();
    let config = rig.config_file(&text);
    let worker = WorkerProcess::start(&rig.scratch, &config, rig.port, 1);
    let good = N - 5;
    worker.wait_acked(good, DEADLINE).await;
    wait_for("five rejected", DEADLINE, || async {
        (counted(&worker, "tributary_worker_messages_dead_lettered_total").await == 5.0)
            .then_some(())
    })
    .await;
    assert_eq!(count_rows(pg, table).await, good as i64);
    assert_eq!(broker.depth(&broker.queue).await, 0);
    let counters = wait_acked_by_broker(broker, good as u64).await;
    // Rejected, not acknowledged: the broker counts them dropped.
    assert_eq!(counters.dropped(), 5, "{counters:?}");
    assert_eq!(
        counted(&worker, "tributary_worker_broker_reconnects_total").await,
        0.0
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_stream_then_a_crash_loses_nothing_and_stores_each_message_once() {
    const HALF: usize = 400;
    let rig = Rig::new("bulk-outage").await;
    let (pg, broker, table) = (&rig.pg, &rig.broker, &rig.table);
    let away = format!("{table}_away");
    let config = rig.config_file(&rig.config_text());
    let mut worker = WorkerProcess::start(&rig.scratch, &config, rig.port, 1);
    broker.publish(&seq_envelopes(0..HALF)).await;
    worker.wait_acked(HALF, DEADLINE).await;

    // The table disappears (an outage to the worker, as a missing table is) while the
    // second half arrives.
    pg.batch_execute(&format!("ALTER TABLE \"{table}\" RENAME TO \"{away}\""))
        .await
        .expect("rename away");
    broker.publish(&seq_envelopes(HALF..2 * HALF)).await;
    wait_for("retries during the outage", DEADLINE, || async {
        (counted(&worker, "tributary_worker_messages_retried_total").await > 0.0).then_some(())
    })
    .await;
    assert_eq!(
        counted(&worker, "tributary_worker_messages_acked_total").await,
        HALF as f64,
        "nothing acknowledged while the sink is down"
    );
    // The worker crashes holding its batches: they return to the queue.
    worker.kill();
    wait_for("the held messages back in the queue", DEADLINE, || async {
        (broker.depth(&broker.queue).await == HALF as u32).then_some(())
    })
    .await;
    pg.batch_execute(&format!("ALTER TABLE \"{away}\" RENAME TO \"{table}\""))
        .await
        .expect("rename back");
    let worker = WorkerProcess::start(&rig.scratch, &config, rig.port, 2);
    worker.wait_acked(HALF, DEADLINE).await;
    assert_eq!(count_rows(pg, table).await, 2 * HALF as i64);
    assert_eq!(distinct_seq(pg, table).await, 2 * HALF as i64);
    assert_eq!(broker.depth(&broker.queue).await, 0);
    assert_eq!(
        broker.take_dead_letter().await,
        None,
        "an outage dead-letters nothing"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_in_one_batch_and_across_batches_are_stored_once() {
    const IDS: usize = 100;
    let rig = Rig::new("bulk-dups").await;
    let (pg, broker, table) = (&rig.pg, &rig.broker, &rig.table);
    let originals = seq_envelopes(0..IDS);
    // Each id three times: right after itself (same batch) and once more at the end
    // (another batch).
    let mut stream: Vec<Value> = Vec::new();
    for envelope in &originals {
        stream.push(envelope.clone());
        stream.push(envelope.clone());
    }
    stream.extend(originals.iter().cloned());
    broker.publish(&stream).await;
    let config = rig.config_file(&rig.config_text());
    let worker = WorkerProcess::start(&rig.scratch, &config, rig.port, 1);
    worker.wait_acked(3 * IDS, DEADLINE).await;
    assert_eq!(count_rows(pg, table).await, IDS as i64);
    for envelope in originals.iter().take(5) {
        let seq: i64 = pg
            .query_one(
                &format!("SELECT seq FROM \"{table}\" WHERE id = $1"),
                &[&id_of(envelope)],
            )
            .await
            .expect("stored row")
            .get(0);
        assert_eq!(Some(seq), envelope["payload"]["data"]["seq"].as_i64());
    }
    assert_eq!(broker.depth(&broker.queue).await, 0);
    assert_eq!(broker.take_dead_letter().await, None);
    broker.cleanup().await;
}

fn id_of(envelope: &Value) -> String {
    envelope["id"].as_str().unwrap_or_default().to_string()
}
