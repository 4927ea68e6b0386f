//! Nothing acknowledged is lost. A sink outage far longer than the retry budget is waited out
//! with backpressure, with or without a dead-letter queue; only a message that is itself bad
//! reaches the dead-letter queue — after the limit when it fails every time, or after the
//! worker's own delivery limit when it keeps crashing its worker on a classic queue; a
//! dead-letter queue that refuses is waited for too.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::*;
use serde_json::{json, Value};
use tributary_contract::worker_status::WorkerStatus;

const DEADLINE: Duration = Duration::from_secs(120);

/// The tests' retry policy: 3 attempts, 50 ms doubling to 200 ms.
const RETRY: (u32, u64, u64) = (3, 50, 200);

/// What that policy allowed a failing sink before this worker waited out outages: the waits
/// between its 3 attempts (50 + 100 ms).
const RETRY_BUDGET: Duration = Duration::from_millis(150);

/// How long the outage lasts: far beyond three retry budgets.
const OUTAGE: Duration = Duration::from_secs(6);

/// Runs our PostgreSQL script for a dedicated instance that this test may stop:
/// `TRIBUTARY_PG_OUTAGE_INSTANCE` on `TRIBUTARY_PG_OUTAGE_PORT` (default `postgres-outage` on
/// 5434), so that test runs beside each other can each have one of their own.
fn outage_postgres(action: &str) -> String {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
    let script: PathBuf = repo_root().join("tests/services/postgres.sh");
    let output = Command::new(&script)
        .arg(action)
        .env(
            "TRIBUTARY_PG_INSTANCE",
            setting("TRIBUTARY_PG_OUTAGE_INSTANCE", "postgres-outage"),
        )
        .env(
            "TRIBUTARY_PG_PORT",
            setting("TRIBUTARY_PG_OUTAGE_PORT", "5434"),
        )
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "postgres.sh {action} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Stops the outage PostgreSQL when the test ends, also when it fails half-way.
struct StopPostgresOnDrop;

impl Drop for StopPostgresOnDrop {
    fn drop(&mut self) {
        outage_postgres("stop");
    }
}

/// The worker's `/status` report.
async fn worker_status(worker: &WorkerProcess) -> Option<WorkerStatus> {
    let url = format!("http://127.0.0.1:{}/status", worker.metrics_port);
    let client = tributary_worker::http_client::client(Duration::from_secs(5)).ok()?;
    let bytes = client.get(&url).send().await.ok()?.bytes().await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_longer_than_the_retry_budget_loses_nothing_with_or_without_a_dlq() {
    assert!(OUTAGE > 3 * RETRY_BUDGET);
    outage_postgres("start");
    let _stop = StopPostgresOnDrop;
    let pg_url = outage_postgres("env")
        .trim()
        .trim_start_matches("export TRIBUTARY_TEST_POSTGRES_URL=")
        .to_string();
    for dead_letter in [true, false] {
        outage_while_messages_arrive(&pg_url, dead_letter).await;
    }
}

/// PostgreSQL stops, 1,000 messages arrive, it stays down for [`OUTAGE`], comes back: every
/// message is stored exactly once and acknowledged, none dead-lettered or dropped.
async fn outage_while_messages_arrive(pg_url: &str, dead_letter: bool) {
    const N: usize = 1000;
    let label = if dead_letter { "with-dlq" } else { "no-dlq" };
    let broker = Broker::connect(&format!("outage-{label}")).await;
    let scratch = Scratch::new(&format!("outage-{label}"));
    let table = unique("outage");
    let port = free_port();
    let rows = SeqRows {
        dead_letter,
        retry: RETRY,
        pg_url,
        table: &table,
        port,
    };
    let config = seq_rows_config(&scratch, &broker, &rows);
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    wait_for(
        &format!("[{label}] the worker consuming"),
        DEADLINE,
        || async { (worker.status("/readyz").await == Some(200)).then_some(()) },
    )
    .await;

    outage_postgres("stop");
    broker.publish(&seq_envelopes(0..N)).await;
    let report = wait_for(
        &format!("[{label}] the worker reporting the outage at /status"),
        DEADLINE,
        || async {
            worker_status(&worker)
                .await
                .filter(|status| !status.outages.is_empty())
        },
    )
    .await;
    assert_eq!(report.outages.len(), 1, "{report:?}");
    assert_eq!(report.outages[0].target, "sink rows");
    assert!(!report.outages[0].error.is_empty(), "{report:?}");
    assert_eq!(
        worker
            .metric("tributary_worker_target_unavailable{target=\"sink rows\"}")
            .await,
        Some(1.0),
        "the outage is a metric too"
    );
    // The outage itself: PostgreSQL stays down while the worker holds what it has.
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        worker.metric("tributary_worker_messages_acked_total").await,
        Some(0.0),
        "[{label}] nothing acknowledged while the sink is down"
    );
    assert_eq!(
        worker
            .metric("tributary_worker_messages_dead_lettered_total")
            .await,
        None,
        "[{label}] an outage dead-letters nothing"
    );
    let consumed = worker
        .metric("tributary_worker_messages_consumed_total")
        .await
        .unwrap_or(0.0);
    assert!(
        consumed <= 200.0,
        "[{label}] backpressure: no deliveries beyond the prefetch of 200 (consumed {consumed})"
    );
    let retried = worker
        .metric("tributary_worker_messages_retried_total")
        .await
        .unwrap_or(0.0);
    assert!(retried > 0.0, "[{label}] the worker kept trying");
    outage_postgres("start");

    let pg = postgres(pg_url).await;
    wait_for(
        &format!("[{label}] all {N} messages stored after the outage"),
        DEADLINE,
        || async { (count_rows(&pg, &table).await == N as i64).then_some(()) },
    )
    .await;
    wait_for(
        &format!("[{label}] every message acknowledged"),
        DEADLINE,
        || async {
            (worker.metric("tributary_worker_messages_acked_total").await == Some(N as f64))
                .then_some(())
        },
    )
    .await;
    assert_eq!(distinct_seq(&pg, &table).await, N as i64);
    wait_for(
        &format!("[{label}] the outage over at /status"),
        DEADLINE,
        || async {
            worker_status(&worker)
                .await
                .filter(|status| status.outages.is_empty())
        },
    )
    .await;
    assert_eq!(broker.depth(&broker.queue).await, 0);
    assert_eq!(
        broker.depth(&broker.dead_letter_queue).await,
        0,
        "[{label}] nothing in the dead-letter queue"
    );
    // The broker's own counters (refreshed every few seconds): every message acknowledged
    // once, every other delivery a redelivery, none rejected without requeue.
    let counters = wait_for(
        &format!("[{label}] the broker counting {N} acknowledgements"),
        DEADLINE,
        || async {
            let counters = queue_counters(&broker.queue).await;
            (counters.acked == N as u64).then_some(counters)
        },
    )
    .await;
    assert_eq!(counters.dropped(), 0, "[{label}] {counters:?}");
    println!("[{label}] {N} published during a {OUTAGE:?} PostgreSQL outage: {N} rows, broker counters {counters:?}, retried {retried}");
    broker.cleanup().await;
}

/// A stand-in for the user's container: answers 2xx (message unchanged) except for messages
/// whose payload has `"poison": true`, which it fails (`500`) or never answers (as if it
/// crashed on them), counting how often it saw them.
#[derive(Clone)]
struct Container {
    hang_on_poison: bool,
    poison_seen: Arc<AtomicUsize>,
}

async fn process(State(c): State<Container>, body: Bytes) -> StatusCode {
    let envelope: Value = serde_json::from_slice(&body).unwrap_or_default();
    if envelope["payload"]["data"]["poison"] != json!(true) {
        return StatusCode::NO_CONTENT;
    }
    c.poison_seen.fetch_add(1, Ordering::SeqCst);
    if c.hang_on_poison {
        std::future::pending::<()>().await;
    }
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn start_container(hang_on_poison: bool) -> (Container, u16) {
    let container = Container {
        hang_on_poison,
        poison_seen: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind container");
    let port = listener.local_addr().expect("addr").port();
    let app = Router::new()
        .route("/process", post(process))
        .with_state(container.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (container, port)
}

/// A container-mode worker on a classic queue with the worker's own delivery limit.
fn container_config(
    scratch: &Scratch,
    broker: &Broker,
    (container_port, timeout_ms): (u16, u64),
    (pg_url, table): (&str, &str),
    port: u16,
) -> PathBuf {
    scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 20, concurrency: 2, deliveryLimit: 3}}
deadLetter: {{routingKey: {dlq}}}
retry: {{maxAttempts: 3, initialBackoffMs: 20, maxBackoffMs: 100}}
processing:
  container: {{url: "http://127.0.0.1:{container_port}/process", timeoutMs: {timeout_ms}}}
sinks:
  - postgres:
      name: rows
      urlFile: {pg}
      table: {table}
      createTable: true
      columns: [{{name: seq, expr: payload.seq, type: bigint}}]
      batch: {{maxMessages: 10, maxBytes: 1000000, maxAgeMs: 20}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
            pg = scratch.file("pg", pg_url).display(),
        ),
    )
}

/// 20 messages with a poison one in the middle.
fn messages_around_a_poison() -> (Vec<Value>, String) {
    let mut envelopes = seq_envelopes(0..20);
    let poison = envelope(&new_id(), "d", json!({"seq": 999, "poison": true}));
    let poison_id = poison["id"].as_str().unwrap_or_default().to_string();
    envelopes.insert(10, poison);
    (envelopes, poison_id)
}

/// One poison-message scenario: a classic queue holding 20 messages with a poison one in
/// the middle, the stand-in container, and the container-mode worker's config.
struct PoisonCase {
    broker: Broker,
    pg: tokio_postgres::Client,
    container: Container,
    scratch: Scratch,
    table: String,
    port: u16,
    config: PathBuf,
    poison_id: String,
}

impl PoisonCase {
    async fn publish(name: &str, hang_on_poison: bool, timeout_ms: u64) -> PoisonCase {
        let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
        let broker = Broker::connect(name).await;
        let pg = postgres(&pg_url).await;
        let (container, container_port) = start_container(hang_on_poison).await;
        let scratch = Scratch::new(name);
        let table = unique(&name.replace('-', "_"));
        let port = free_port();
        let config = container_config(
            &scratch,
            &broker,
            (container_port, timeout_ms),
            (&pg_url, &table),
            port,
        );
        let (envelopes, poison_id) = messages_around_a_poison();
        broker.publish(&envelopes).await;
        PoisonCase {
            broker,
            pg,
            container,
            scratch,
            table,
            port,
            config,
            poison_id,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_failing_every_time_on_a_classic_queue_is_dead_lettered_after_the_limit() {
    let PoisonCase {
        broker,
        pg,
        container,
        scratch,
        table,
        port,
        config,
        poison_id,
    } = PoisonCase::publish("fails-always", false, 5000).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);

    let (id, reason, _) = wait_for("the poison message dead-lettered", DEADLINE, || async {
        broker.take_dead_letter().await
    })
    .await;
    assert_eq!(id, poison_id);
    assert!(
        reason.starts_with("container failed on the message 3 times: 500"),
        "{reason}"
    );
    assert_eq!(container.poison_seen.load(Ordering::SeqCst), 3, "the limit");
    wait_for("the 20 messages around it stored", DEADLINE, || async {
        (count_rows(&pg, &table).await == 20).then_some(())
    })
    .await;
    assert_eq!(distinct_seq(&pg, &table).await, 20);
    wait_for("all 21 settled", DEADLINE, || async {
        (worker.metric("tributary_worker_messages_acked_total").await == Some(21.0)).then_some(())
    })
    .await;
    assert_eq!(broker.depth(&broker.queue).await, 0);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_that_keeps_crashing_its_worker_is_dead_lettered_after_the_delivery_limit() {
    // The container never answers the poison message: its worker is killed holding it,
    // again and again, as if the message crashed it each time.
    let PoisonCase {
        broker,
        pg,
        container,
        scratch,
        table,
        port,
        config,
        poison_id,
    } = PoisonCase::publish("crash-loop", true, 600_000).await;

    for run in 1..=3 {
        let mut worker = WorkerProcess::start(&scratch, &config, port, run);
        wait_for(
            &format!("run {run}: the worker holding the poison message"),
            DEADLINE,
            || async { (container.poison_seen.load(Ordering::SeqCst) == run).then_some(()) },
        )
        .await;
        wait_for(
            &format!("run {run}: the messages around it stored"),
            DEADLINE,
            || async { (count_rows(&pg, &table).await == 20).then_some(()) },
        )
        .await;
        // Settled before the crash: in the first run, the 20 messages around it (so that
        // only the poison message comes back later); in later runs, the original of the
        // counted copy the container holds. A kill between a copy's confirm and its
        // original's ack (a window of microseconds) would leave two copies, each counted on
        // its own: at least once, a second dead letter at worst, never a loss.
        let (metric, settled) = if run == 1 {
            ("tributary_worker_messages_acked_total", 20.0)
        } else {
            ("tributary_worker_redeliveries_counted_total", 1.0)
        };
        wait_for(
            &format!("run {run}: {metric} at {settled}"),
            DEADLINE,
            || async { (worker.metric(metric).await == Some(settled)).then_some(()) },
        )
        .await;
        worker.kill();
    }
    let worker = WorkerProcess::start(&scratch, &config, port, 4);
    let (id, reason, _) = wait_for(
        "the poison message dead-lettered at the delivery limit",
        DEADLINE,
        || async { broker.take_dead_letter().await },
    )
    .await;
    assert_eq!(id, poison_id);
    assert!(
        reason.starts_with("came back unsettled 3 times"),
        "{reason}"
    );
    assert_eq!(
        container.poison_seen.load(Ordering::SeqCst),
        3,
        "the fourth worker did not hand it to the container again"
    );
    assert_eq!(distinct_seq(&pg, &table).await, 20);
    assert_eq!(count_rows(&pg, &table).await, 20);
    wait_for("the queue empty", DEADLINE, || async {
        (broker.depth(&broker.queue).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        broker.take_dead_letter().await,
        None,
        "only the poison message"
    );
    drop(worker);
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_queue_that_refuses_is_waited_for_not_a_hot_loop() {
    let pg_url = required_env("TRIBUTARY_TEST_POSTGRES_URL", "postgres.sh");
    let broker = Broker::connect("dlq-missing").await;
    // Dead letters go to a queue that does not exist yet: unroutable.
    broker
        .channel
        .queue_delete(
            broker.dead_letter_queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the dead-letter queue");
    let scratch = Scratch::new("dlq-missing");
    let table = unique("dlq_missing");
    let port = free_port();
    let rows = SeqRows {
        dead_letter: true,
        retry: (3, 50, 400),
        pg_url: &pg_url,
        table: &table,
        port,
    };
    let config = seq_rows_config(&scratch, &broker, &rows);
    broker
        .publish_raw(&[("bad".to_string(), b"{not an envelope".to_vec())])
        .await;
    broker.publish(&seq_envelopes(0..5)).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    let report = wait_for(
        "the dead-letter queue reported unavailable",
        DEADLINE,
        || async {
            worker_status(&worker)
                .await
                .filter(|status| !status.outages.is_empty())
        },
    )
    .await;
    assert_eq!(report.outages[0].target, "dead-letter queue");
    assert!(report.outages[0].error.contains("unroutable"), "{report:?}");
    let pg = postgres(&pg_url).await;
    wait_for("the good messages stored meanwhile", DEADLINE, || async {
        (count_rows(&pg, &table).await == 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = worker.log_text();
    let attempts = log.matches("publish refused; holding the message").count();
    assert!(
        (1..=12).contains(&attempts),
        "backoff, not a hot loop: {attempts} attempts in about 2 s"
    );

    broker
        .channel
        .queue_declare(
            broker.dead_letter_queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..lapin::options::QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare the dead-letter queue");
    let (id, reason, body) = wait_for(
        "the bad message dead-lettered once the queue exists",
        DEADLINE,
        || async { broker.take_dead_letter().await },
    )
    .await;
    assert_eq!(id, "bad");
    assert!(reason.starts_with("bad envelope:"), "{reason}");
    assert_eq!(body, b"{not an envelope");
    wait_for("all 6 settled", DEADLINE, || async {
        (worker.metric("tributary_worker_messages_acked_total").await == Some(6.0)).then_some(())
    })
    .await;
    assert_eq!(broker.depth(&broker.queue).await, 0);
    broker.cleanup().await;
}
