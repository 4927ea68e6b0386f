//! The live sink against real RabbitMQ: processed messages reach a queue bound to the live
//! exchange (as the application API binds its own), and a missing exchange or a full
//! buffer drops live copies only — every message is still acknowledged and stored by the
//! other sinks' rules.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(120);

/// A live exchange of this test's own, and the queue name bound to it.
fn names(prefix: &str) -> (String, String) {
    let exchange = format!("tributary.live.{}", unique(prefix).replace('_', "-"));
    let queue = format!("{exchange}.view");
    (exchange, queue)
}

/// Declares the topic exchange (as the operator does) and binds a queue with `#` (as the
/// API does).
async fn declare_live(broker: &Broker, exchange: &str, queue: &str) {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    broker
        .channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
    broker
        .channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    broker
        .channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
}

async fn remove_live(broker: &Broker, exchange: &str, queue: &str) {
    let _ = broker
        .channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = broker
        .channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await;
}

/// What the bound queue received: (routing key, persistent, body).
async fn take_all(broker: &Broker, queue: &str) -> Vec<(String, bool, Value)> {
    let mut taken = Vec::new();
    while let Some(message) = broker
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let delivery = &message.delivery;
        taken.push((
            delivery.routing_key.to_string(),
            *delivery.properties.delivery_mode() == Some(2),
            serde_json::from_slice(&delivery.data).expect("JSON body"),
        ));
    }
    taken
}

/// At least `count` messages from the bound queue, or a failure after [`DEADLINE`].
async fn collect(broker: &Broker, queue: &str, count: usize) -> Vec<(String, bool, Value)> {
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut taken = Vec::new();
    while taken.len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{count} live messages expected in {queue}, {} arrived",
            taken.len()
        );
        taken.extend(take_all(broker, queue).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    taken
}

/// A worker whose only sink is a live sink `view` to `exchange`, with `extra` settings.
fn worker_config(
    scratch: &Scratch,
    broker: &Broker,
    exchange: &str,
    extra: &str,
    port: u16,
) -> PathBuf {
    scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {amqp}, name: {queue}, prefetch: 1000, concurrency: 2}}
deadLetter: {{routingKey: {dlq}}}
sinks:
  - live: {{name: view, exchange: "{exchange}"{extra}}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            amqp = scratch.file("amqp", &broker.url).display(),
            queue = broker.queue,
            dlq = broker.dead_letter_queue,
        ),
    )
}

async fn live(worker: &WorkerProcess, result: &str) -> f64 {
    let name = format!("tributary_worker_live_total{{sink=\"view\",result=\"{result}\"}}");
    worker.metric(&name).await.unwrap_or(-1.0)
}

fn readings(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| envelope(&new_id(), &format!("press-{}", i % 3), json!({"seq": i})))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_messages_reach_the_live_exchange_transient_and_routed_by_device() {
    let broker = Broker::connect("live-send").await;
    let (exchange, queue) = names("send");
    declare_live(&broker, &exchange, &queue).await;
    let scratch = Scratch::new("live-send");
    let port = free_port();
    let config = worker_config(&scratch, &broker, &exchange, "", port);
    let sent = readings(30);
    broker.publish(&sent).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(sent.len(), DEADLINE).await;
    wait_for("30 live messages published", DEADLINE, || async {
        (live(&worker, "published").await == 30.0).then_some(())
    })
    .await;

    let taken = collect(&broker, &queue, 30).await;
    assert_eq!(taken.len(), 30);
    for (routing_key, persistent, body) in &taken {
        assert_eq!(body["device"], routing_key.as_str(), "{body}");
        assert!(!persistent, "live copies are transient");
        assert!(body["payload"]["seq"].as_u64().is_some(), "{body}");
    }
    let mut seqs: Vec<u64> = taken
        .iter()
        .map(|(_, _, body)| body["payload"]["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..30).collect::<Vec<u64>>());
    for dropped in ["buffer_full", "unavailable", "no_exchange"] {
        assert_eq!(live(&worker, dropped).await, 0.0, "{dropped}");
    }
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    remove_live(&broker, &exchange, &queue).await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_exchange_messages_are_acked_and_live_copies_start_once_it_exists() {
    let broker = Broker::connect("live-absent").await;
    let (exchange, queue) = names("absent");
    let scratch = Scratch::new("live-absent");
    let port = free_port();
    let config = worker_config(&scratch, &broker, &exchange, "", port);
    broker.publish(&readings(20)).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(20, DEADLINE).await;
    wait_for("20 live copies dropped: no exchange", DEADLINE, || async {
        (live(&worker, "no_exchange").await == 20.0).then_some(())
    })
    .await;
    assert_eq!(live(&worker, "published").await, 0.0);
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    let log = worker.log_text();
    assert!(log.contains("live messages are dropped"), "{log}");

    // The exchange appears (an ApplicationApi was created): live copies flow again within
    // the publisher's retry delay.
    declare_live(&broker, &exchange, &queue).await;
    let mut sent = 20;
    let first = wait_for("a live copy after the exchange exists", DEADLINE, || {
        sent += 1;
        let broker = &broker;
        let queue = &queue;
        async move {
            broker.publish(&readings(1)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            take_all(broker, queue).await.into_iter().next()
        }
    })
    .await;
    assert!(!first.1 && first.2["device"].is_string(), "{first:?}");
    worker.wait_acked(sent, DEADLINE).await;
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    remove_live(&broker, &exchange, &queue).await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_live_buffer_drops_live_copies_only_and_every_message_is_acked() {
    let broker = Broker::connect("live-full").await;
    let (exchange, queue) = names("full");
    declare_live(&broker, &exchange, &queue).await;
    let scratch = Scratch::new("live-full");
    let port = free_port();
    // A buffer of 2 and batches of 500: most of each batch cannot wait for the publisher.
    let extra = ", bufferMessages: 2, batch: {maxMessages: 500, maxBytes: 4000000, maxAgeMs: 200}";
    let config = worker_config(&scratch, &broker, &exchange, extra, port);
    let sent = readings(2000);
    broker.publish(&sent).await;
    let worker = WorkerProcess::start(&scratch, &config, port, 1);
    worker.wait_acked(sent.len(), DEADLINE).await;
    let full = live(&worker, "buffer_full").await;
    assert!(full > 0.0, "the bound was pushed past: {full}");
    wait_for("every message published or dropped", DEADLINE, || async {
        let published = live(&worker, "published").await;
        (published + live(&worker, "buffer_full").await == 2000.0).then_some(())
    })
    .await;
    let published = live(&worker, "published").await;
    assert!(published >= 1.0, "the buffer still passes messages on");
    let received = collect(&broker, &queue, published as usize).await;
    assert_eq!(received.len() as f64, published);
    assert_eq!(broker.depth(&broker.dead_letter_queue).await, 0);
    assert_eq!(broker.depth(&broker.queue).await, 0);
    remove_live(&broker, &exchange, &queue).await;
    broker.cleanup().await;
}
