//! A raw MQTT client for commands (3.1.1 and 5): CONNECT with clean start, session expiry
//! and receive maximum chosen, SUBSCRIBE / UNSUBSCRIBE, and the PUBLISH packets the gateway
//! sends, parsed with their MQTT 5 properties.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;

fn string(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    pub v5: bool,
    pub client_id: &'a str,
    pub device: &'a str,
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval.
    pub session_expiry: Option<u32>,
    /// MQTT 5 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// MQTT 5 Maximum Packet Size.
    pub maximum_packet_size: Option<u32>,
}

impl<'a> Login<'a> {
    /// A clean session of `device` with client id `client_id`.
    pub fn clean(v5: bool, client_id: &'a str, device: &'a str) -> Self {
        Self {
            v5,
            client_id,
            device,
            clean_start: true,
            session_expiry: None,
            receive_maximum: None,
            maximum_packet_size: None,
        }
    }

    /// A persistent session (3.1.1 clean session 0; MQTT 5 clean start 0 and an hour's
    /// session expiry).
    pub fn persistent(v5: bool, client_id: &'a str, device: &'a str) -> Self {
        Self {
            clean_start: false,
            session_expiry: v5.then_some(3_600),
            ..Self::clean(v5, client_id, device)
        }
    }

    fn packet(&self) -> Vec<u8> {
        let mut body = string(b"MQTT");
        let flags = 0xC0 | if self.clean_start { 0x02 } else { 0 };
        body.extend_from_slice(&[if self.v5 { 5 } else { 4 }, flags, 0, 60]);
        if self.v5 {
            let mut properties = Vec::new();
            if let Some(seconds) = self.session_expiry {
                properties.push(0x11);
                properties.extend_from_slice(&seconds.to_be_bytes());
            }
            if let Some(maximum) = self.receive_maximum {
                properties.push(0x21);
                properties.extend_from_slice(&maximum.to_be_bytes());
            }
            if let Some(size) = self.maximum_packet_size {
                properties.push(0x27);
                properties.extend_from_slice(&size.to_be_bytes());
            }
            body.push(properties.len() as u8);
            body.extend(properties);
        }
        body.extend(string(self.client_id.as_bytes()));
        body.extend(string(self.device.as_bytes()));
        body.extend(string(super::password(self.device).as_bytes()));
        packet(0x10, &body)
    }
}

/// A PUBLISH the gateway sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub message_expiry: Option<u32>,
}

/// A commands client.
pub struct Client {
    pub raw: RawMqtt,
    pub v5: bool,
    /// The CONNACK's Session Present flag.
    pub session_present: bool,
    /// The CONNACK's Session Expiry Interval property, if any.
    pub session_expiry: Option<u32>,
}

impl Client {
    /// Connects; panics unless the CONNACK accepts.
    pub async fn connect(addr: SocketAddr, login: &Login<'_>) -> Self {
        let mut raw = RawMqtt::open(addr).await;
        raw.send(&login.packet()).await;
        let connack = raw.read_packet().await.expect("CONNACK");
        assert_eq!(connack[0], 0x20, "expected CONNACK, got {connack:?}");
        assert_eq!(connack[3], 0, "{} accepted", login.device);
        let session_expiry = if login.v5 {
            connack_session_expiry(&connack)
        } else {
            None
        };
        Self {
            raw,
            v5: login.v5,
            session_present: connack[2] & 1 == 1,
            session_expiry,
        }
    }

    /// Subscribes; the SUBACK's codes.
    pub async fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for (filter, qos) in filters {
            body.extend(string(filter.as_bytes()));
            body.push(*qos);
        }
        self.raw.send(&packet(0x82, &body)).await;
        let suback = self.expect(0x90).await;
        let skip = if self.v5 { 5 } else { 4 };
        suback[skip..].to_vec()
    }

    /// Unsubscribes; the UNSUBACK.
    pub async fn unsubscribe(&mut self, packet_id: u16, filters: &[&str]) -> Vec<u8> {
        let mut body = packet_id.to_be_bytes().to_vec();
        if self.v5 {
            body.push(0);
        }
        for filter in filters {
            body.extend(string(filter.as_bytes()));
        }
        self.raw.send(&packet(0xA2, &body)).await;
        self.expect(0xB0).await
    }

    /// The next packet, which must start with `first`.
    async fn expect(&mut self, first: u8) -> Vec<u8> {
        let packet = self.raw.read_packet().await.expect("a packet");
        assert_eq!(packet[0], first, "unexpected packet {packet:?}");
        packet
    }

    /// The next PUBLISH within `wait` (other packets are skipped), or `None`.
    pub async fn next_publish_within(&mut self, wait: Duration) -> Option<Received> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let packet = self.raw.read_packet_within(left).await?;
            if packet[0] >> 4 == 3 {
                return Some(parse_publish(&packet, self.v5));
            }
        }
    }

    /// The next PUBLISH; panics when none comes before the deadline.
    pub async fn next_publish(&mut self) -> Received {
        self.next_publish_within(DEADLINE)
            .await
            .expect("a command PUBLISH")
    }

    /// PUBACKs a command.
    pub async fn puback(&mut self, packet_id: u16) {
        let [high, low] = packet_id.to_be_bytes();
        self.raw.send(&[0x40, 2, high, low]).await;
    }

    /// Publishes at QoS 1 (MQTT 5: with a content type) and returns the PUBACK.
    pub async fn publish(&mut self, topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = string(topic.as_bytes());
        body.extend_from_slice(&packet_id.to_be_bytes());
        if self.v5 {
            let content_type = string(b"text/plain");
            body.push((1 + content_type.len()) as u8);
            body.push(0x03);
            body.extend(content_type);
        }
        body.extend_from_slice(payload);
        self.raw.send(&packet(0x32, &body)).await;
        self.expect(0x40).await
    }

    /// Sends DISCONNECT and waits for the close.
    pub async fn disconnect(mut self) {
        let disconnect: &[u8] = if self.v5 { &[0xE0, 1, 0] } else { &[0xE0, 0] };
        self.raw.send(disconnect).await;
        assert!(self.raw.closed_by_server().await);
    }
}

/// The Session Expiry Interval property of an MQTT 5 CONNACK.
fn connack_session_expiry(connack: &[u8]) -> Option<u32> {
    let mut rest = &connack[5..];
    while let Some((&id, tail)) = rest.split_first() {
        let size = match id {
            0x13 | 0x21 => 2,
            0x11 | 0x27 => 4,
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
            0x12 => 2 + usize::from(u16::from_be_bytes([tail[0], tail[1]])),
            other => panic!("unexpected CONNACK property {other:#x}"),
        };
        if id == 0x11 {
            return Some(u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]));
        }
        rest = &tail[size..];
    }
    None
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Parses a whole PUBLISH packet.
pub fn parse_publish(packet: &[u8], v5: bool) -> Received {
    let flags = packet[0] & 0x0F;
    let mut at = 1;
    while packet[at] & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let topic_len = usize::from(read_u16(packet, at));
    let topic = String::from_utf8(packet[at + 2..at + 2 + topic_len].to_vec()).expect("topic");
    at += 2 + topic_len;
    let qos = (flags >> 1) & 3;
    let mut received = Received {
        topic,
        qos,
        dup: flags & 0x08 != 0,
        ..Received::default()
    };
    if qos > 0 {
        received.packet_id = Some(read_u16(packet, at));
        at += 2;
    }
    if v5 {
        // Property lengths here stay below 128 (one byte).
        let end = at + 1 + usize::from(packet[at]);
        at += 1;
        while at < end {
            let id = packet[at];
            at += 1;
            match id {
                0x02 => {
                    let value = u32::from_be_bytes([
                        packet[at],
                        packet[at + 1],
                        packet[at + 2],
                        packet[at + 3],
                    ]);
                    received.message_expiry = Some(value);
                    at += 4;
                }
                0x03 | 0x08 | 0x09 => {
                    let len = usize::from(read_u16(packet, at));
                    let value = packet[at + 2..at + 2 + len].to_vec();
                    at += 2 + len;
                    match id {
                        0x03 => {
                            received.content_type = Some(String::from_utf8(value).expect("utf8"))
                        }
                        0x08 => {
                            received.response_topic = Some(String::from_utf8(value).expect("utf8"))
                        }
                        _ => received.correlation_data = Some(value),
                    }
                }
                other => panic!("unexpected PUBLISH property {other:#x}"),
            }
        }
        at = end;
    }
    received.payload = packet[at..].to_vec();
    received
}
