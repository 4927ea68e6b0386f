//! MQTT protocol behaviour a device sees: MQTT 5 reason codes, SUBSCRIBE refused without
//! dropping the connection, keep-alive pings, QoS 0 and QoS 2, connection limit, drain.

mod common;

use std::time::Duration;

use common::*;
use tributary_contract::gateway_config::{AuthConfig, Limits};

fn string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

fn connect_v5(device: &str, password: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[5, 0xC2, 0, 60, 0]);
    body.extend(string(device));
    body.extend(string(device));
    body.extend(string(password));
    packet(0x10, &body)
}

fn publish_v5(topic: &str, packet_id: u16) -> Vec<u8> {
    let mut body = string(topic);
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(b"{}");
    packet(0x32, &body)
}

async fn setup(
    limits: Limits,
) -> (
    lapin::Connection,
    String,
    TempDir,
    tributary_gateway::app::Running,
) {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "protocol").await;
    let dir = TempDir::new();
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(
            &dir,
            &[("press-7", "pw7"), ("press-8", "pw8")],
        )),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
    config.limits = limits;
    let running = start_connected(config).await;
    (connection, queue, dir, running)
}

async fn connect_v5_client(addr: std::net::SocketAddr, device: &str) -> RawMqtt {
    let mut client = RawMqtt::open(addr).await;
    client.send(&connect_v5(device, "pw7")).await;
    let connack = client.read_packet().await.expect("CONNACK");
    assert_eq!(connack[0], 0x20);
    assert_eq!(connack[3], 0, "v5 CONNACK success");
    client
}

#[tokio::test]
async fn mqtt5_forbidden_topic_gets_puback_not_authorized_and_the_session_continues() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let mut client = connect_v5_client(running.bound.mqtt.expect("mqtt"), "press-7").await;
    client.send(&publish_v5("devices/press-8/t", 1)).await;
    let puback = client.read_packet().await.expect("PUBACK");
    assert_eq!(&puback[..], &[0x40, 3, 0, 1, 0x87]);
    client.send(&publish_v5("devices/press-7/t", 2)).await;
    let puback = client.read_packet().await.expect("PUBACK");
    assert_eq!(&puback[..4], &[0x40, 2, 0, 2], "success PUBACK");
    assert_eq!(drain_queue(&connection, &queue).await.len(), 1);
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn subscribe_is_refused_with_a_failure_code_and_ping_still_works() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let (mut client, _) =
        RawMqtt::connect(running.bound.mqtt.expect("mqtt"), "press-7", "pw7").await;
    let mut subscribe = vec![0, 9];
    subscribe.extend(string("devices/press-7/#"));
    subscribe.push(1);
    client.send(&packet(0x82, &subscribe)).await;
    assert_eq!(client.read_packet().await, Some(vec![0x90, 3, 0, 9, 0x80]));
    client.send(&[0xC0, 0]).await;
    assert_eq!(client.read_packet().await, Some(vec![0xD0, 0]));
    assert_eq!(
        client.publish_qos1("devices/press-7/t", 3, b"{}").await,
        Some(3)
    );
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn qos0_publish_is_delivered_without_an_ack() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let (mut client, _) =
        RawMqtt::connect(running.bound.mqtt.expect("mqtt"), "press-7", "pw7").await;
    let mut body = string("devices/press-7/t");
    body.extend_from_slice(b"{\"qos\":0}");
    client.send(&packet(0x30, &body)).await;
    let messages = wait_for_messages(&connection, &queue, 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["payload"]["data"]["qos"], 0);
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn qos2_is_refused_per_version_and_never_half_delivered() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let mut qos2 = string("devices/press-7/t");
    qos2.extend_from_slice(&[0, 1]);
    let (mut v311, _) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    let mut body = qos2.clone();
    body.extend_from_slice(b"{}");
    v311.send(&packet(0x34, &body)).await;
    assert!(v311.closed_by_server().await, "3.1.1: connection closed");
    let mut v5 = connect_v5_client(mqtt, "press-7").await;
    let mut body = qos2;
    body.push(0);
    body.extend_from_slice(b"{}");
    v5.send(&packet(0x34, &body)).await;
    assert_eq!(
        v5.read_packet().await,
        Some(vec![0xE0, 2, 0x9B, 0]),
        "5: DISCONNECT QoS not supported"
    );
    assert!(drain_queue(&connection, &queue).await.is_empty());
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_server_unavailable() {
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let (connection, queue, _dir, running) = setup(limits).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let (mut first, code) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(code, 0);
    let (_, code) = RawMqtt::connect(mqtt, "press-8", "pw8").await;
    assert_eq!(code, 0x03);
    assert_eq!(
        first.publish_qos1("devices/press-7/t", 1, b"{}").await,
        Some(1)
    );
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn drain_tells_mqtt5_clients_server_shutting_down_and_turns_readyz_503() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let health = running.bound.health;
    let mut client = connect_v5_client(mqtt, "press-7").await;
    client.send(&publish_v5("devices/press-7/t", 1)).await;
    assert_eq!(
        client.read_packet().await.map(|p| p[..4].to_vec()),
        Some(vec![0x40, 2, 0, 1])
    );
    let gateway = std::sync::Arc::clone(&running.gateway);
    let drain = tokio::spawn(running.drain(Duration::from_secs(10)));
    assert_eq!(client.read_packet().await, Some(vec![0xE0, 2, 0x8B, 0]));
    assert!(client.closed_by_server().await);
    assert!(gateway.draining.is_cancelled());
    let _ = http_get_status(health, "/readyz").await; // may already be closed: either is fine
    drain.await.expect("drain finishes");
    assert!(
        tokio::net::TcpStream::connect(mqtt).await.is_err(),
        "no longer accepting"
    );
    assert_eq!(drain_queue(&connection, &queue).await.len(), 1);
    delete_queue(&connection, &queue).await;
}
