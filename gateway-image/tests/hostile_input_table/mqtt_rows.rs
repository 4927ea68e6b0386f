//! The MQTT rows: authentication, pre-authentication bounds, throttling, liveness, MQTT 5
//! properties and malformed packets.

use std::time::Duration;

use crate::bench::{self, password};
use crate::common::packet;
use crate::mqtt::{self, connect, publish, string, Input, Login};
use crate::table::Outcome;

type Rows = Vec<(&'static str, Input, Outcome)>;

/// (name, what the properties are, properties, payload, expected outcome)
type PublishRow<'a> = (&'static str, &'static str, &'a [u8], &'a [u8], Outcome);

/// Hands out `dev-0`, `dev-1`, … so each raw-bytes row has a device of its own.
struct Devices(usize);

impl Devices {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("dev-{}", self.0 - 1)
    }

    fn login(&mut self, v5: bool) -> Login {
        Login {
            v5,
            client_id: "hostile".into(),
            device: self.next(),
        }
    }
}

fn bytes(what: &str, login: Option<Login>, bytes: Vec<u8>) -> Input {
    Input::Bytes {
        login,
        bytes,
        what: what.into(),
    }
}

/// A CONNECT from a device of its own with its right password.
fn connect_as(
    devices: &mut Devices,
    v5: bool,
    properties: &[u8],
    will: Option<mqtt::Will>,
) -> Vec<u8> {
    let device = devices.next();
    let pass = password(&device);
    connect(v5, "c", &device, pass.as_bytes(), properties, will, 60)
}

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds)
}

pub fn inputs() -> Rows {
    let mut devices = Devices(0);
    let mut rows = authentication(&mut devices);
    rows.extend(bounds_and_liveness(&mut devices));
    rows.extend(properties(&mut devices));
    rows.extend(malformed(&mut devices));
    rows
}

fn authentication(devices: &mut Devices) -> Rows {
    let device = devices.next();
    let mut anonymous = string(b"MQTT");
    anonymous.extend_from_slice(&[4, 0x02, 0, 60]);
    anonymous.extend(string(b"anon"));
    let mut level_6 = string(b"MQTT");
    level_6.extend_from_slice(&[6, 0x02, 0, 60]);
    level_6.extend(string(b"c"));
    let mut auth_method = vec![0x15];
    auth_method.extend(string(b"SCRAM-SHA-1"));
    vec![
        (
            "wrong password",
            bytes(
                "3.1.1 CONNECT, a real device, wrong password",
                None,
                connect(false, "", &device, b"guess", &[], None, 60),
            ),
            Outcome::Connack(4),
        ),
        (
            "unknown device",
            bytes(
                "3.1.1 CONNECT for a device that does not exist",
                None,
                connect(false, "", "ghost", b"guess", &[], None, 60),
            ),
            Outcome::Connack(4),
        ),
        (
            "wrong password, MQTT 5",
            bytes(
                "MQTT 5 CONNECT, wrong password",
                None,
                connect(true, "", &device, b"guess", &[], None, 60),
            ),
            Outcome::Connack(0x86),
        ),
        (
            "no credentials",
            bytes(
                "CONNECT without user name or password",
                None,
                packet(0x10, &anonymous),
            ),
            Outcome::Connack(4),
        ),
        (
            "wildcard client id",
            bytes(
                "client id `a/#`",
                None,
                connect(
                    false,
                    "a/#",
                    &device,
                    password(&device).as_bytes(),
                    &[],
                    None,
                    60,
                ),
            ),
            Outcome::Connack(2),
        ),
        (
            "enhanced authentication",
            bytes(
                "MQTT 5 CONNECT with an Authentication Method",
                None,
                connect_as(devices, true, &auth_method, None),
            ),
            Outcome::Connack(0x8C),
        ),
        (
            "unknown protocol level",
            bytes(
                "CONNECT with protocol level 6",
                None,
                packet(0x10, &level_6),
            ),
            Outcome::Connack(1),
        ),
    ]
}

fn bounds_and_liveness(devices: &mut Devices) -> Rows {
    let device = devices.next();
    let huge = vec![b'x'; 40 * 1024];
    let keep_alive = f64::from(bench::MAX_KEEP_ALIVE);
    let connect_deadline = bench::CONNECT_TIMEOUT.as_secs_f64();
    vec![
        (
            "pre-authentication cap",
            Input::PreAuthFlood { extra: 10 },
            Outcome::ClosedBetween(Duration::ZERO, secs(connect_deadline / 2.0)),
        ),
        (
            "CONNECT size cap before authentication",
            bytes(
                "a 40 KiB CONNECT (a 40 KiB password) for a real device",
                None,
                connect(false, "", &device, &huge, &[], None, 60),
            ),
            Outcome::Closed,
        ),
        (
            "CONNECT never comes",
            bytes("connection that sends nothing", None, Vec::new()),
            Outcome::ClosedBetween(secs(connect_deadline * 0.75), secs(connect_deadline * 3.0)),
        ),
        (
            "hashing queue inside the CONNECT deadline",
            Input::LoginBurst(30),
            mqtt::codes(&[3, 4]),
        ),
        (
            "busy address",
            Input::AddressFailures(100),
            Outcome::Connack(0),
        ),
        (
            "guessed device",
            Input::ParallelGuesses(20),
            mqtt::codes(&[3, 4]),
        ),
        (
            "trickled PUBLISH",
            Input::Trickle {
                keep_alive: bench::MAX_KEEP_ALIVE,
            },
            Outcome::ClosedBetween(secs(keep_alive * 1.2), secs(keep_alive * 3.0)),
        ),
        (
            "keep-alive 0, MQTT 5",
            Input::KeepAliveZero { v5: true },
            Outcome::ServerKeepAlive(bench::MAX_KEEP_ALIVE),
        ),
        (
            "keep-alive 0, 3.1.1",
            Input::KeepAliveZero { v5: false },
            Outcome::ClosedBetween(secs(keep_alive * 1.2), secs(keep_alive * 3.0)),
        ),
        (
            "stops reading",
            Input::StopsReading,
            Outcome::ClosedBetween(bench::WRITE_TIMEOUT.mul_f64(0.75), secs(30.0)),
        ),
        (
            "client-id takeover, MQTT 5",
            Input::Takeover { v5: true },
            Outcome::Disconnect(0x8E),
        ),
        (
            "client-id takeover, 3.1.1",
            Input::Takeover { v5: false },
            Outcome::Closed,
        ),
        (
            "per-device cap, MQTT 5",
            Input::DeviceCap { v5: true },
            Outcome::Connack(0x97),
        ),
        (
            "per-device cap, 3.1.1",
            Input::DeviceCap { v5: false },
            Outcome::Connack(3),
        ),
    ]
}

fn properties(devices: &mut Devices) -> Rows {
    let mut content_type_twice = vec![0x03];
    content_type_twice.extend(string(b"a"));
    content_type_twice.push(0x03);
    content_type_twice.extend(string(b"b"));
    let utf8 = [0x01, 1];
    let mut rows: Rows = [
        (
            "property twice on CONNECT",
            "Receive Maximum given twice",
            &[0x21, 0, 5, 0x21, 0, 5][..],
            0x82,
        ),
        (
            "property not allowed on CONNECT",
            "Topic Alias on CONNECT",
            &[0x23, 0, 1][..],
            0x81,
        ),
        (
            "receive maximum 0",
            "Receive Maximum 0",
            &[0x21, 0, 0][..],
            0x82,
        ),
        (
            "maximum packet size 0",
            "Maximum Packet Size 0",
            &[0x27, 0, 0, 0, 0][..],
            0x82,
        ),
        (
            "request problem information 2",
            "Request Problem Information 2",
            &[0x17, 2][..],
            0x82,
        ),
        (
            "request response information 2",
            "Request Response Information 2",
            &[0x19, 2][..],
            0x82,
        ),
    ]
    .into_iter()
    .map(|(name, what, properties, code)| {
        let what = format!("MQTT 5 CONNECT with {what}");
        (
            name,
            bytes(&what, None, connect_as(devices, true, properties, None)),
            Outcome::Connack(code),
        )
    })
    .collect();
    let publishes: [PublishRow; 5] = [
        (
            "property twice on PUBLISH",
            "Content Type given twice",
            &content_type_twice,
            b"{}",
            Outcome::Disconnect(0x82),
        ),
        (
            "property not allowed on PUBLISH",
            "Receive Maximum",
            &[0x21, 0, 5],
            b"{}",
            Outcome::Disconnect(0x81),
        ),
        (
            "payload format indicator 2",
            "Payload Format Indicator 2",
            &[0x01, 2],
            b"{}",
            Outcome::Disconnect(0x82),
        ),
        (
            "topic alias 0",
            "Topic Alias 0",
            &[0x23, 0, 0],
            b"{}",
            Outcome::Disconnect(0x82),
        ),
        (
            "payload not the UTF-8 it claims",
            "Payload Format Indicator 1 and bytes C3 28",
            &utf8,
            &[0xC3, 0x28],
            Outcome::Puback(0x99),
        ),
    ];
    for (name, what, properties, payload, expected) in publishes {
        let login = devices.login(true);
        let topic = format!("devices/{}/t", login.device);
        let bytes_ = publish(true, topic.as_bytes(), 1, properties, payload);
        rows.push((
            name,
            bytes(&format!("MQTT 5 PUBLISH with {what}"), Some(login), bytes_),
            expected,
        ));
    }
    let will_utf8 = connect_as(devices, true, &[], Some((false, &utf8, &[0xFF])));
    let will_retain = connect_as(devices, true, &[], Some((true, &[], b"{}")));
    rows.extend([
        (
            "will payload not the UTF-8 it claims",
            bytes(
                "MQTT 5 will with Payload Format Indicator 1 and byte FF",
                None,
                will_utf8,
            ),
            Outcome::Connack(0x99),
        ),
        (
            "will retain",
            bytes(
                "MQTT 5 will with retain set (Retain Available is 0)",
                None,
                will_retain,
            ),
            Outcome::Connack(0x9A),
        ),
        (
            "DISCONNECT sets a session expiry",
            bytes(
                "MQTT 5 DISCONNECT with Session Expiry 30 after a CONNECT without one",
                Some(devices.login(true)),
                vec![0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 30],
            ),
            Outcome::Disconnect(0x82),
        ),
    ]);
    rows
}

fn raw_publish(first: u8, topic: &[u8], packet_id: Option<u16>) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(b"{}");
    packet(first, &body)
}

/// Malformed packets, after a good 3.1.1 CONNECT unless they replace it: each is closed.
fn malformed(devices: &mut Devices) -> Rows {
    let device = devices.next();
    let connect_ = connect(
        false,
        "hostile",
        &device,
        password(&device).as_bytes(),
        &[],
        None,
        60,
    );
    let mut reserved_connect = connect_.clone();
    reserved_connect[0] = 0x11;
    let mut bad_utf8_client_id = string(b"MQTT");
    bad_utf8_client_id.extend_from_slice(&[4, 0x02, 0, 60]);
    bad_utf8_client_id.extend(string(&[0xC3, 0x28]));
    let mut short_connect = vec![0x10, 100];
    short_connect.extend_from_slice(&connect_[2..12]);
    let before_connect: Vec<(&'static str, Vec<u8>)> = vec![
        ("first packet is PINGREQ", vec![0xC0, 0]),
        (
            "first packet is PUBLISH",
            raw_publish(0x30, b"devices/dev-0/t", None),
        ),
        ("CONNECT with reserved flags", reserved_connect),
        ("client id not UTF-8", packet(0x10, &bad_utf8_client_id)),
        ("CONNECT shorter than its length", short_connect),
    ];
    let after_connect: Vec<(&'static str, Vec<u8>)> = vec![
        ("PINGREQ with reserved flags", vec![0xC1, 0]),
        (
            "remaining length over four bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        (
            "string longer than the packet",
            packet(0x30, &[0, 200, b'a', b'b']),
        ),
        (
            "topic not UTF-8",
            raw_publish(0x30, &[b'a', 0xFF, b'b'], None),
        ),
        (
            "topic with U+0000",
            raw_publish(0x30, b"devices/x/\0", None),
        ),
        ("topic with +", raw_publish(0x32, b"devices/x/+", Some(1))),
        ("topic with #", raw_publish(0x30, b"devices/x/#", None)),
        ("empty topic", raw_publish(0x30, b"", None)),
        (
            "packet id 0 at QoS 1",
            raw_publish(0x32, b"devices/x/t", Some(0)),
        ),
        ("QoS 3", raw_publish(0x36, b"devices/x/t", Some(1))),
        (
            "packet over the size limit",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        ("client sends CONNACK", vec![0x20, 2, 0, 0]),
        ("client sends SUBACK", vec![0x90, 3, 0, 1, 0]),
        ("client sends UNSUBACK", vec![0xB0, 2, 0, 1]),
        ("client sends PINGRESP", vec![0xD0, 0]),
        ("second CONNECT", connect_),
        ("packet type 0", vec![0x00, 0]),
    ];
    let mut rows: Rows = before_connect
        .into_iter()
        .map(|(name, packet)| {
            (
                name,
                bytes(&format!("{name} (no CONNECT before)"), None, packet),
                Outcome::Closed,
            )
        })
        .collect();
    for (name, packet) in after_connect {
        let login = Some(devices.login(false));
        rows.push((
            name,
            bytes(&format!("{name}, after CONNECT"), login, packet),
            Outcome::Closed,
        ));
    }
    rows
}
