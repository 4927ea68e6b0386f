//! Malformed and hostile MQTT input: each case closes its own connection, while another
//! device keeps publishing unaffected on the same gateway.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use tributary_contract::gateway_config::{AuthConfig, Limits};

fn string(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

fn publish_raw(first: u8, topic: &[u8], packet_id: Option<u16>) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(b"{}");
    packet(first, &body)
}

/// (name, send a valid CONNECT first?, bytes to send)
fn cases() -> Vec<(&'static str, bool, Vec<u8>)> {
    let connect = connect_packet("hostile", "press-9", "pw9");
    let mut reserved_connect = connect.clone();
    reserved_connect[0] = 0x11;
    let mut bad_utf8_client_id = string(b"MQTT");
    bad_utf8_client_id.extend_from_slice(&[4, 0x02, 0, 60]);
    bad_utf8_client_id.extend(string(&[0xC3, 0x28]));
    let mut short_connect = vec![0x10, 100];
    short_connect.extend_from_slice(&connect[2..12]);
    vec![
        ("first packet is PINGREQ, not CONNECT", false, vec![0xC0, 0]),
        (
            "first packet is PUBLISH, not CONNECT",
            false,
            publish_raw(0x30, b"devices/press-9/t", None),
        ),
        (
            "CONNECT with reserved fixed-header flags",
            false,
            reserved_connect,
        ),
        (
            "CONNECT client id is invalid UTF-8",
            false,
            packet(0x10, &bad_utf8_client_id),
        ),
        (
            "CONNECT remaining length larger than the data",
            false,
            short_connect,
        ),
        ("CONNECT that never comes", false, Vec::new()),
        ("PINGREQ with reserved flags", true, vec![0xC1, 0]),
        (
            "remaining length over four bytes",
            true,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        (
            "string length larger than the packet",
            true,
            packet(0x30, &[0, 200, b'a', b'b']),
        ),
        (
            "topic is invalid UTF-8",
            true,
            publish_raw(0x30, &[b'a', 0xFF, b'b'], None),
        ),
        (
            "topic contains U+0000",
            true,
            publish_raw(0x30, b"devices/press-9/\0", None),
        ),
        (
            "topic contains +",
            true,
            publish_raw(0x32, b"devices/press-9/+", Some(1)),
        ),
        (
            "topic contains #",
            true,
            publish_raw(0x30, b"devices/press-9/#", None),
        ),
        ("empty topic", true, publish_raw(0x30, b"", None)),
        (
            "packet id 0 at QoS 1",
            true,
            publish_raw(0x32, b"devices/press-9/t", Some(0)),
        ),
        (
            "QoS 3",
            true,
            publish_raw(0x36, b"devices/press-9/t", Some(1)),
        ),
        ("oversized packet", true, vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
        ("client sends CONNACK", true, vec![0x20, 2, 0, 0]),
        ("client sends SUBACK", true, vec![0x90, 3, 0, 1, 0]),
        ("client sends UNSUBACK", true, vec![0xB0, 2, 0, 1]),
        ("client sends PINGRESP", true, vec![0xD0, 0]),
        ("second CONNECT", true, connect.clone()),
        ("unknown packet type 0", true, vec![0x00, 0]),
    ]
}

#[tokio::test]
async fn each_hostile_packet_closes_only_its_own_connection() {
    let connection = amqp(&amqp_url()).await;
    let queue = fresh_queue(&connection, "hostile").await;
    let dir = TempDir::new();
    let uri = dir.write("amqp-uri", &amqp_url());
    let auth = AuthConfig {
        password_file: Some(password_file(
            &dir,
            &[("press-7", "pw7"), ("press-9", "pw9")],
        )),
        ..AuthConfig::default()
    };
    let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
    config.limits = Limits {
        max_payload_bytes: 1024,
        connect_timeout_seconds: 1,
        messages_per_second: 10_000,
        burst: 10_000,
        ..Limits::default()
    };
    let running = start_connected(config).await;
    let mqtt = running.bound.mqtt.expect("mqtt");

    // The well-behaved device publishes throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU32::new(0));
    let (mut good, code) = RawMqtt::connect(mqtt, "press-7", "pw7").await;
    assert_eq!(code, 0);
    let publisher = {
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        tokio::spawn(async move {
            let mut packet_id: u16 = 0;
            while !stop.load(Ordering::SeqCst) {
                packet_id = packet_id % 60_000 + 1;
                let result = good
                    .publish_qos1("devices/press-7/t", packet_id, b"{}")
                    .await;
                assert_eq!(result, Some(packet_id), "good device lost its session");
                acked.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    for (name, connect_first, bytes) in cases() {
        let before = acked.load(Ordering::SeqCst);
        let mut client = RawMqtt::open(mqtt).await;
        if connect_first {
            client
                .send(&connect_packet("hostile", "press-9", "pw9"))
                .await;
            let connack = client.read_packet().await.expect("CONNACK");
            assert_eq!(connack[3], 0, "{name}: CONNECT accepted first");
        }
        client.send(&bytes).await;
        assert!(
            client.closed_by_server().await,
            "{name}: connection not closed"
        );
        // The other device made progress while this connection was being dealt with.
        assert!(
            eventually(DEADLINE, || {
                let acked = Arc::clone(&acked);
                async move { acked.load(Ordering::SeqCst) > before }
            })
            .await,
            "{name}: the good device stopped getting PUBACKs"
        );
    }
    stop.store(true, Ordering::SeqCst);
    publisher.await.expect("good publisher never failed");
    let total = acked.load(Ordering::SeqCst) as usize;
    let delivered = wait_for_messages(&connection, &queue, total).await;
    assert_eq!(
        delivered.len(),
        total,
        "every acknowledged message is in the queue"
    );
    assert!(
        delivered.iter().all(|m| m["device"] == "press-7"),
        "nothing from the hostile client"
    );
    delete_queue(&connection, &queue).await;
}
