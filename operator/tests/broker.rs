//! The operator's broker I/O against a real RabbitMQ on loopback: the autoscaler's
//! readings over one kept-open connection.
//!
//! Needs `tests/services/rabbitmq.sh start` and its `env` output loaded (the test command
//! does both); fails, saying so, when the broker is not there.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use std::collections::BTreeMap;
use std::sync::Arc;
use tributary_operator::autoscaler::connections::Connections;
use tributary_operator::controller::broker::{self, BrokerError, Management};

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
async fn autoscaler_readings_share_one_connection_and_reconnect_after_a_failure() {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    let management = management();
    let queue = fresh_queue("readings");
    broker::declare(&uri, &queue, &BTreeMap::new(), None, "classic")
        .await
        .expect("queue declared");
    publish(&uri, &queue, 3).await;

    let connections = Connections::default();
    let first = connections.get(&uri).await.expect("connects");
    let reading = broker::reading(&first, Some(&management), &queue)
        .await
        .expect("reading of an existing queue");
    assert_eq!((reading.ready, reading.consumers), (3, 0));
    assert_eq!(reading.backlog(), 3 + reading.unacked.unwrap_or(0));

    // A reading of a missing queue fails on its own channel; the connection stays usable.
    let missing = broker::reading(&first, None, &fresh_queue("missing")).await;
    assert!(
        matches!(missing, Err(BrokerError::Refused { .. })),
        "{missing:?}"
    );
    let second = connections.get(&uri).await.expect("still connected");
    assert!(
        Arc::ptr_eq(&first, &second),
        "the open connection is reused"
    );
    assert_eq!(connections.len().await, 1);
    let again = broker::reading(&second, None, &queue)
        .await
        .expect("reading after a failed one");
    assert_eq!(again.ready, 3);

    // After a failure the autoscaler forgets the connection; the next reading reconnects.
    connections.forget(&uri).await;
    assert!(connections.is_empty().await);
    let third = connections.get(&uri).await.expect("reconnects");
    assert!(
        !Arc::ptr_eq(&first, &third),
        "a new connection after forget"
    );
    assert_eq!(
        broker::reading(&third, None, &queue)
            .await
            .expect("reading on the new connection")
            .ready,
        3
    );

    drop((first, second, third));
    broker::delete(&uri, &queue, None, true)
        .await
        .expect("queue deleted");
}
