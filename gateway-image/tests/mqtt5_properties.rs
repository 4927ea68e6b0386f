//! MQTT 5 properties and the protocol gaps around them, on the wire: every refusal carries
//! the reason code the specification names (a CONNACK before the session, a DISCONNECT or
//! an acknowledgement after), wills pass the per-device rate limit, the envelope carries
//! the request/response and user properties, and one device holds a bounded number of
//! connections. Meanwhile a well-behaved device keeps publishing on the same gateway.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tributary_contract::gateway_config::{AuthConfig, Limits};

const USER_NAME_PASSWORD_CLEAN: u8 = 0xC2;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;

fn string(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

fn with_length(properties: &[u8]) -> Vec<u8> {
    let mut out = vec![properties.len() as u8];
    out.extend_from_slice(properties);
    out
}

/// A will: (retain, will properties, topic, payload).
type WillSpec<'a> = (bool, &'a [u8], &'a str, &'a [u8]);

/// An MQTT 5 (or, `v5` false, 3.1.1) CONNECT with user name = device and these properties.
fn connect(
    v5: bool,
    client_id: &str,
    device: &str,
    properties: &[u8],
    will: Option<WillSpec>,
) -> Vec<u8> {
    let mut flags = USER_NAME_PASSWORD_CLEAN;
    if let Some((retain, ..)) = will {
        flags |= WILL | if retain { WILL_RETAIN } else { 0 };
    }
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[if v5 { 5 } else { 4 }, flags, 0, 60]);
    if v5 {
        body.extend(with_length(properties));
    }
    body.extend(string(client_id.as_bytes()));
    if let Some((_, will_properties, topic, payload)) = will {
        if v5 {
            body.extend(with_length(will_properties));
        }
        body.extend(string(topic.as_bytes()));
        body.extend(string(payload));
    }
    body.extend(string(device.as_bytes()));
    body.extend(string(password(device).as_bytes()));
    packet(0x10, &body)
}

fn password(device: &str) -> String {
    format!("pw-{device}")
}

/// An MQTT 5 QoS 1 PUBLISH with these properties.
fn publish_v5(topic: &str, packet_id: u16, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend(with_length(properties));
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// Sends a CONNECT and returns the client with the CONNACK's reason/return code.
async fn open(mqtt: SocketAddr, connect_packet: &[u8]) -> (RawMqtt, u8) {
    let mut client = RawMqtt::open(mqtt).await;
    client.send(connect_packet).await;
    let connack = client.read_packet().await.expect("CONNACK");
    assert_eq!(connack[0], 0x20, "expected CONNACK, got {connack:?}");
    (client, connack[3])
}

async fn open_v5(mqtt: SocketAddr, client_id: &str, device: &str) -> RawMqtt {
    let (client, code) = open(mqtt, &connect(true, client_id, device, &[], None)).await;
    assert_eq!(code, 0, "{device}/{client_id} accepted");
    client
}

/// A gateway with devices press-1 … press-9, a queue for everything, and a device
/// (press-1) publishing QoS 1 throughout.
struct Bench {
    connection: lapin::Connection,
    queue: String,
    _dir: TempDir,
    running: tributary_gateway::app::Running,
    mqtt: SocketAddr,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU32>,
    publisher: tokio::task::JoinHandle<()>,
    /// Every message taken from the queue so far.
    drained: Vec<serde_json::Value>,
}

impl Bench {
    async fn start(limits: Limits) -> Self {
        let connection = amqp(&amqp_url()).await;
        let queue = fresh_queue(&connection, "mqtt5-properties").await;
        let dir = TempDir::new();
        let uri = dir.write("amqp-uri", &amqp_url());
        let devices: Vec<(String, String)> = (1..=9)
            .map(|n| (format!("press-{n}"), password(&format!("press-{n}"))))
            .collect();
        let pairs: Vec<(&str, &str)> = devices
            .iter()
            .map(|(d, p)| (d.as_str(), p.as_str()))
            .collect();
        let auth = AuthConfig {
            password_file: Some(password_file(&dir, &pairs)),
            ..AuthConfig::default()
        };
        let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
        config.limits = limits;
        let running = start_connected(config).await;
        let mqtt = running.bound.mqtt.expect("mqtt");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU32::new(0));
        let mut good = open_v5(mqtt, "good", "press-1").await;
        let publisher = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut packet_id: u16 = 0;
                while !stop.load(Ordering::SeqCst) {
                    packet_id = packet_id % 60_000 + 1;
                    good.send(&publish_v5(
                        "devices/press-1/t",
                        packet_id,
                        &[],
                        b"{\"good\":true}",
                    ))
                    .await;
                    let puback = good
                        .read_packet()
                        .await
                        .expect("good device keeps its session");
                    assert_eq!(&puback[..2], &[0x40, 2], "PUBACK");
                    assert_eq!(u16::from_be_bytes([puback[2], puback[3]]), packet_id);
                    acked.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self {
            connection,
            queue,
            _dir: dir,
            running,
            mqtt,
            stop,
            acked,
            publisher,
            drained: Vec::new(),
        }
    }

    /// Takes what is in the queue now; returns every message so far not from the good device.
    async fn drain(&mut self) -> Vec<serde_json::Value> {
        let more = drain_queue(&self.connection, &self.queue).await;
        self.drained.extend(more);
        let others = self.drained.iter().filter(|m| m["device"] != "press-1");
        others.cloned().collect()
    }

    /// The good device is acknowledged again after this point.
    async fn assert_good_device_progresses(&self) {
        let before = self.acked.load(Ordering::SeqCst);
        let acked = Arc::clone(&self.acked);
        assert!(
            eventually(DEADLINE, || {
                let acked = Arc::clone(&acked);
                async move { acked.load(Ordering::SeqCst) > before }
            })
            .await,
            "the good device stopped getting PUBACKs"
        );
    }

    /// Stops the good device and returns every other device's message in the queue.
    async fn finish(self) -> Vec<serde_json::Value> {
        self.assert_good_device_progresses().await;
        self.stop.store(true, Ordering::SeqCst);
        self.publisher.await.expect("good publisher never failed");
        let good = self.acked.load(Ordering::SeqCst) as usize;
        let mut all = self.drained;
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            all.extend(drain_queue(&self.connection, &self.queue).await);
            let good_seen = all.iter().filter(|m| m["device"] == "press-1").count();
            if good_seen >= good {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let good_seen = all.iter().filter(|m| m["device"] == "press-1").count();
        assert_eq!(
            good_seen, good,
            "every acknowledged good message is in the queue"
        );
        delete_queue(&self.connection, &self.queue).await;
        drop(self.running);
        all.into_iter()
            .filter(|m| m["device"] != "press-1")
            .collect()
    }
}

/// Reads until the server's DISCONNECT and returns its reason code; then the connection
/// must close.
async fn disconnect_reason(client: &mut RawMqtt) -> u8 {
    let disconnect = client.read_packet().await.expect("DISCONNECT");
    assert_eq!(
        disconnect[0], 0xE0,
        "expected DISCONNECT, got {disconnect:?}"
    );
    assert!(client.closed_by_server().await, "closed after DISCONNECT");
    disconnect[2]
}

#[tokio::test]
async fn disconnect_setting_a_session_expiry_the_connect_did_not_is_a_protocol_error() {
    let mut bench = Bench::start(Limits::default()).await;
    let expiry_60 = [0x11, 0, 0, 0, 60];
    let disconnect_with_expiry = [0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 30];
    // CONNECT without a session expiry: DISCONNECT 0x82, and the will stays due.
    let will = (
        false,
        &[][..],
        "devices/press-2/status",
        &b"{\"will\":1}"[..],
    );
    let (mut client, code) =
        open(bench.mqtt, &connect(true, "c", "press-2", &[], Some(will))).await;
    assert_eq!(code, 0);
    client.send(&disconnect_with_expiry).await;
    assert_eq!(disconnect_reason(&mut client).await, 0x82);
    // CONNECT with one: a normal disconnection (no answer, no will).
    let will = (
        false,
        &[][..],
        "devices/press-2/status",
        &b"{\"will\":2}"[..],
    );
    let (mut client, code) = open(
        bench.mqtt,
        &connect(true, "c", "press-2", &expiry_60, Some(will)),
    )
    .await;
    assert_eq!(code, 0);
    client.send(&disconnect_with_expiry).await;
    assert!(client.closed_by_server().await);
    bench.assert_good_device_progresses().await;
    let mut wills = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while wills.is_empty() && Instant::now() < deadline {
        wills = bench.drain().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = bench.finish().await;
    assert_eq!(delivered.len(), 1, "only the first will: {delivered:?}");
    assert_eq!(delivered[0]["payload"]["data"]["will"], 1);
}

#[tokio::test]
async fn payload_not_the_utf8_it_claims_is_refused_payload_format_invalid() {
    let bench = Bench::start(Limits::default()).await;
    let utf8 = [0x01, 1];
    // PUBLISH: PUBACK 0x99, and the session goes on.
    let mut client = open_v5(bench.mqtt, "c", "press-2").await;
    client
        .send(&publish_v5("devices/press-2/t", 1, &utf8, &[0xC3, 0x28]))
        .await;
    assert_eq!(client.read_packet().await, Some(vec![0x40, 3, 0, 1, 0x99]));
    client
        .send(&publish_v5(
            "devices/press-2/t",
            2,
            &utf8,
            "{\"ok\":\"grüße\"}".as_bytes(),
        ))
        .await;
    assert_eq!(client.read_packet().await, Some(vec![0x40, 2, 0, 2]));
    drop(client);
    // Will: CONNACK 0x99.
    let will = (false, &utf8[..], "devices/press-2/will", &[0xFFu8][..]);
    let (mut client, code) =
        open(bench.mqtt, &connect(true, "w", "press-2", &[], Some(will))).await;
    assert_eq!(code, 0x99);
    assert!(client.closed_by_server().await);
    let delivered = bench.finish().await;
    assert_eq!(delivered.len(), 1, "only the valid message: {delivered:?}");
    assert_eq!(delivered[0]["payload"]["data"]["ok"], "grüße");
}

#[tokio::test]
async fn will_with_retain_is_refused_retain_not_supported_in_mqtt5_only() {
    let mut bench = Bench::start(Limits::default()).await;
    let will = (
        true,
        &[][..],
        "devices/press-2/status",
        &b"{\"will\":5}"[..],
    );
    let (mut client, code) =
        open(bench.mqtt, &connect(true, "c", "press-2", &[], Some(will))).await;
    assert_eq!(code, 0x9A, "MQTT 5: retain not supported");
    assert!(client.closed_by_server().await);
    // 3.1.1 has no such refusal: the retain flag is ignored, as on its PUBLISH, and the
    // will is published when the connection drops.
    let will = (
        true,
        &[][..],
        "devices/press-2/status",
        &b"{\"will\":3}"[..],
    );
    let (client, code) = open(bench.mqtt, &connect(false, "c", "press-2", &[], Some(will))).await;
    assert_eq!(code, 0, "MQTT 3.1.1: accepted");
    drop(client);
    let deadline = Instant::now() + DEADLINE;
    let mut delivered = Vec::new();
    while delivered.is_empty() && Instant::now() < deadline {
        delivered = bench.drain().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["payload"]["data"]["will"], 3);
    bench.finish().await;
}

#[tokio::test]
async fn will_waits_for_the_devices_rate_limit() {
    let limits = Limits {
        messages_per_second: 1,
        burst: 1,
        ..Limits::default()
    };
    let mut bench = Bench::start(limits).await;
    let will = (
        false,
        &[][..],
        "devices/press-2/status",
        &b"{\"will\":true}"[..],
    );
    let (mut with_will, code) =
        open(bench.mqtt, &connect(true, "w", "press-2", &[], Some(will))).await;
    assert_eq!(code, 0);
    // The one message press-2 may send this second …
    let mut other = open_v5(bench.mqtt, "o", "press-2").await;
    other
        .send(&publish_v5(
            "devices/press-2/t",
            1,
            &[],
            b"{\"first\":true}",
        ))
        .await;
    assert_eq!(other.read_packet().await, Some(vec![0x40, 2, 0, 1]));
    let spent = Instant::now();
    // … so the will, due now that the connection drops, waits for the next token.
    with_will.send(&[0xE0, 1, 0x04]).await;
    assert!(with_will.closed_by_server().await);
    let deadline = Instant::now() + DEADLINE;
    let will_at = loop {
        let messages = bench.drain().await;
        if messages
            .iter()
            .any(|m| m["payload"]["data"]["will"] == true)
        {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the will was never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        will_at.duration_since(spent) >= Duration::from_millis(700),
        "the will was published {:?} after the device's last token was spent",
        will_at.duration_since(spent)
    );
    bench.finish().await;
}

#[tokio::test]
async fn mqtt5_user_and_request_response_properties_reach_the_envelope() {
    let bench = Bench::start(Limits::default()).await;
    let mut client = open_v5(bench.mqtt, "c", "press-2").await;
    let mut properties = vec![0x26];
    properties.extend(string(b"site"));
    properties.extend(string(b"north"));
    properties.push(0x26);
    properties.extend(string(b"site"));
    properties.extend(string(b"south"));
    properties.push(0x08);
    properties.extend(string(b"replies/press-2"));
    properties.push(0x09);
    properties.extend(string(&[0x00, 0x01, 0xFF]));
    properties.push(0x03);
    properties.extend(string(b"application/json"));
    client
        .send(&publish_v5(
            "devices/press-2/t",
            1,
            &properties,
            b"{\"v\":1}",
        ))
        .await;
    assert_eq!(client.read_packet().await, Some(vec![0x40, 2, 0, 1]));
    // Without properties (and from 3.1.1) the envelope has no `mqtt` field.
    client
        .send(&publish_v5("devices/press-2/t", 2, &[], b"{\"v\":2}"))
        .await;
    assert_eq!(client.read_packet().await, Some(vec![0x40, 2, 0, 2]));
    let mut delivered = bench.finish().await;
    delivered.sort_by_key(|m| m["payload"]["data"]["v"].as_u64());
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert_eq!(
        delivered[0]["mqtt"],
        serde_json::json!({
            "userProperties": [
                {"name": "site", "value": "north"},
                {"name": "site", "value": "south"}
            ],
            "responseTopic": "replies/press-2",
            "correlationData": "AAH/"
        })
    );
    assert_eq!(delivered[0]["contentType"], "application/json");
    assert!(delivered[1].get("mqtt").is_none(), "{}", delivered[1]);
}

#[tokio::test]
async fn a_device_past_its_connection_cap_gets_quota_exceeded_while_takeover_still_works() {
    let limits = Limits {
        max_connections_per_device: 2,
        ..Limits::default()
    };
    let bench = Bench::start(limits).await;
    let mut first = open_v5(bench.mqtt, "c1", "press-2").await;
    let (_second, code) = open(bench.mqtt, &connect(false, "c2", "press-2", &[], None)).await;
    assert_eq!(code, 0);
    // A third client id: refused, in each version's words.
    let (mut third, code) = open(bench.mqtt, &connect(true, "c3", "press-2", &[], None)).await;
    assert_eq!(code, 0x97, "MQTT 5: quota exceeded");
    assert!(third.closed_by_server().await);
    let (mut third, code) = open(bench.mqtt, &connect(false, "c3", "press-2", &[], None)).await;
    assert_eq!(code, 0x03, "MQTT 3.1.1: server unavailable");
    assert!(third.closed_by_server().await);
    // Another device is not affected.
    let _other = open_v5(bench.mqtt, "c3", "press-3").await;
    // Reusing a live client id takes that session over, cap or not.
    let mut takeover = open_v5(bench.mqtt, "c1", "press-2").await;
    assert_eq!(
        disconnect_reason(&mut first).await,
        0x8E,
        "session taken over"
    );
    takeover
        .send(&publish_v5(
            "devices/press-2/t",
            1,
            &[],
            b"{\"after\":\"takeover\"}",
        ))
        .await;
    assert_eq!(takeover.read_packet().await, Some(vec![0x40, 2, 0, 1]));
    // A closed connection frees its slot.
    drop(takeover);
    assert!(
        eventually(DEADLINE, || async {
            let (_client, code) =
                open(bench.mqtt, &connect(true, "c4", "press-2", &[], None)).await;
            code == 0
        })
        .await,
        "the slot of a closed connection is free again"
    );
    let delivered = bench.finish().await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
}
