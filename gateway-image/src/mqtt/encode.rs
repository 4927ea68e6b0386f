//! Encoding of the packets the gateway sends.

use bytes::{BufMut, BytesMut};

/// CONNACK return codes, in MQTT 3.1.1 and MQTT 5 form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    /// Unsupported protocol level.
    UnsupportedProtocol,
    /// Client id refused (wildcards, or empty without clean session).
    IdentifierRejected,
    /// Broker unavailable, draining, or too many connections.
    ServerUnavailable,
    /// Unknown device, wrong password, bad token.
    BadCredentials,
    /// Authenticated but not allowed (e.g. too many failed logins).
    NotAuthorized,
    /// Unsupported MQTT 5 enhanced authentication method.
    BadAuthMethod,
}

impl ConnectRefusal {
    /// The CONNACK return (3.1.1) or reason (5) code.
    pub fn code(self, v5: bool) -> u8 {
        match (self, v5) {
            (ConnectRefusal::UnsupportedProtocol, false) => 0x01,
            (ConnectRefusal::UnsupportedProtocol, true) => 0x84,
            (ConnectRefusal::IdentifierRejected, false) => 0x02,
            (ConnectRefusal::IdentifierRejected, true) => 0x85,
            (ConnectRefusal::ServerUnavailable, false) => 0x03,
            (ConnectRefusal::ServerUnavailable, true) => 0x88,
            (ConnectRefusal::BadCredentials, false) => 0x04,
            (ConnectRefusal::BadCredentials, true) => 0x86,
            (ConnectRefusal::NotAuthorized, false) => 0x05,
            (ConnectRefusal::NotAuthorized, true) => 0x87,
            (ConnectRefusal::BadAuthMethod, false) => 0x05,
            (ConnectRefusal::BadAuthMethod, true) => 0x8C,
        }
    }
}

fn put_varint(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

fn put_packet(out: &mut BytesMut, first: u8, body: &[u8]) {
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(body);
}

/// What the server tells an MQTT 5 client in a successful CONNACK.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Receive maximum (unacknowledged QoS 1 messages).
    pub receive_maximum: u16,
    /// Largest packet the server accepts.
    pub maximum_packet_size: u32,
    /// Client id the server assigned, when the client sent an empty one.
    pub assigned_client_id: Option<String>,
    /// Server Keep Alive, when the gateway grants a different keep-alive than asked for.
    pub server_keep_alive: Option<u16>,
}

/// A successful CONNACK.
pub fn connack_accepted(out: &mut BytesMut, v5: bool, limits: &ServerLimits) {
    let mut body = BytesMut::new();
    body.put_u8(0); // session present: sessions are not persisted
    body.put_u8(0);
    if v5 {
        let mut props = BytesMut::new();
        props.put_u8(0x21);
        props.put_u16(limits.receive_maximum);
        // No maximum QoS property: QoS 2 is supported.
        props.put_u8(0x25); // retain available
        props.put_u8(0);
        props.put_u8(0x27);
        props.put_u32(limits.maximum_packet_size);
        props.put_u8(0x28); // wildcard subscriptions available
        props.put_u8(0);
        props.put_u8(0x29); // subscription identifiers available
        props.put_u8(0);
        props.put_u8(0x2A); // shared subscriptions available
        props.put_u8(0);
        if let Some(keep_alive) = limits.server_keep_alive {
            props.put_u8(0x13);
            props.put_u16(keep_alive);
        }
        if let Some(id) = &limits.assigned_client_id {
            props.put_u8(0x12);
            props.put_u16(id.len() as u16);
            props.put_slice(id.as_bytes());
        }
        put_varint(&mut body, props.len());
        body.put_slice(&props);
    }
    put_packet(out, 0x20, &body);
}

/// A refusing CONNACK.
pub fn connack_refused(out: &mut BytesMut, v5: bool, refusal: ConnectRefusal) {
    if v5 {
        put_packet(out, 0x20, &[0, refusal.code(true), 0]);
    } else {
        put_packet(out, 0x20, &[0, refusal.code(false)]);
    }
}

/// PUBACK: a QoS 1 message is stored (reason 0) or refused (a v5 reason code ≥ 0x80).
pub fn puback(out: &mut BytesMut, v5: bool, packet_id: u16, reason: u8) {
    publish_ack(out, 0x40, v5, packet_id, reason);
}

/// PUBREC: a QoS 2 message is stored (reason 0; PUBREL/PUBCOMP follow) or refused.
pub fn pubrec(out: &mut BytesMut, v5: bool, packet_id: u16, reason: u8) {
    publish_ack(out, 0x50, v5, packet_id, reason);
}

/// PUBCOMP: the end of a QoS 2 exchange (v5 reason 0x92: the identifier was unknown).
pub fn pubcomp(out: &mut BytesMut, v5: bool, packet_id: u16, reason: u8) {
    publish_ack(out, 0x70, v5, packet_id, reason);
}

/// A packet identifier, and in MQTT 5 a reason code unless it is success (the short form).
fn publish_ack(out: &mut BytesMut, first_byte: u8, v5: bool, packet_id: u16, reason: u8) {
    let [high, low] = packet_id.to_be_bytes();
    if v5 && reason != 0 {
        put_packet(out, first_byte, &[high, low, reason]);
    } else {
        put_packet(out, first_byte, &[high, low]);
    }
}

/// SUBACK refusing every filter (subscriptions for downlink are not supported yet).
pub fn suback_refused(out: &mut BytesMut, v5: bool, packet_id: u16, filters: usize) {
    let mut body = BytesMut::new();
    body.put_u16(packet_id);
    if v5 {
        body.put_u8(0);
    }
    // 0x80 = failure (3.1.1); 0x87 = not authorized (5).
    let code = if v5 { 0x87 } else { 0x80 };
    body.put_bytes(code, filters);
    put_packet(out, 0x90, &body);
}

/// UNSUBACK; to MQTT 5 clients every filter is reported "no subscription existed".
pub fn unsuback(out: &mut BytesMut, v5: bool, packet_id: u16, filters: usize) {
    let mut body = BytesMut::new();
    body.put_u16(packet_id);
    if v5 {
        body.put_u8(0);
        body.put_bytes(0x11, filters);
    }
    put_packet(out, 0xB0, &body);
}

/// PINGRESP.
pub fn pingresp(out: &mut BytesMut) {
    put_packet(out, 0xD0, &[]);
}

/// DISCONNECT from the server (MQTT 5 only; 3.1.1 servers just close).
pub fn disconnect(out: &mut BytesMut, reason: u8) {
    put_packet(out, 0xE0, &[reason, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_uses_continuation_bits() {
        let mut out = BytesMut::new();
        put_varint(&mut out, 321);
        assert_eq!(&out[..], &[0xC1, 0x02]);
    }

    #[test]
    fn v311_puback_never_carries_a_reason() {
        let mut out = BytesMut::new();
        puback(&mut out, false, 7, 0x80);
        assert_eq!(&out[..], &[0x40, 2, 0, 7]);
    }

    #[test]
    fn refused_connack_codes_follow_each_version() {
        let mut out = BytesMut::new();
        connack_refused(&mut out, false, ConnectRefusal::BadCredentials);
        assert_eq!(&out[..], &[0x20, 2, 0, 4]);
        out.clear();
        connack_refused(&mut out, true, ConnectRefusal::ServerUnavailable);
        assert_eq!(&out[..], &[0x20, 3, 0, 0x88, 0]);
    }
}
