//! MQTT protocol behaviour a device sees: MQTT 5 reason codes, SUBSCRIBE refused without
//! dropping the connection, keep-alive pings, QoS 0 and QoS 2 (exactly once within a
//! connection), will messages, connection limit, drain.

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

/// CONNECT with a will message on `will_topic`.
fn connect_with_will(v5: bool, device: &str, password: &str, will_topic: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    // user name, password, will (QoS 0), clean session; keep-alive 60 s.
    body.extend_from_slice(&[if v5 { 5 } else { 4 }, 0xC6, 0, 60]);
    if v5 {
        body.push(0); // no CONNECT properties
    }
    body.extend(string(device));
    if v5 {
        body.push(0); // no will properties
    }
    body.extend(string(will_topic));
    body.extend(string(&format!("{{\"will\":\"{device}\",\"v5\":{v5}}}")));
    body.extend(string(device));
    body.extend(string(password));
    packet(0x10, &body)
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
async fn will_message_is_published_unless_the_client_disconnects_cleanly() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let session = |v5: bool, will_topic: &'static str| async move {
        let mut client = RawMqtt::open(mqtt).await;
        client
            .send(&connect_with_will(v5, "press-7", "pw7", will_topic))
            .await;
        let connack = client.read_packet().await.expect("CONNACK");
        assert_eq!(connack[0], 0x20, "CONNACK");
        assert_eq!(connack[3], 0, "accepted");
        client
    };
    // No will: a clean DISCONNECT (3.1.1, and v5 reason 0x00).
    let mut clean = session(false, "devices/press-7/status").await;
    clean.send(&[0xE0, 0]).await;
    assert!(clean.closed_by_server().await);
    let mut clean_v5 = session(true, "devices/press-7/status").await;
    clean_v5.send(&[0xE0, 1, 0x00]).await;
    assert!(clean_v5.closed_by_server().await);
    // No will either: a topic outside the device's permissions, even on an abrupt close.
    drop(session(false, "devices/press-8/status").await);
    // A marker, acknowledged after the sessions above ended.
    let (mut marker, _) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(
        marker
            .publish_qos1("devices/press-7/t", 1, b"{\"marker\":true}")
            .await,
        Some(1)
    );
    let before = wait_for_messages(&connection, &queue, 1).await;
    assert_eq!(before.len(), 1, "only the marker: {before:?}");

    // Wills: the connection drops without DISCONNECT; v5 DISCONNECT 0x04 asks for it.
    drop(session(false, "devices/press-7/status").await);
    let mut with_will = session(true, "devices/press-7/status").await;
    with_will.send(&[0xE0, 1, 0x04]).await;
    assert!(with_will.closed_by_server().await);
    let wills = wait_for_messages(&connection, &queue, 2).await;
    let mut seen: Vec<(String, bool)> = wills
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap_or_default().to_owned(),
                m["payload"]["data"]["v5"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("devices/press-7/status".to_owned(), false),
            ("devices/press-7/status".to_owned(), true),
        ],
        "{wills:?}"
    );
    assert!(wills.iter().all(|m| m["device"] == "press-7"));
    delete_queue(&connection, &queue).await;
}

#[tokio::test]
async fn qos2_publish_is_stored_once_answered_pubrec_and_completed_on_pubrel() {
    let (connection, queue, _dir, running) = setup(Limits::default()).await;
    let mqtt = running.bound.mqtt.expect("mqtt");
    let qos2 = |packet_id: u16, dup: bool, v5: bool, via: u8| {
        let mut body = string("devices/press-7/t");
        body.extend_from_slice(&packet_id.to_be_bytes());
        if v5 {
            body.push(0); // no properties
        }
        body.extend_from_slice(format!("{{\"via\":{via}}}").as_bytes());
        packet(if dup { 0x3C } else { 0x34 }, &body)
    };

    // MQTT 3.1.1: PUBREC once stored; a resend before PUBREL gets PUBREC again and is not
    // published twice; PUBREL gets PUBCOMP, also for an identifier the gateway never saw.
    let (mut v311, _) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    v311.send(&qos2(1, false, false, 1)).await;
    assert_eq!(
        v311.read_packet().await,
        Some(vec![0x50, 2, 0, 1]),
        "PUBREC"
    );
    v311.send(&qos2(1, true, false, 1)).await;
    assert_eq!(
        v311.read_packet().await,
        Some(vec![0x50, 2, 0, 1]),
        "PUBREC again"
    );
    v311.send(&[0x62, 2, 0, 1]).await;
    assert_eq!(
        v311.read_packet().await,
        Some(vec![0x70, 2, 0, 1]),
        "PUBCOMP"
    );
    v311.send(&[0x62, 2, 0, 9]).await;
    assert_eq!(
        v311.read_packet().await,
        Some(vec![0x70, 2, 0, 9]),
        "PUBCOMP, unknown id"
    );
    // The identifier is free again: a new message with it is a new message.
    v311.send(&qos2(1, false, false, 2)).await;
    assert_eq!(
        v311.read_packet().await,
        Some(vec![0x50, 2, 0, 1]),
        "PUBREC, reused id"
    );

    // MQTT 5: the same flow; an unknown identifier is named in the PUBCOMP, and a forbidden
    // topic is refused in the PUBREC.
    let mut v5 = connect_v5_client(mqtt, "press-7").await;
    v5.send(&qos2(4, false, true, 3)).await;
    assert_eq!(
        v5.read_packet().await,
        Some(vec![0x50, 2, 0, 4]),
        "v5 PUBREC"
    );
    v5.send(&[0x62, 2, 0, 4]).await;
    assert_eq!(
        v5.read_packet().await,
        Some(vec![0x70, 2, 0, 4]),
        "v5 PUBCOMP"
    );
    v5.send(&[0x62, 2, 0, 5]).await;
    assert_eq!(
        v5.read_packet().await,
        Some(vec![0x70, 3, 0, 5, 0x92]),
        "v5 PUBCOMP: packet identifier not found"
    );
    let mut forbidden = string("devices/press-8/t");
    forbidden.extend_from_slice(&[0, 6, 0]);
    forbidden.extend_from_slice(b"{}");
    v5.send(&packet(0x34, &forbidden)).await;
    assert_eq!(
        v5.read_packet().await,
        Some(vec![0x50, 3, 0, 6, 0x87]),
        "v5 PUBREC: not authorized"
    );

    let messages = wait_for_messages(&connection, &queue, 3).await;
    let mut via: Vec<u64> = messages
        .iter()
        .filter_map(|m| m["payload"]["data"]["via"].as_u64())
        .collect();
    via.sort_unstable();
    assert_eq!(via, vec![1, 2, 3], "each QoS 2 message exactly once");
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
