//! The operator's broker I/O against a real RabbitMQ on loopback: declarations and the
//! autoscaler's readings over one kept-open connection, deletion that the broker refuses
//! while a queue holds messages, the emptiness check of a broker switch, and the replay of
//! dead letters.
//!
//! Needs `tests/services/rabbitmq.sh start` and its `env` output loaded (the test command
//! does both); fails, saying so, when the broker is not there.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tributary_operator::broker::management::http_client;
use tributary_operator::broker::readings;
use tributary_operator::broker::{Broker, BrokerError, Management, ReplayRequest};
use tributary_operator::build::queue::ArgValue;

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: start the broker with `tests/services/rabbitmq.sh start` and \
             load its variables with `eval \"$(tests/services/rabbitmq.sh env)\"`"
        ),
    }
}

fn management() -> Management {
    Management {
        base_url: required_env("TRIBUTARY_TEST_RABBITMQ_API"),
        username: required_env("TRIBUTARY_TEST_RABBITMQ_API_USER"),
        password: required_env("TRIBUTARY_TEST_RABBITMQ_API_PASSWORD"),
    }
}

/// A queue name no other run uses.
fn fresh_queue(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("operator-test.{label}.{}.{nanos}", std::process::id())
}

async fn publish(uri: &str, queue: &str, count: usize) {
    let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
        .await
        .expect("publisher connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for n in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("message {n}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("broker confirms");
    }
    connection.close(200, "done".into()).await.expect("close");
}

#[tokio::test]
async fn declarations_and_readings_share_one_kept_connection_and_reconnect_after_a_failure() {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    let management = management();
    let queue = fresh_queue("readings");
    let broker = Broker::default();
    broker
        .declare(uri.as_str().into(), &queue, &BTreeMap::new(), None)
        .await
        .expect("queue declared");
    assert_eq!(
        broker.len().await,
        1,
        "the declaration's connection is kept"
    );
    publish(&uri, &queue, 3).await;

    let first = broker
        .connection(uri.as_str().into())
        .await
        .expect("connected");
    let reading = broker
        .reading(uri.as_str().into(), Some(&management), &queue)
        .await
        .expect("reading of an existing queue");
    assert_eq!((reading.ready, reading.consumers), (3, 0));
    assert_eq!(reading.backlog(), 3 + reading.unacked.unwrap_or(0));
    broker
        .declare(uri.as_str().into(), &queue, &BTreeMap::new(), None)
        .await
        .expect("declared again: idempotent");
    let second = broker
        .connection(uri.as_str().into())
        .await
        .expect("still connected");
    assert!(
        Arc::ptr_eq(&first, &second),
        "the open connection is reused"
    );
    assert_eq!(broker.len().await, 1);

    // A reading of a missing queue fails on its own channel; the connection stays usable.
    let http = http_client();
    let missing = readings::reading(&first, &http, None, &fresh_queue("missing")).await;
    assert!(
        matches!(missing, Err(BrokerError::Refused { .. })),
        "{missing:?}"
    );
    let again = readings::reading(&first, &http, None, &queue)
        .await
        .expect("reading after a failed one");
    assert_eq!(again.ready, 3);

    // Still, the pool drops a connection after a failed operation; the next one reconnects.
    let missing = broker
        .reading(uri.as_str().into(), None, &fresh_queue("missing"))
        .await;
    assert!(
        matches!(missing, Err(BrokerError::Refused { .. })),
        "{missing:?}"
    );
    assert!(broker.is_empty().await);
    let third = broker
        .connection(uri.as_str().into())
        .await
        .expect("reconnects");
    assert!(
        !Arc::ptr_eq(&first, &third),
        "a new connection after a failure"
    );
    assert_eq!(
        broker
            .reading(uri.as_str().into(), None, &queue)
            .await
            .expect("reading on the new connection")
            .ready,
        3
    );

    drop((first, second, third));
    broker
        .delete(uri.as_str().into(), &queue, None, true)
        .await
        .expect("queue deleted");
}

fn classic() -> BTreeMap<String, ArgValue> {
    BTreeMap::from([("x-queue-type".to_owned(), ArgValue::Str("classic".into()))])
}

/// A queue and its dead-letter queue, declared as the Queue controller does.
async fn queue_with_dlq(broker: &Broker, uri: &str, label: &str) -> (String, String) {
    let queue = fresh_queue(label);
    let dlq = format!("{queue}.dlq");
    let mut args = classic();
    args.insert(
        "x-dead-letter-exchange".into(),
        ArgValue::Str(String::new()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        ArgValue::Str(dlq.clone()),
    );
    broker
        .declare(uri.into(), &queue, &args, Some((&dlq, &classic())))
        .await
        .expect("queue and dead-letter queue declared");
    (queue, dlq)
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Publishes dead letters as the worker does: persistent, with a message id and the reason
/// headers (plus a header of the device's own that must survive a replay).
async fn publish_dead_letters(uri: &str, dlq: &str, kinds: &[&str]) {
    let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
        .await
        .expect("publisher connects");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for (n, kind) in kinds.iter().enumerate() {
        let mut headers = FieldTable::default();
        headers.insert("x-tributary-reason-kind".into(), text(kind));
        headers.insert("x-tributary-reason".into(), text("step 2 failed"));
        headers.insert("x-tributary-source-queue".into(), text("q"));
        headers.insert("x-custom".into(), text("kept"));
        headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        channel
            .basic_publish(
                "".into(),
                dlq.into(),
                BasicPublishOptions::default(),
                format!("{{\"seq\":{n}}}").as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(format!("m-{n}").into())
                    .with_content_type("application/json".into())
                    .with_headers(headers),
            )
            .await
            .expect("publish")
            .await
            .expect("broker confirms");
    }
    connection.close(200, "done".into()).await.expect("close");
}

/// Takes every message of a queue (acknowledging each): (message id, body, header names).
async fn drain(uri: &str, queue: &str) -> Vec<(String, String, Vec<String>, Option<u8>)> {
    let connection = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = connection.create_channel().await.expect("channel");
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
    {
        let delivery = message.delivery;
        let properties = &delivery.properties;
        let headers = properties
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str().to_owned()).collect())
            .unwrap_or_default();
        messages.push((
            properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            String::from_utf8_lossy(&delivery.data).into_owned(),
            headers,
            *properties.delivery_mode(),
        ));
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    connection.close(200, "done".into()).await.expect("close");
    messages
}

#[tokio::test]
async fn deletion_is_refused_by_the_broker_while_the_queue_or_its_dlq_holds_messages() {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    let broker = Broker::default();
    let (queue, dlq) = queue_with_dlq(&broker, &uri, "delete").await;
    publish(&uri, &queue, 2).await;

    let refused = broker
        .delete(uri.as_str().into(), &queue, Some(&dlq), false)
        .await;
    match &refused {
        Err(BrokerError::NotEmpty {
            queue: name,
            messages,
        }) => {
            assert_eq!((name.as_str(), *messages), (queue.as_str(), 2));
        }
        other => panic!("expected NotEmpty for the queue, got {other:?}"),
    }
    assert_eq!(
        broker
            .inspect(uri.as_str().into(), &queue)
            .await
            .expect("inspect"),
        Some(2)
    );
    assert_eq!(
        broker
            .inspect(uri.as_str().into(), &dlq)
            .await
            .expect("inspect"),
        Some(0)
    );

    // Queue drained, a dead letter left: the queue goes, the dead-letter queue stays.
    assert_eq!(drain(&uri, &queue).await.len(), 2);
    publish(&uri, &dlq, 1).await;
    let refused = broker
        .delete(uri.as_str().into(), &queue, Some(&dlq), false)
        .await;
    assert!(
        matches!(&refused, Err(BrokerError::NotEmpty { queue: name, messages: 1 }) if *name == dlq),
        "{refused:?}"
    );
    assert_eq!(
        broker
            .inspect(uri.as_str().into(), &queue)
            .await
            .expect("inspect"),
        None
    );
    assert_eq!(
        broker
            .inspect(uri.as_str().into(), &dlq)
            .await
            .expect("inspect"),
        Some(1)
    );

    // deleteNonEmpty: deleted with its messages; deleting what is gone is not an error.
    broker
        .delete(uri.as_str().into(), &queue, Some(&dlq), true)
        .await
        .expect("deleted although non-empty");
    assert_eq!(
        broker
            .inspect(uri.as_str().into(), &dlq)
            .await
            .expect("inspect"),
        None
    );
    broker
        .delete(uri.as_str().into(), &queue, Some(&dlq), false)
        .await
        .expect("missing queues count as deleted");
}

#[tokio::test]
async fn message_total_counts_ready_and_unacked_messages_of_existing_queues() {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    let management = management();
    let broker = Broker::default();
    let (queue, dlq) = queue_with_dlq(&broker, &uri, "total").await;
    let missing = fresh_queue("missing");
    assert_eq!(
        broker
            .message_total(
                uri.as_str().into(),
                Some(&management),
                &[&queue, &dlq, &missing]
            )
            .await
            .expect("total"),
        0
    );
    publish(&uri, &queue, 2).await;
    publish(&uri, &dlq, 1).await;
    assert_eq!(
        broker
            .message_total(uri.as_str().into(), None, &[&queue, &dlq, &missing])
            .await
            .expect("total"),
        3
    );
    // One message held unacknowledged by a consumer still counts (the management API's
    // figures are sampled every few seconds: wait for them, with a deadline).
    let connection = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .expect("connects");
    let channel = connection.create_channel().await.expect("channel");
    let held = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("a message");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let total = broker
            .message_total(uri.as_str().into(), Some(&management), &[&queue, &dlq])
            .await
            .expect("total");
        if total == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unacknowledged message was not counted: total {total}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(held);
    connection.close(200, "done".into()).await.expect("close");
    broker
        .delete(uri.as_str().into(), &queue, Some(&dlq), true)
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn replay_moves_matching_dead_letters_back_with_their_ids_and_keeps_the_rest() {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    let broker = Broker::default();
    let (queue, dlq) = queue_with_dlq(&broker, &uri, "replay").await;
    publish_dead_letters(
        &uri,
        &dlq,
        &[
            "pipeline",
            "sink-rejected",
            "pipeline",
            "sink-rejected",
            "pipeline",
        ],
    )
    .await;

    let report = broker
        .replay(
            uri.as_str().into(),
            &ReplayRequest {
                dead_letter_queue: &dlq,
                queue: &queue,
                reason_kind: Some("pipeline"),
                max_messages: None,
            },
        )
        .await
        .expect("replay");
    assert_eq!(
        (report.moved, report.skipped, report.remaining),
        (3, 2, 2),
        "{report:?}"
    );
    let moved = drain(&uri, &queue).await;
    let ids: Vec<&str> = moved.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(ids, vec!["m-0", "m-2", "m-4"]);
    for (id, body, headers, delivery_mode) in &moved {
        assert!(body.starts_with("{\"seq\":"), "{id}: {body}");
        assert_eq!(headers, &vec!["x-custom".to_owned()], "{id}");
        assert_eq!(*delivery_mode, Some(2), "{id} is persistent");
    }

    // Without a filter, at most one: one moved, the other goes back to the tail.
    let report = broker
        .replay(
            uri.as_str().into(),
            &ReplayRequest {
                dead_letter_queue: &dlq,
                queue: &queue,
                reason_kind: None,
                max_messages: Some(1),
            },
        )
        .await
        .expect("replay");
    assert_eq!((report.moved, report.skipped, report.remaining), (1, 1, 1));
    assert_eq!(
        drain(&uri, &queue)
            .await
            .iter()
            .map(|m| m.0.clone())
            .collect::<Vec<_>>(),
        vec!["m-1"]
    );
    let left = drain(&uri, &dlq).await;
    assert_eq!(left.len(), 1);
    let (id, _, headers, _) = &left[0];
    assert_eq!(id, "m-3");
    // A skipped message keeps its reason.
    assert!(
        headers.contains(&"x-tributary-reason-kind".to_owned()),
        "{headers:?}"
    );

    // Replaying into a queue that does not exist moves nothing and loses nothing.
    publish_dead_letters(&uri, &dlq, &["pipeline"]).await;
    let missing = fresh_queue("gone");
    let failed = broker
        .replay(
            uri.as_str().into(),
            &ReplayRequest {
                dead_letter_queue: &dlq,
                queue: &missing,
                reason_kind: None,
                max_messages: None,
            },
        )
        .await;
    assert!(
        matches!(failed, Err(BrokerError::Refused { .. })),
        "{failed:?}"
    );
    assert_eq!(
        broker
            .inspect(uri.as_str().into(), &dlq)
            .await
            .expect("inspect"),
        Some(1)
    );
    broker
        .delete(uri.as_str().into(), &queue, Some(&dlq), true)
        .await
        .expect("cleanup");
}
