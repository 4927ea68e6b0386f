//! MQTT liveness bounds: keep-alive counts whole packets only, keep-alive 0 gets the
//! server maximum, a client that stops reading is closed after the write timeout, and a
//! second connection with the same client id takes the session over. While a hostile
//! connection is being dealt with, a well-behaved device keeps publishing on the same
//! gateway. Timings are printed, and only checked against generous bounds.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;
use tributary_contract::gateway_config::{AuthConfig, Limits};

fn string(text: &str) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out
}

/// CONNECT (3.1.1 or 5) with client id, user name, password and keep-alive.
fn connect_with(
    v5: bool,
    client_id: &str,
    device: &str,
    password: &str,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = string("MQTT");
    body.extend_from_slice(&[if v5 { 5 } else { 4 }, 0xC2]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id));
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

/// The Server Keep Alive property (0x13) of an MQTT 5 CONNACK, if present.
fn server_keep_alive(connack: &[u8]) -> Option<u16> {
    // [0x20, remaining length (one byte here), flags, reason, properties length, ...]
    let mut rest = &connack[5..];
    while let Some((&id, tail)) = rest.split_first() {
        let size = match id {
            0x13 | 0x21 => 2,
            0x27 => 4,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x12 => 2 + usize::from(u16::from_be_bytes([tail[0], tail[1]])),
            other => panic!("unexpected CONNACK property {other:#x} in {connack:?}"),
        };
        if id == 0x13 {
            return Some(u16::from_be_bytes([tail[0], tail[1]]));
        }
        rest = &tail[size..];
    }
    None
}

struct Setup {
    connection: lapin::Connection,
    queue: String,
    _dir: TempDir,
    running: tributary_gateway::app::Running,
}

impl Setup {
    async fn start(limits: Limits) -> Self {
        let connection = amqp(&amqp_url()).await;
        let queue = fresh_queue(&connection, "liveness").await;
        let dir = TempDir::new();
        let uri = dir.write("amqp-uri", &amqp_url());
        let auth = AuthConfig {
            password_file: Some(password_file(
                &dir,
                &[("press-7", "pw7"), ("press-8", "pw8"), ("press-9", "pw9")],
            )),
            ..AuthConfig::default()
        };
        let mut config = test_config(uri, vec![route("devices/#", &queue)], auth);
        config.limits = Limits {
            messages_per_second: 10_000,
            burst: 10_000,
            ..limits
        };
        let running = start_connected(config).await;
        Self {
            connection,
            queue,
            _dir: dir,
            running,
        }
    }

    fn mqtt(&self) -> std::net::SocketAddr {
        self.running.bound.mqtt.expect("mqtt listener")
    }

    async fn finish(self) {
        delete_queue(&self.connection, &self.queue).await;
    }
}

/// A well-behaved device (press-7) publishing QoS 1 in a loop, counting its PUBACKs.
struct GoodDevice {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl GoodDevice {
    async fn start(addr: std::net::SocketAddr) -> Self {
        let (mut client, code) = RawMqtt::connect(addr, "press-7", "pw7").await;
        assert_eq!(code, 0, "good device connects");
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU32::new(0));
        let task = {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut packet_id: u16 = 0;
                while !stop.load(Ordering::SeqCst) {
                    packet_id = packet_id % 60_000 + 1;
                    let result = client
                        .publish_qos1("devices/press-7/t", packet_id, b"{}")
                        .await;
                    assert_eq!(result, Some(packet_id), "good device lost its session");
                    acked.fetch_add(1, Ordering::SeqCst);
                    // Keep-alive is short in these tests: keep sending, but gently.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self { stop, acked, task }
    }

    fn acked(&self) -> u32 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Asserts the device gets further PUBACKs after `before`.
    async fn assert_progress(&self, before: u32, what: &str) {
        let acked = Arc::clone(&self.acked);
        assert!(
            eventually(DEADLINE, || {
                let acked = Arc::clone(&acked);
                async move { acked.load(Ordering::SeqCst) > before }
            })
            .await,
            "{what}: the good device stopped getting PUBACKs"
        );
    }

    async fn stop(self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("good device never failed");
        self.acked.load(Ordering::SeqCst)
    }
}

/// Waits for the server to close `stream` (EOF or reset), discarding anything it sends;
/// returns how long that took, or `None` past `bound`.
async fn closed_within(stream: &mut tokio::net::TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(bound, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn keep_alive_zero_gets_the_server_maximum() {
    let setup = Setup::start(Limits {
        max_keep_alive_seconds: 2,
        ..Limits::default()
    })
    .await;
    let good = GoodDevice::start(setup.mqtt()).await;
    let before = good.acked();

    // MQTT 5: told in CONNACK, then held to it.
    let mut v5 = RawMqtt::open(setup.mqtt()).await;
    v5.send(&connect_with(true, "idle-5", "press-9", "pw9", 0))
        .await;
    let connack = v5.read_packet().await.expect("CONNACK");
    assert_eq!(connack[3], 0, "v5 connects");
    assert_eq!(
        server_keep_alive(&connack),
        Some(2),
        "CONNACK carries Server Keep Alive"
    );
    // 3.1.1 has no way to say so: just enforced.
    let mut v3 = RawMqtt::open(setup.mqtt()).await;
    v3.send(&connect_with(false, "idle-3", "press-9", "pw9", 0))
        .await;
    let connack = v3.read_packet().await.expect("CONNACK");
    assert_eq!(connack[3], 0, "3.1.1 connects");

    let bound = Duration::from_secs(30);
    let v5_closed = closed_within(&mut v5.stream, bound).await;
    let v3_closed = closed_within(&mut v3.stream, bound).await;
    println!(
        "keep-alive 0 with a 2 s maximum: idle v5 connection closed after {v5_closed:?}, \
         3.1.1 after {v3_closed:?} more (1.5 × 2 s = 3 s expected)"
    );
    assert!(v5_closed.is_some(), "idle v5 connection closed");
    assert!(v3_closed.is_some(), "idle 3.1.1 connection closed");

    // A client asking for less than the maximum keeps what it asked for: no property.
    let mut asks_less = RawMqtt::open(setup.mqtt()).await;
    asks_less
        .send(&connect_with(true, "short", "press-9", "pw9", 1))
        .await;
    let connack = asks_less.read_packet().await.expect("CONNACK");
    assert_eq!(server_keep_alive(&connack), None);

    good.assert_progress(before, "idle clients").await;
    good.stop().await;
    setup.finish().await;
}

#[tokio::test]
async fn second_connection_with_the_same_client_id_takes_the_session_over() {
    let setup = Setup::start(Limits::default()).await;
    let addr = setup.mqtt();

    // MQTT 5: the first connection is told 0x8E, then closed; the second works.
    let mut first = RawMqtt::open(addr).await;
    first
        .send(&connect_with(true, "sensor-a", "press-8", "pw8", 60))
        .await;
    assert_eq!(first.read_packet().await.expect("CONNACK")[3], 0);
    // Another device using the same client id takes nothing over.
    let mut other_device = RawMqtt::open(addr).await;
    other_device
        .send(&connect_with(true, "sensor-a", "press-9", "pw9", 60))
        .await;
    assert_eq!(other_device.read_packet().await.expect("CONNACK")[3], 0);

    let mut second = RawMqtt::open(addr).await;
    second
        .send(&connect_with(true, "sensor-a", "press-8", "pw8", 60))
        .await;
    assert_eq!(second.read_packet().await.expect("CONNACK")[3], 0);
    let disconnect = first.read_packet().await.expect("DISCONNECT");
    assert_eq!(disconnect[0], 0xE0, "DISCONNECT, got {disconnect:?}");
    assert_eq!(disconnect[2], 0x8E, "reason: session taken over");
    assert!(first.closed_by_server().await, "first connection closed");
    second.send(&publish_v5("devices/press-8/t", 1)).await;
    let puback = second.read_packet().await.expect("PUBACK");
    assert_eq!(puback[0], 0x40, "second connection publishes");
    // The other device's session was not touched.
    other_device.send(&publish_v5("devices/press-9/t", 1)).await;
    let puback = other_device.read_packet().await.expect("PUBACK");
    assert_eq!(puback[0], 0x40, "the other device's session is intact");

    // MQTT 3.1.1: the first connection is closed.
    let mut first = RawMqtt::open(addr).await;
    first
        .send(&connect_with(false, "sensor-b", "press-8", "pw8", 60))
        .await;
    assert_eq!(first.read_packet().await.expect("CONNACK")[3], 0);
    let mut second = RawMqtt::open(addr).await;
    second
        .send(&connect_with(false, "sensor-b", "press-8", "pw8", 60))
        .await;
    assert_eq!(second.read_packet().await.expect("CONNACK")[3], 0);
    assert!(
        first.closed_by_server().await,
        "3.1.1: first connection closed"
    );
    assert_eq!(
        second.publish_qos1("devices/press-8/t", 7, b"{}").await,
        Some(7),
        "3.1.1: second connection publishes"
    );
    setup.finish().await;
}
