//! The workloads' broker users against a real RabbitMQ on loopback: a gateway's and a
//! worker's user created through the management API with the permissions the operator
//! computes, then each used over AMQP (lapin) for what its image does, and for what it
//! must not do, which the broker refuses with ACCESS_REFUSED.
//!
//! Needs `tests/services/rabbitmq.sh start` and its `env` output loaded (the test command
//! does both); fails, saying so, when the broker is not there.

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::BTreeMap;
use tributary_contract::command;
use tributary_operator::broker::management::http_client;
use tributary_operator::broker::users::{self, BrokerUser};
use tributary_operator::broker::{Broker, Management};
use tributary_operator::build::queue::access::{gateway_permissions, worker_permissions};
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

/// A name no other run uses, with dots (which a permission regex must escape).
fn fresh(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("users-test.{label}.{}.{nanos}", std::process::id())
}

/// The administrator's AMQP URI with `user`'s credentials instead.
fn uri_of(user: &str, password: &str) -> String {
    let admin = required_env("TRIBUTARY_TEST_AMQP_URL");
    let (_, host) = admin.split_once('@').expect("the test URI has credentials");
    format!("amqp://{user}:{password}@{host}")
}

async fn connect(uri: &str) -> Connection {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("the workload's user logs in")
}

async fn confirming(connection: &Connection) -> Channel {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
}

/// Publishes one persistent, mandatory message and waits for the broker's answer.
async fn publish(channel: &Channel, exchange: &str, routing_key: &str) -> Result<(), String> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .map_err(|e| e.to_string())?;
    let confirmation = confirm.await.map_err(|e| e.to_string())?;
    match (confirmation.is_ack(), confirmation.take_message()) {
        (true, None) => Ok(()),
        (_, returned) => Err(format!("not taken: returned {}", returned.is_some())),
    }
}

/// Asserts that a refused operation closed its channel with ACCESS_REFUSED.
fn assert_refused<T: std::fmt::Debug, E: ToString>(what: &str, result: Result<T, E>) {
    match result {
        Ok(value) => panic!("{what} was allowed: {value:?}"),
        Err(error) => {
            let error = error.to_string();
            assert!(error.contains("ACCESS_REFUSED"), "{what}: {error}");
        }
    }
}

/// Declares `queue` with its DLQ and a decoy queue whose name an unescaped regex for
/// `queue` would match (dots as wildcards), as the administrator.
async fn topology(broker: &Broker, queue: &str) -> (String, String) {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    let classic = BTreeMap::from([("x-queue-type".to_owned(), ArgValue::Str("classic".into()))]);
    let dlq = format!("{queue}.dlq");
    broker
        .declare(uri.as_str().into(), queue, &classic, Some((&dlq, &classic)))
        .await
        .expect("declares");
    let decoy = queue.replace('.', "-");
    broker
        .declare(uri.as_str().into(), &decoy, &classic, None)
        .await
        .expect("declares the decoy");
    (dlq, decoy)
}

async fn cleanup(broker: &Broker, queues: &[&str]) {
    let uri = required_env("TRIBUTARY_TEST_AMQP_URL");
    for queue in queues {
        broker
            .delete(uri.as_str().into(), queue, None, true)
            .await
            .expect("deleted");
    }
}

#[tokio::test]
async fn a_gateway_user_may_publish_to_its_queue_and_nothing_else() {
    let (http, management) = (http_client(), management());
    let broker = Broker::default();
    let queue = fresh("gateway");
    let (dlq, decoy) = topology(&broker, &queue).await;
    let (name, password) = (fresh("gateway-user"), "gatewaypasswordgatewaypassword12");
    let permissions = gateway_permissions("tenant-without-commands", false);
    let user = BrokerUser {
        name: &name,
        password,
        vhost: "/",
        permissions: &permissions,
    };
    for _ in 0..2 {
        users::ensure(&http, &management, &user)
            .await
            .expect("created, then left as it is");
    }
    let connection = connect(&uri_of(&name, password)).await;
    let channel = confirming(&connection).await;
    publish(&channel, "", &queue)
        .await
        .expect("the gateway publishes to its route's queue through the default exchange");
    assert_refused(
        "publishing to another exchange",
        publish(&confirming(&connection).await, "amq.topic", &queue).await,
    );
    let get = connection
        .create_channel()
        .await
        .expect("channel")
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await;
    assert_refused("consuming the queue", get);
    let declared = connection
        .create_channel()
        .await
        .expect("channel")
        .queue_declare(
            fresh("declared").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_refused("declaring a queue", declared);
    let _ = connection.close(200, "done".into()).await;
    users::delete(&http, &management, &name)
        .await
        .expect("deleted");
    users::delete(&http, &management, &name)
        .await
        .expect("a missing user counts as deleted");
    let again =
        Connection::connect(&uri_of(&name, password), ConnectionProperties::default()).await;
    assert!(again.is_err(), "a deleted user can no longer log in");
    cleanup(&broker, &[&queue, &dlq, &decoy]).await;
}

/// A tenant name like a namespace (no dots), fresh per run.
fn fresh_tenant() -> String {
    fresh("t").replace('.', "-")
}

#[tokio::test]
async fn a_gateway_user_with_commands_may_use_its_tenants_command_queues_only() {
    let (http, management) = (http_client(), management());
    let broker = Broker::default();
    let queue = fresh("gateway-cmd");
    let (dlq, decoy) = topology(&broker, &queue).await;
    let (tenant, other) = (fresh_tenant(), fresh_tenant());
    let (name, password) = (
        fresh("gateway-cmd-user"),
        "gatewaypasswordgatewaypassword34",
    );
    let permissions = gateway_permissions(&tenant, true);
    let user = BrokerUser {
        name: &name,
        password,
        vhost: "/",
        permissions: &permissions,
    };
    users::ensure(&http, &management, &user)
        .await
        .expect("created");
    let connection = connect(&uri_of(&name, password)).await;
    let channel = connection.create_channel().await.expect("channel");
    let exchange = command::exchange(&tenant);
    let device_queue = command::device_queue(&tenant, "m-1");
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the gateway declares its tenant's command exchange");
    channel
        .queue_declare(
            device_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("and a device's command queue");
    channel
        .queue_bind(
            device_queue.as_str().into(),
            exchange.as_str().into(),
            "m-1".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binds it to the exchange");
    channel
        .basic_consume(
            device_queue.as_str().into(),
            "gateway".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumes it");
    publish(&confirming(&connection).await, "", &queue)
        .await
        .expect("and still publishes devices' messages");
    let get = connection
        .create_channel()
        .await
        .expect("channel")
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await;
    assert_refused("consuming the route's queue", get);
    let foreign = connection
        .create_channel()
        .await
        .expect("channel")
        .queue_declare(
            command::device_queue(&other, "m-1").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_refused("declaring another tenant's command queue", foreign);
    let _ = connection.close(200, "done".into()).await;
    users::delete(&http, &management, &name)
        .await
        .expect("deleted");
    cleanup(&broker, &[&queue, &dlq, &decoy, &device_queue]).await;
}

#[tokio::test]
async fn a_worker_user_may_consume_its_queue_and_dead_letter_but_not_touch_other_queues() {
    let (http, management) = (http_client(), management());
    let broker = Broker::default();
    let queue = fresh("worker");
    let (dlq, decoy) = topology(&broker, &queue).await;
    let (name, password) = (fresh("worker-user"), "workerpasswordworkerpassword1234");
    let permissions = worker_permissions(&[queue.as_str()]);
    let user = BrokerUser {
        name: &name,
        password,
        vhost: "/",
        permissions: &permissions,
    };
    users::ensure(&http, &management, &user)
        .await
        .expect("created");
    let connection = connect(&uri_of(&name, password)).await;
    let consumer = connection.create_channel().await.expect("channel");
    consumer
        .basic_consume(
            queue.as_str().into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the worker consumes its queue");
    let publisher = confirming(&connection).await;
    publish(&publisher, "", &dlq)
        .await
        .expect("the worker dead-letters to its DLQ");
    publish(&publisher, "", &queue)
        .await
        .expect("the worker puts a counted redelivery back on its queue");
    let channel = connection.create_channel().await.expect("channel");
    let get = channel
        .basic_get(decoy.as_str().into(), BasicGetOptions { no_ack: true })
        .await;
    assert_refused("consuming a queue whose name only matches unescaped", get);
    let declared = connection
        .create_channel()
        .await
        .expect("channel")
        .queue_declare(
            fresh("declared").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_refused("declaring another queue", declared);
    let deleted = connection
        .create_channel()
        .await
        .expect("channel")
        .queue_delete(decoy.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert_refused("deleting another queue", deleted);
    let deleted = connection
        .create_channel()
        .await
        .expect("channel")
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    assert_refused("deleting its own queue", deleted);
    let _ = connection.close(200, "done".into()).await;
    users::delete(&http, &management, &name)
        .await
        .expect("deleted");
    cleanup(&broker, &[&queue, &dlq, &decoy]).await;
}
