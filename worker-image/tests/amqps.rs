//! AMQPS to a broker whose certificate comes from a private CA (the test broker's `tls`
//! listener, `tests/services/rabbitmq.sh tls`): the worker consumes its queue, and its
//! republish sink publishes, over AMQPS trusting the `queue.caFile` CA.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// A variable printed by `tests/services/rabbitmq.sh tls`; fails saying how to get it.
fn tls_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run `tests/services/rabbitmq.sh start`, then \
             `eval \"$(tests/services/rabbitmq.sh tls)\"` before `cargo test`"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_consumes_and_republishes_over_amqps_with_the_private_ca() {
    let amqps = tls_env("TRIBUTARY_TEST_AMQPS_URL");
    let ca = tls_env("TRIBUTARY_TEST_RABBITMQ_CA_FILE");
    // Queues declared over the plain listener; the worker reaches the same node by AMQPS.
    let broker = Broker::connect("amqps").await;
    let scratch = Scratch::new("amqps");
    let port = free_port();
    // A republish sink without its own uriFile publishes to the consumed broker, with its CA.
    let config = scratch.file(
        "worker.yaml",
        &format!(
            r#"
queue: {{uriFile: {uri}, caFile: {ca}, name: {queue}, prefetch: 10, concurrency: 1}}
sinks:
  - republish:
      name: forward
      routingKey: {target}
      batch: {{maxMessages: 1, maxBytes: 1000000, maxAgeMs: 10}}
http: {{listen: "127.0.0.1:{port}"}}
"#,
            uri = scratch.file("amqp", &amqps).display(),
            queue = broker.queue,
            target = broker.dead_letter_queue,
        ),
    );
    let worker = WorkerProcess::start(&scratch, &config, port, 0);
    broker
        .publish(&[envelope(&new_id(), "d", json!({"n": 1}))])
        .await;
    let forwarded = tokio::time::timeout(DEADLINE, async {
        loop {
            if broker.depth(&broker.dead_letter_queue).await == 1
                && broker.depth(&broker.queue).await == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        forwarded.is_ok(),
        "the message was not consumed and republished over AMQPS; worker log:\n{}",
        worker.log_text()
    );
    broker.cleanup().await;
}
