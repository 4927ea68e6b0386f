//! Many subscribed devices on one gateway: more than the 2047 channels RabbitMQ allows on
//! one connection (the default), so this passes only because consumers share a few
//! channels. Every device gets its own command. The count is
//! `TRIBUTARY_COMMANDS_SCALE_DEVICES` (default 2100; the gateway and the test's clients
//! share this process's file descriptors, two per device).

mod commands_fixture;
mod common;
mod registry_fixture;

use std::sync::Arc;

use commands_fixture::mqtt::{Client, Login};
use commands_fixture::*;
use registry_fixture::{now_ms, table, Fixture};
use tokio::sync::Semaphore;

fn device_count() -> usize {
    std::env::var("TRIBUTARY_COMMANDS_SCALE_DEVICES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(2_100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_subscribed_devices_than_a_connection_has_channels_each_get_their_command() {
    let count = device_count();
    let names: Vec<String> = (0..count).map(|n| format!("s-{n}")).collect();
    let fixture = Fixture::new();
    let entries: Vec<serde_json::Value> = names
        .iter()
        .map(|id| {
            serde_json::json!({"id": id, "credentials": [fixture.generated(&password(id), None)]})
        })
        .collect();
    fixture.write_table(&table(now_ms(), serde_json::Value::Array(entries)));
    let files = fixture.files.clone();
    let setup = Arc::new(
        Setup::start(&[], move |config| {
            config.auth.registry = Some(files);
        })
        .await,
    );
    // The gateway lets 16 connections per address log in at once; subscribing waits in line
    // for the broker's declarations, so a device subscribes before its slot goes.
    let logins = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::with_capacity(count);
    for name in names.clone() {
        let (setup, logins) = (Arc::clone(&setup), Arc::clone(&logins));
        tasks.push(tokio::spawn(async move {
            let permit = logins.acquire_owned().await.expect("semaphore");
            let login = Login::clean(true, &name, &name);
            let mut client = Client::connect(setup.mqtt(), &login).await;
            let filter = format!("commands/{name}/#");
            assert_eq!(
                client.subscribe(1, &[(filter.as_str(), 1)]).await,
                [1],
                "{name}"
            );
            drop(permit);
            client
        }));
    }
    let mut clients = Vec::with_capacity(count);
    for task in tasks {
        clients.push(task.await.expect("device subscribed"));
    }
    setup
        .wait_consumers(i64::try_from(count).expect("count"))
        .await;
    for name in &names {
        let command = Cmd::new(&format!("c-{name}"), "ping", name.as_bytes());
        assert_eq!(
            setup.sender.send(name, &command).await,
            Sent::Queued,
            "{name}"
        );
    }
    let mut readers = Vec::with_capacity(count);
    for (mut client, name) in clients.into_iter().zip(names) {
        readers.push(tokio::spawn(async move {
            let received = client.next_publish().await;
            assert_eq!(received.payload, name.as_bytes());
            client.puback(received.packet_id.expect("QoS 1")).await;
            client
        }));
    }
    let mut clients = Vec::with_capacity(count);
    for reader in readers {
        clients.push(reader.await.expect("device got its command"));
    }
    assert_eq!(
        setup.metric("tributary_gateway_commands_delivered_total{protocol=\"mqtt\"}"),
        count as f64
    );
    // Clean sessions: their queues go with them.
    drop(clients);
    setup.wait_consumers(0).await;
    if let Ok(setup) = Arc::try_unwrap(setup) {
        setup.finish().await;
    }
}
