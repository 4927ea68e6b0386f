//! Encoding of the packets the gateway sends.

use bytes::{BufMut, BytesMut};

use super::names::{connack_v311, PacketType, PropertyId, ReasonCode};

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
    /// Whether a session of this device was resumed (its commands queued meanwhile).
    pub session_present: bool,
    /// The Session Expiry Interval the gateway holds to, when it differs from the client's.
    pub session_expiry_interval: Option<u32>,
    /// Whether wildcard subscriptions are available (commands enabled).
    pub wildcard_subscriptions: bool,
}

/// A successful CONNACK.
pub fn connack_accepted(out: &mut BytesMut, v5: bool, limits: &ServerLimits) {
    let mut body = BytesMut::new();
    body.put_u8(u8::from(limits.session_present));
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
        put_flag(
            &mut props,
            PropertyId::WildcardSubscriptionAvailable,
            limits.wildcard_subscriptions,
        );
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
        if let Some(seconds) = limits.session_expiry_interval {
            props.put_u8(PropertyId::SessionExpiryInterval.id());
            props.put_u32(seconds);
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

/// SUBACK with one code per filter: the granted QoS, or a failure code.
pub fn suback(out: &mut BytesMut, v5: bool, packet_id: u16, codes: &[u8]) {
    let mut body = BytesMut::new();
    body.put_u16(packet_id);
    if v5 {
        body.put_u8(0); // no properties
    }
    body.put_slice(codes);
    put_packet(out, PacketType::Suback, &body);
}

/// UNSUBACK; MQTT 5 clients get one reason code per filter (success or "no subscription
/// existed").
pub fn unsuback(out: &mut BytesMut, v5: bool, packet_id: u16, existed: &[bool]) {
    let mut body = BytesMut::new();
    body.put_u16(packet_id);
    if v5 {
        body.put_u8(0); // no properties
        for existed in existed {
            body.put_u8(if *existed {
                ReasonCode::Success.code()
            } else {
                ReasonCode::NoSubscriptionExisted.code()
            });
        }
    }
    put_packet(out, PacketType::Unsuback, &body);
}

/// A PUBLISH the gateway sends (a command).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingPublish<'a> {
    /// The topic name.
    pub topic: &'a str,
    /// QoS 0 or 1.
    pub qos: u8,
    /// The packet identifier (QoS 1).
    pub packet_id: Option<u16>,
    /// The DUP flag: sent before (QoS 1 only).
    pub dup: bool,
    /// The payload.
    pub payload: &'a [u8],
    /// MQTT 5 Content Type.
    pub content_type: Option<&'a str>,
    /// MQTT 5 Response Topic.
    pub response_topic: Option<&'a str>,
    /// MQTT 5 Correlation Data.
    pub correlation_data: Option<&'a [u8]>,
    /// MQTT 5 Message Expiry Interval, in seconds.
    pub message_expiry: Option<u32>,
}

/// A PUBLISH from the gateway; `v5` adds the properties (3.1.1 has none).
pub fn publish(out: &mut BytesMut, v5: bool, message: &OutgoingPublish<'_>) {
    let mut body = BytesMut::with_capacity(message.topic.len() + message.payload.len() + 32);
    put_string(&mut body, message.topic);
    if let Some(packet_id) = message.packet_id.filter(|_| message.qos > 0) {
        body.put_u16(packet_id);
    }
    if v5 {
        let mut props = BytesMut::new();
        if let Some(seconds) = message.message_expiry {
            props.put_u8(PropertyId::MessageExpiryInterval.id());
            props.put_u32(seconds);
        }
        if let Some(content_type) = message.content_type {
            props.put_u8(PropertyId::ContentType.id());
            put_string(&mut props, content_type);
        }
        if let Some(topic) = message.response_topic {
            props.put_u8(PropertyId::ResponseTopic.id());
            put_string(&mut props, topic);
        }
        if let Some(data) = message.correlation_data {
            props.put_u8(PropertyId::CorrelationData.id());
            put_binary(&mut props, data);
        }
        put_varint(&mut body, props.len());
        body.put_slice(&props);
    }
    body.put_slice(message.payload);
    let dup = u8::from(message.dup && message.qos > 0) << 3;
    out.put_u8(PacketType::Publish.with_flags(dup | (message.qos.min(1) << 1)));
    put_varint(out, body.len());
    out.put_slice(&body);
}

/// A UTF-8 string, length-prefixed (callers pass strings under 64 KiB: topics, names).
fn put_string(out: &mut BytesMut, text: &str) {
    put_binary(out, text.as_bytes());
}

/// Binary data, length-prefixed, cut at 64 KiB (callers pass short ids and names).
fn put_binary(out: &mut BytesMut, data: &[u8]) {
    let data = &data[..data.len().min(usize::from(u16::MAX))];
    out.put_u16(data.len() as u16);
    out.put_slice(data);
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
            session_present: false,
            session_expiry_interval: None,
            wildcard_subscriptions: false,
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
    fn a_resumed_session_connack_says_so_with_the_expiry_the_gateway_holds() {
        let mut out = BytesMut::new();
        let limits = ServerLimits {
            receive_maximum: 10,
            maximum_packet_size: 0x0001_0000,
            assigned_client_id: None,
            server_keep_alive: None,
            session_present: true,
            session_expiry_interval: Some(86_400),
            wildcard_subscriptions: true,
        };
        connack_accepted(&mut out, true, &limits);
        #[rustfmt::skip]
        let expected = [
            0x20, 24, 1, 0, 21,
            0x21, 0, 10,
            0x25, 0,
            0x27, 0, 1, 0, 0,
            0x28, 1, 0x29, 0, 0x2A, 0,
            0x11, 0, 1, 0x51, 0x80, // session expiry interval 86400
        ];
        assert_eq!(&out[..], &expected);
        out.clear();
        connack_accepted(&mut out, false, &limits);
        assert_eq!(&out[..], &[0x20, 2, 1, 0]);
    }

    #[test]
    fn suback_and_unsuback_carry_one_code_per_filter() {
        let mut out = BytesMut::new();
        suback(&mut out, true, 9, &[0x01, 0x87]);
        assert_eq!(&out[..], &[0x90, 5, 0, 9, 0, 0x01, 0x87]);
        out.clear();
        suback(&mut out, false, 9, &[0x00, 0x80]);
        assert_eq!(&out[..], &[0x90, 4, 0, 9, 0x00, 0x80]);
        out.clear();
        unsuback(&mut out, true, 3, &[true, false]);
        assert_eq!(&out[..], &[0xB0, 5, 0, 3, 0, 0x00, 0x11]);
        out.clear();
        unsuback(&mut out, false, 3, &[true, false]);
        assert_eq!(&out[..], &[0xB0, 2, 0, 3]);
    }

    #[test]
    fn outgoing_publish_has_flags_packet_id_and_v5_properties() {
        let mut out = BytesMut::new();
        let message = OutgoingPublish {
            topic: "c/d",
            qos: 1,
            packet_id: Some(5),
            dup: true,
            payload: b"x",
            content_type: Some("t"),
            response_topic: Some("r"),
            correlation_data: Some(b"id"),
            message_expiry: Some(30),
        };
        publish(&mut out, true, &message);
        #[rustfmt::skip]
        let expected = [
            0x3A, 27, 0, 3, b'c', b'/', b'd', 0, 5, 18,
            0x02, 0, 0, 0, 30,
            0x03, 0, 1, b't',
            0x08, 0, 1, b'r',
            0x09, 0, 2, b'i', b'd',
            b'x',
        ];
        assert_eq!(&out[..], &expected);
        out.clear();
        publish(
            &mut out,
            false,
            &OutgoingPublish {
                qos: 0,
                dup: true,
                ..message
            },
        );
        assert_eq!(&out[..], &[0x30, 6, 0, 3, b'c', b'/', b'd', b'x']);
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
