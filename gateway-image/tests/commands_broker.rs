//! Commands when the broker disagrees: a device queue another gateway declared with other
//! limits is used as it is (406 on redeclaration), and a broker user without permission on
//! the command queues gets its devices' subscriptions refused while ingest goes on.

mod commands_fixture;
mod common;

use std::net::SocketAddr;

use commands_fixture::mqtt::{Client, Login};
use commands_fixture::*;
use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tributary_contract::command::device_queue;

#[tokio::test]
async fn a_device_queue_declared_with_other_limits_is_used_as_it_is() {
    let setup = Setup::start(&["press-1", "press-2"], |_| {}).await;
    // Another gateway (other limits) declared press-1's queue first.
    let channel = setup.broker.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(5));
    channel
        .queue_declare(
            device_queue(&setup.tenant, "press-1").into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("declare with other limits");
    for device in ["press-1", "press-2"] {
        let mut client = Client::connect(setup.mqtt(), &Login::clean(true, device, device)).await;
        let filter = format!("commands/{device}/#");
        assert_eq!(client.subscribe(1, &[(filter.as_str(), 1)]).await, [1]);
        let command = Cmd::new(&format!("c-{device}"), "ping", b"{}");
        assert_eq!(setup.sender.send(device, &command).await, Sent::Queued);
        assert_eq!(
            client.next_publish().await.topic,
            format!("commands/{device}/ping")
        );
    }
    setup.finish().await;
}

/// One request to the management API with the test broker's administrator.
async fn management(method: &str, path: &str, body: &str) -> u16 {
    let base = std::env::var("TRIBUTARY_TEST_RABBITMQ_API")
        .expect("TRIBUTARY_TEST_RABBITMQ_API (from `tests/services/rabbitmq.sh env`)");
    let user = std::env::var("TRIBUTARY_TEST_RABBITMQ_API_USER").expect("API user");
    let secret = std::env::var("TRIBUTARY_TEST_RABBITMQ_API_PASSWORD").expect("API password");
    let addr: SocketAddr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("management address");
    let mut stream = TcpStream::connect(addr).await.expect("management API");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        basic(&user, &secret),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn without_permission_on_command_queues_subscriptions_are_refused_and_ingest_goes_on() {
    let user = format!("gw-{}", ulid::Ulid::generate()).to_lowercase();
    let created = management(
        "PUT",
        &format!("/api/users/{user}"),
        r#"{"password":"restricted","tags":""}"#,
    )
    .await;
    assert!(matches!(created, 201 | 204), "user created: {created}");
    let permissions = r#"{"configure":"^(?!tributary\\.commands\\.).*","write":".*","read":".*"}"#;
    let granted = management("PUT", &format!("/api/permissions/%2F/{user}"), permissions).await;
    assert!(matches!(granted, 201 | 204), "permissions set: {granted}");
    let url = amqp_url().replacen(
        "tributary:tributary-test-pass@",
        &format!("{user}:restricted@"),
        1,
    );
    let setup = Setup::start_restricted(&["press-1", "press-9"], |config| {
        let uri = std::env::temp_dir().join(format!("{user}-uri"));
        std::fs::write(&uri, &url).expect("uri file");
        config.broker.uri_file = uri;
    })
    .await;
    let mut v5 = Client::connect(setup.mqtt(), &Login::clean(true, "a", "press-1")).await;
    assert_eq!(v5.subscribe(1, &[("commands/press-1/#", 1)]).await, [0x80]);
    let mut v3 = Client::connect(setup.mqtt(), &Login::clean(false, "b", "press-1")).await;
    assert_eq!(v3.subscribe(1, &[("commands/press-1/#", 1)]).await, [0x80]);
    assert_eq!(
        setup.metric(
            "tributary_gateway_command_subscriptions_refused_total{reason=\"broker_refused\"}"
        ),
        2.0
    );
    assert!(
        setup.metric("tributary_gateway_command_broker_errors_total{reason=\"refused\"}") >= 2.0
    );
    // The sessions go on, and ingest is untouched.
    assert_eq!(
        v5.publish("devices/press-1/t", 5, b"{}").await,
        [0x40, 2, 0, 5]
    );
    assert_eq!(
        drain_queue(&setup.broker, &setup.ingest_queue).await.len(),
        1
    );
    setup.assert_ingest_works("press-9").await;
    setup.finish().await;
    let deleted = management("DELETE", &format!("/api/users/{user}"), "").await;
    assert!(matches!(deleted, 204 | 200), "user deleted: {deleted}");
}
