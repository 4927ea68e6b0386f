//! Encoding of the packets the gateway sends.

use bytes::{BufMut, BytesMut};

use super::names::{connack_v311, PacketType, PropertyId, ReasonCode, SUBACK_V311_FAILURE};

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
    /// The device holds `limits.maxConnectionsPerDevice` connections already.
    QuotaExceeded,
    /// An MQTT 5 will with the retain flag (the gateway advertises Retain Available 0).
    RetainNotSupported,
    /// An MQTT 5 will that claims UTF-8 text (Payload Format Indicator 1) and is not.
    PayloadFormatInvalid,
    /// A malformed MQTT 5 CONNECT or one that breaks the protocol, with its reason code.
    Invalid(ReasonCode),
}

impl ConnectRefusal {
    /// The CONNACK return (3.1.1) or reason (5) code; `None` where 3.1.1 has no code for
    /// the refusal (the connection is closed without a CONNACK).
    pub fn code(self, v5: bool) -> Option<u8> {
        if v5 {
            Some(self.reason().code())
        } else {
            self.v311_code()
        }
    }

    /// The MQTT 5 reason code.
    pub fn reason(self) -> ReasonCode {
        match self {
            ConnectRefusal::UnsupportedProtocol => ReasonCode::UnsupportedProtocolVersion,
            ConnectRefusal::IdentifierRejected => ReasonCode::ClientIdentifierNotValid,
            ConnectRefusal::ServerUnavailable => ReasonCode::ServerUnavailable,
            ConnectRefusal::BadCredentials => ReasonCode::BadUserNameOrPassword,
            ConnectRefusal::NotAuthorized => ReasonCode::NotAuthorized,
            ConnectRefusal::BadAuthMethod => ReasonCode::BadAuthenticationMethod,
            ConnectRefusal::QuotaExceeded => ReasonCode::QuotaExceeded,
            ConnectRefusal::RetainNotSupported => ReasonCode::RetainNotSupported,
            ConnectRefusal::PayloadFormatInvalid => ReasonCode::PayloadFormatInvalid,
            ConnectRefusal::Invalid(reason) => reason,
        }
    }

    /// The MQTT 3.1.1 return code, if 3.1.1 has one.
    fn v311_code(self) -> Option<u8> {
        Some(match self {
            ConnectRefusal::UnsupportedProtocol => connack_v311::UNACCEPTABLE_PROTOCOL_VERSION,
            ConnectRefusal::IdentifierRejected => connack_v311::IDENTIFIER_REJECTED,
            // 3.1.1 has no "quota exceeded": "unavailable" makes the device retry later.
            ConnectRefusal::ServerUnavailable | ConnectRefusal::QuotaExceeded => {
                connack_v311::SERVER_UNAVAILABLE
            }
            ConnectRefusal::BadCredentials => connack_v311::BAD_USER_NAME_OR_PASSWORD,
            ConnectRefusal::NotAuthorized | ConnectRefusal::BadAuthMethod => {
                connack_v311::NOT_AUTHORIZED
            }
            ConnectRefusal::RetainNotSupported
            | ConnectRefusal::PayloadFormatInvalid
            | ConnectRefusal::Invalid(_) => return None,
        })
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

fn put_packet(out: &mut BytesMut, kind: PacketType, body: &[u8]) {
    out.put_u8(kind.with_flags(kind.required_flags()));
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
    body.put_u8(if v5 {
        ReasonCode::Success.code()
    } else {
        connack_v311::ACCEPTED
    });
    if v5 {
        let mut props = BytesMut::new();
        props.put_u8(PropertyId::ReceiveMaximum.id());
        props.put_u16(limits.receive_maximum);
        // No maximum QoS property: QoS 2 is supported.
        put_flag(&mut props, PropertyId::RetainAvailable, false);
        props.put_u8(PropertyId::MaximumPacketSize.id());
        props.put_u32(limits.maximum_packet_size);
        put_flag(&mut props, PropertyId::WildcardSubscriptionAvailable, false);
        put_flag(
            &mut props,
            PropertyId::SubscriptionIdentifierAvailable,
            false,
        );
        put_flag(&mut props, PropertyId::SharedSubscriptionAvailable, false);
        if let Some(keep_alive) = limits.server_keep_alive {
            props.put_u8(PropertyId::ServerKeepAlive.id());
            props.put_u16(keep_alive);
        }
        if let Some(id) = &limits.assigned_client_id {
            props.put_u8(PropertyId::AssignedClientIdentifier.id());
            props.put_u16(id.len() as u16);
            props.put_slice(id.as_bytes());
        }
        put_varint(&mut body, props.len());
        body.put_slice(&props);
    }
    put_packet(out, PacketType::Connack, &body);
}

/// A byte property that says whether a feature is available.
fn put_flag(props: &mut BytesMut, id: PropertyId, available: bool) {
    props.put_u8(id.id());
    props.put_u8(u8::from(available));
}

/// A refusing CONNACK (with no properties in MQTT 5); nothing for a refusal 3.1.1 has no
/// return code for.
pub fn connack_refused(out: &mut BytesMut, v5: bool, refusal: ConnectRefusal) {
    match (v5, refusal.code(v5)) {
        (true, Some(code)) => put_packet(out, PacketType::Connack, &[0, code, 0]),
        (false, Some(code)) => put_packet(out, PacketType::Connack, &[0, code]),
        (_, None) => {}
    }
}

/// PUBACK: a QoS 1 message is stored (success) or refused (a failure reason, MQTT 5 only).
pub fn puback(out: &mut BytesMut, v5: bool, packet_id: u16, reason: ReasonCode) {
    publish_ack(out, PacketType::Puback, v5, packet_id, reason);
}

/// PUBREC: a QoS 2 message is stored (success; PUBREL/PUBCOMP follow) or refused.
pub fn pubrec(out: &mut BytesMut, v5: bool, packet_id: u16, reason: ReasonCode) {
    publish_ack(out, PacketType::Pubrec, v5, packet_id, reason);
}

/// PUBCOMP: the end of a QoS 2 exchange (MQTT 5 may say the identifier was not found).
pub fn pubcomp(out: &mut BytesMut, v5: bool, packet_id: u16, reason: ReasonCode) {
    publish_ack(out, PacketType::Pubcomp, v5, packet_id, reason);
}

/// A packet identifier, and in MQTT 5 a reason code unless it is success (the short form).
fn publish_ack(out: &mut BytesMut, kind: PacketType, v5: bool, packet_id: u16, reason: ReasonCode) {
    let [high, low] = packet_id.to_be_bytes();
    if v5 && reason != ReasonCode::Success {
        put_packet(out, kind, &[high, low, reason.code()]);
    } else {
        put_packet(out, kind, &[high, low]);
    }
}

/// SUBACK refusing every filter (subscriptions for downlink are not supported yet).
pub fn suback_refused(out: &mut BytesMut, v5: bool, packet_id: u16, filters: usize) {
    let mut body = BytesMut::new();
    body.put_u16(packet_id);
    if v5 {
        body.put_u8(0); // no properties
    }
    let code = if v5 {
        ReasonCode::NotAuthorized.code()
    } else {
        SUBACK_V311_FAILURE
    };
    body.put_bytes(code, filters);
    put_packet(out, PacketType::Suback, &body);
}

/// UNSUBACK; to MQTT 5 clients every filter is reported "no subscription existed".
pub fn unsuback(out: &mut BytesMut, v5: bool, packet_id: u16, filters: usize) {
    let mut body = BytesMut::new();
    body.put_u16(packet_id);
    if v5 {
        body.put_u8(0); // no properties
        body.put_bytes(ReasonCode::NoSubscriptionExisted.code(), filters);
    }
    put_packet(out, PacketType::Unsuback, &body);
}

/// PINGRESP.
pub fn pingresp(out: &mut BytesMut) {
    put_packet(out, PacketType::Pingresp, &[]);
}

/// DISCONNECT from the server (MQTT 5 only; 3.1.1 servers just close), without properties.
pub fn disconnect(out: &mut BytesMut, reason: ReasonCode) {
    put_packet(out, PacketType::Disconnect, &[reason.code(), 0]);
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
        puback(&mut out, false, 7, ReasonCode::UnspecifiedError);
        assert_eq!(&out[..], &[0x40, 2, 0, 7]);
    }

    #[test]
    fn accepted_v5_connack_advertises_the_gateway_limits() {
        let mut out = BytesMut::new();
        let limits = ServerLimits {
            receive_maximum: 10,
            maximum_packet_size: 0x0001_0000,
            assigned_client_id: Some("id".into()),
            server_keep_alive: Some(300),
        };
        connack_accepted(&mut out, true, &limits);
        #[rustfmt::skip]
        let expected = [
            0x20, 27, 0, 0, 24,
            0x21, 0, 10, // receive maximum
            0x25, 0, // retain available: no
            0x27, 0, 1, 0, 0, // maximum packet size
            0x28, 0, 0x29, 0, 0x2A, 0, // wildcard, subscription id, shared: no
            0x13, 1, 44, // server keep alive
            0x12, 0, 2, b'i', b'd', // assigned client identifier
        ];
        assert_eq!(&out[..], &expected);
        out.clear();
        connack_accepted(&mut out, false, &limits);
        assert_eq!(&out[..], &[0x20, 2, 0, 0]);
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
