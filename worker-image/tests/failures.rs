//! Failure behaviour against real servers: a crash with messages written but not
//! acknowledged, poison messages, a broker restart. (Sink outages: `no_loss.rs`.)

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use serde_json::{json, Value};
use tokio::sync::Notify;

const DEADLINE: Duration = Duration::from_secs(90);

/// A webhook receiver that checks signatures, records ids, and holds every request while
/// its gate is closed.
#[derive(Clone)]
struct Receiver {
    open: Arc<AtomicBool>,
    opened: Arc<Notify>,
    ids: Arc<Mutex<HashSet<String>>>,
    bad_signatures: Arc<Mutex<usize>>,
    secret: &'static [u8],
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    while !r.open.load(Ordering::SeqCst) {
        let notified = r.opened.notified();
        if r.open.load(Ordering::SeqCst) {
            break;
        }
        notified.await;
    }
    let expected = tributary_worker::sinks::webhook::signature(r.secret, &body);
    let signature = headers
        .get("x-tributary-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if signature != expected {
        *r.bad_signatures.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers
        .get("x-tributary-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.ids.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (Receiver, u16) {
    let receiver = Receiver {
        open: Arc::new(AtomicBool::new(false)),
        opened: Arc::new(Notify::new()),
        ids: Arc::default(),
        bad_signatures: Arc::default(),
        secret: b"webhook-test-secret",
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_redelivered_after_a_crash_are_stored_once() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("crash").await;
    let pg = postgres(&pg_url).await;
    let (receiver, hook_port) = start_receiver().await;
    let scratch = Scratch::new("crash");
    let table = unique("crash");
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 1000, concurrency: 4}}
deadLetter: {{routingKey: {dlq}}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: device, expr: device}}]
      batch: {{maxMessages: 100, maxBytes: 1000000, maxAgeMs: 50}}
  - webhook:
      name: hook
      url: "http://127.0.0.1:{hook_port}/hook"
      secretFile: {secret}
      timeoutMs: 600000
      batch: {{maxMessages: 50, maxBytes: 1000000, maxAgeMs: 20}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", &pg_url).display(),
            secret = scratch.file("hook", "webhook-test-secret\n").display(),
        ),
    );
    const N: usize = 1000;
    let envelopes: Vec<Value> = (0..N)
        .map(|i| envelope(&new_id(), &format!("d{}", i % 7), json!({"seq": i})))
        .collect();
    broker.publish(&envelopes).await;

    // First run: PostgreSQL gets every row, but the webhook holds its first batch, so no
    // message is acknowledged when the worker is killed.
    let mut first = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("all rows written by the first worker", DEADLINE, || async {
        (count_rows(&pg, &table).await == N as i64).then_some(())
    })
    .await;
    assert_eq!(
        first.metric("tributary_worker_messages_acked_total").await,
        Some(0.0),
        "nothing may be acknowledged before every sink confirmed"
    );
    first.kill();

    // Second run: every message is delivered again and written again.
    receiver.open.store(true, Ordering::SeqCst);
    receiver.opened.notify_waiters();
    let second = WorkerProcess::start(&scratch, &config, port, 2);
    wait_for(
        "every redelivered message acknowledged",
        DEADLINE,
        || async {
            (second.metric("tributary_worker_messages_acked_total").await == Some(N as f64))
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        second
            .metric("tributary_worker_messages_consumed_total")
            .await,
        Some(N as f64),
        "the second worker saw every message again"
    );
    assert_eq!(
        count_rows(&pg, &table).await,
        N as i64,
        "duplicates were skipped"
    );
    assert_eq!(receiver.ids.lock().map(|ids| ids.len()).unwrap_or(0), N);
    assert_eq!(
        *receiver
            .bad_signatures
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
        0
    );
    assert_eq!(broker.depth(&broker.queue).await, 0);
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_with_its_reason_while_others_flow() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("poison").await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("poison");
    let table = unique("poison");
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 100, concurrency: 1}}
deadLetter: {{routingKey: {dlq}}}
processing:
  pipeline:
    steps:
      - filter: "device != 'ignored'"
      - set: {{field: celsius, expr: "payload.temp * 1.0"}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: celsius, expr: celsius, type: double precision}}]
      batch: {{maxMessages: 10, maxBytes: 1000000, maxAgeMs: 20}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", &pg_url).display(),
        ),
    );
    let good = |i: usize| envelope(&new_id(), "d", json!({"temp": i as f64}));
    let poison = envelope(&new_id(), "d", json!({"humidity": 40}));
    let poison_id = poison["id"].as_str().unwrap_or_default().to_string();
    let mut envelopes: Vec<Value> = (0..20).map(good).collect();
    envelopes.push(poison);
    envelopes.push(envelope(&new_id(), "ignored", json!({"temp": 1.0})));
    envelopes.extend((20..40).map(good));
    broker.publish(&envelopes).await;
    broker
        .publish_raw(&[("not-json".to_string(), b"{this is not json".to_vec())])
        .await;

    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("the 40 good messages stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == 40).then_some(())
    })
    .await;
    wait_for("all 43 messages settled", DEADLINE, || async {
        (worker.metric("tributary_worker_messages_acked_total").await == Some(43.0)).then_some(())
    })
    .await;
    assert_eq!(
        worker
            .metric("tributary_worker_pipeline_dropped_total")
            .await,
        Some(1.0)
    );

    let mut dead = Vec::new();
    while let Some(letter) = broker.take_dead_letter().await {
        dead.push(letter);
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    let (_, reason, _) = dead
        .iter()
        .find(|(id, _, _)| *id == poison_id)
        .expect("the poison message is in the dead-letter queue");
    assert!(
        reason.starts_with("pipeline step 2 (set): CEL evaluation of `payload.temp * 1.0` failed"),
        "{reason}"
    );
    let (_, reason, body) = dead
        .iter()
        .find(|(id, _, _)| id == "not-json")
        .expect("the malformed message is in the dead-letter queue");
    assert!(reason.starts_with("bad envelope:"), "{reason}");
    assert_eq!(
        body, b"{this is not json",
        "dead letters keep the original body"
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_postgres_refuses_is_dead_lettered_alone_and_its_batch_is_stored() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("refused").await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("refused");
    let table = unique("refused");
    let port = free_port();
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 100}}
deadLetter: {{routingKey: {dlq}}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: seq, expr: payload.seq, type: bigint}}]
      batch: {{maxMessages: 100, maxBytes: 1000000, maxAgeMs: 200}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", &pg_url).display(),
        ),
    );
    let mut envelopes: Vec<Value> = (0..30)
        .map(|i| envelope(&new_id(), "d", json!({"seq": i})))
        .collect();
    let bad = envelope(&new_id(), "d", json!({"seq": "not a number"}));
    let bad_id = bad["id"].as_str().unwrap_or_default().to_string();
    envelopes.insert(10, bad);
    broker.publish(&envelopes).await;

    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("the 30 good rows stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == 30).then_some(())
    })
    .await;
    let (id, reason, _) = wait_for("the refused row dead-lettered", DEADLINE, || async {
        broker.take_dead_letter().await
    })
    .await;
    assert_eq!(id, bad_id);
    assert!(
        reason.starts_with("sink rows refused the message: 22P02"),
        "{reason}"
    );
    wait_for("every message settled", DEADLINE, || async {
        (worker.metric("tributary_worker_messages_acked_total").await == Some(31.0)).then_some(())
    })
    .await;
    broker.cleanup().await;
}

/// A node of this test's own (instance `worker-outage-PORT`, the shared broker's ports + 2:
/// AMQP 5675 beside the default 5673) that it may stop; the shared broker is never disturbed.
static OUTAGE_BROKER: SideBroker = SideBroker {
    name: "worker-outage",
    offset: 2,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_reconnects_after_a_broker_restart_and_loses_nothing() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let url = OUTAGE_BROKER.url();
    OUTAGE_BROKER.run_async("start").await;
    let _stop = StopOnDrop(&OUTAGE_BROKER);
    let queue = unique("reconnect");
    let broker = Broker::connect_to(&url, &queue).await;
    let pg = postgres(&pg_url).await;
    let scratch = Scratch::new("reconnect");
    let table = unique("reconnect");
    let port = free_port();
    let rows = SeqRows {
        dead_letter: true,
        retry: (0, 100, 1000),
        pg_url: &pg_url,
        table: &table,
        port,
    };
    let config = seq_rows_config(&scratch, &broker, &rows);
    const HALF: usize = 200;
    let batch = |from: usize| seq_envelopes(from..from + HALF);
    broker.publish(&batch(0)).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for("the first half stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == HALF as i64).then_some(())
    })
    .await;

    drop(broker);
    OUTAGE_BROKER.run_async("stop").await;
    wait_for("the worker to notice the lost broker", DEADLINE, || async {
        (worker.status("/readyz").await == Some(503)).then_some(())
    })
    .await;
    assert_eq!(
        worker.status("/healthz").await,
        Some(200),
        "a lost broker is not a reason to restart the worker"
    );
    OUTAGE_BROKER.run_async("start").await;
    let broker = Broker::connect_to(&url, &queue).await;
    broker.publish(&batch(HALF)).await;

    wait_for(
        "every message stored after the restart, by the same worker process",
        DEADLINE,
        || async { (count_rows(&pg, &table).await == 2 * HALF as i64).then_some(()) },
    )
    .await;
    assert_eq!(worker.status("/readyz").await, Some(200), "consuming again");
    let reconnects = worker
        .metric("tributary_worker_broker_reconnects_total")
        .await
        .unwrap_or(0.0);
    assert!(reconnects >= 1.0, "reconnects counted: {reconnects}");
    assert!(
        worker
            .log_text()
            .contains("broker session ended; unacknowledged messages return to the queue"),
        "the log tells about the reconnect"
    );
    assert_eq!(distinct_seq(&pg, &table).await, 2 * HALF as i64);
    wait_for("the queue drained", DEADLINE, || async {
        (broker.depth(&broker.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    broker.cleanup().await;
    drop(worker);
}
