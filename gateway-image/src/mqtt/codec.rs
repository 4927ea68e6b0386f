//! MQTT 3.1.1 and 5.0 packet decoding for the packets a client may send.
//!
//! Hostile input is the normal case here: every length is checked against the data and the
//! configured maximum before anything is allocated, and strings are validated UTF-8 without
//! U+0000. Packets only a server may send are an error.

use bytes::{Buf, Bytes, BytesMut};

use super::names::{PacketType, PropertyId, ReasonCode};
use super::properties::{read_properties, Properties, PropertyContext};
use crate::topics::{validate_topic_filter, validate_topic_name};

/// Why a packet could not be decoded. Each closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Remaining length longer than 4 bytes.
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// The packet is larger than the gateway accepts.
    #[error("packet of {0} bytes exceeds the limit")]
    PacketTooLarge(usize),
    /// A fixed-header flag that must be a fixed value was not.
    #[error("reserved flags set on packet type {0}")]
    ReservedFlags(u8),
    /// Packet type 0 or 15 (AUTH in 3.1.1).
    #[error("unknown packet type {0}")]
    UnknownPacketType(u8),
    /// CONNACK, SUBACK, UNSUBACK or PINGRESP from a client.
    #[error("server-only packet type {0} from a client")]
    ServerOnlyPacket(u8),
    /// A field runs past the end of the packet, or bytes are left over.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A string that is not valid UTF-8 or contains U+0000.
    #[error("invalid string")]
    InvalidString,
    /// A PUBLISH topic that is empty or contains wildcards.
    #[error("invalid topic name")]
    InvalidTopic,
    /// A SUBSCRIBE/UNSUBSCRIBE topic filter that is malformed.
    #[error("invalid topic filter")]
    InvalidFilter,
    /// Packet identifier 0 where one is required.
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// A CONNECT protocol name or level the gateway does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    /// A v5 topic alias (the gateway advertises a topic alias maximum of 0).
    #[error("topic alias not allowed")]
    TopicAlias,
    /// A v5 property the packet may not carry (a Malformed Packet, §2.2.2.2).
    #[error("property {0:?} not allowed in this packet")]
    PropertyNotAllowed(PropertyId),
    /// A v5 property that may appear once appeared again (a Protocol Error).
    #[error("property {0:?} more than once")]
    DuplicateProperty(PropertyId),
    /// A v5 property value out of its range (a Protocol Error).
    #[error("invalid value of property {0:?}")]
    InvalidPropertyValue(PropertyId),
    /// A malformed MQTT 5 CONNECT: answered with a CONNACK carrying the reason code.
    #[error("invalid MQTT 5 CONNECT: {0}")]
    Connect5(Box<DecodeError>),
}

impl DecodeError {
    /// The MQTT 5 DISCONNECT reason code for this error.
    pub fn v5_reason(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge(_) => ReasonCode::PacketTooLarge,
            DecodeError::InvalidTopic => ReasonCode::TopicNameInvalid,
            DecodeError::TopicAlias => ReasonCode::TopicAliasInvalid,
            DecodeError::ServerOnlyPacket(_)
            | DecodeError::UnsupportedProtocol(_)
            | DecodeError::DuplicateProperty(_)
            | DecodeError::InvalidPropertyValue(_) => ReasonCode::ProtocolError,
            DecodeError::Connect5(inner) => inner.v5_reason(),
            _ => ReasonCode::MalformedPacket,
        }
    }
}

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// True for MQTT 5.0, false for 3.1.1.
    pub v5: bool,
    /// Clean session / clean start.
    pub clean_start: bool,
    /// Keep alive in seconds (0 = off).
    pub keep_alive: u16,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// The user name, if present.
    pub username: Option<String>,
    /// The password, if present.
    pub password: Option<Bytes>,
    /// The will message, published if the connection ends without a clean DISCONNECT.
    pub will: Option<Will>,
    /// v5 properties.
    pub properties: Properties,
}

/// A CONNECT's will message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The topic name, validated.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The will retain flag (the gateway retains nothing: MQTT 5 refuses it at CONNECT,
    /// 3.1.1 ignores it as it does on PUBLISH).
    pub retain: bool,
    /// v5 will properties.
    pub properties: Properties,
}

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Quality of service: 0, 1 or 2.
    pub qos: u8,
    /// The retain flag (the gateway does not retain; the flag is ignored).
    pub retain: bool,
    /// The topic name, validated.
    pub topic: String,
    /// The packet identifier (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// The DUP flag: the client may have sent this packet before.
    pub dup: bool,
    /// The payload.
    pub payload: Bytes,
    /// v5 properties.
    pub properties: Properties,
}

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// The filters with their requested QoS, in order.
    pub filters: Vec<(String, u8)>,
    /// Whether it carried an MQTT 5 Subscription Identifier (not supported: its filters
    /// are refused).
    pub subscription_identifier: bool,
}

/// The packets a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH (boxed, like CONNECT: its properties make it the largest packet).
    Publish(Box<Publish>),
    /// PUBACK, PUBREC, PUBREL or PUBCOMP: PUBREL ends a QoS 2 publish from the client;
    /// the others would acknowledge server-sent messages.
    Ack {
        /// PUBACK, PUBREC, PUBREL or PUBCOMP.
        kind: PacketType,
        /// Packet identifier.
        packet_id: u16,
    },
    /// SUBSCRIBE.
    Subscribe(Box<Subscribe>),
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet identifier.
        packet_id: u16,
        /// The topic filters, validated.
        filters: Vec<String>,
    },
    /// PINGREQ.
    Pingreq,
    /// DISCONNECT with its reason code (always normal disconnection in 3.1.1; "disconnect
    /// with will message" asks for the will).
    Disconnect {
        /// Reason code.
        reason: u8,
        /// The MQTT 5 Session Expiry Interval it sets, if any (a non-zero one is a
        /// Protocol Error when the CONNECT's was zero [MQTT-3.14.2-2]).
        session_expiry: Option<u32>,
    },
    /// AUTH (MQTT 5).
    Auth,
}

/// Decodes one packet from the front of `buffer`, or returns `Ok(None)` when more bytes are
/// needed. `v5` selects MQTT 5 parsing once the CONNECT told the version; `max_packet` caps
/// the whole packet's size.
pub fn decode(
    buffer: &mut BytesMut,
    v5: bool,
    max_packet: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((header_len, remaining)) = read_fixed_header(buffer)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > max_packet {
        return Err(DecodeError::PacketTooLarge(total));
    }
    if buffer.len() < total {
        buffer.reserve(total - buffer.len());
        return Ok(None);
    }
    let first = buffer[0];
    let mut packet = buffer.split_to(total).freeze();
    packet.advance(header_len);
    decode_body(first >> 4, first & 0x0F, packet, v5).map(Some)
}

/// Reads the fixed header: (header length, remaining length), or `None` if incomplete.
fn read_fixed_header(buffer: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    for index in 0..4 {
        let Some(&byte) = buffer.get(1 + index) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + index, remaining)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

fn decode_body(number: u8, flags: u8, mut body: Bytes, v5: bool) -> Result<Packet, DecodeError> {
    let kind = match PacketType::from_number(number) {
        Some(PacketType::Auth) if !v5 => return Err(DecodeError::UnknownPacketType(number)),
        Some(kind) if kind.is_server_only() => return Err(DecodeError::ServerOnlyPacket(number)),
        Some(kind) => kind,
        None => return Err(DecodeError::UnknownPacketType(number)),
    };
    if kind != PacketType::Publish && flags != kind.required_flags() {
        return Err(DecodeError::ReservedFlags(number));
    }
    match kind {
        PacketType::Connect => decode_connect(&mut body).map(|c| Packet::Connect(Box::new(c))),
        PacketType::Publish => {
            decode_publish(flags, body, v5).map(|p| Packet::Publish(Box::new(p)))
        }
        PacketType::Puback | PacketType::Pubrec | PacketType::Pubrel | PacketType::Pubcomp => {
            let packet_id = read_u16(&mut body)?;
            // v5 may append a reason code and properties; they carry nothing we act on
            // but are checked.
            if v5 && body.has_remaining() {
                read_u8(&mut body)?;
                if body.has_remaining() {
                    read_properties(&mut body, PropertyContext::Ack)?;
                }
            }
            expect_empty(&body)?;
            Ok(Packet::Ack { kind, packet_id })
        }
        PacketType::Subscribe | PacketType::Unsubscribe => {
            decode_subscription(kind == PacketType::Subscribe, body, v5)
        }
        PacketType::Pingreq => {
            expect_empty(&body)?;
            Ok(Packet::Pingreq)
        }
        PacketType::Disconnect => {
            let mut reason = ReasonCode::NORMAL_DISCONNECTION.code();
            let mut properties = Properties::default();
            if v5 {
                if body.has_remaining() {
                    reason = read_u8(&mut body)?;
                }
                if body.has_remaining() {
                    properties = read_properties(&mut body, PropertyContext::Disconnect)?;
                }
            }
            expect_empty(&body)?;
            Ok(Packet::Disconnect {
                reason,
                session_expiry: properties.session_expiry_interval,
            })
        }
        PacketType::Auth => Ok(Packet::Auth),
        // Refused above as server-only.
        PacketType::Connack | PacketType::Suback | PacketType::Unsuback | PacketType::Pingresp => {
            Err(DecodeError::ServerOnlyPacket(number))
        }
    }
}

/// SUBSCRIBE (`subscribe`) or UNSUBSCRIBE: every filter is validated and kept.
fn decode_subscription(subscribe: bool, mut body: Bytes, v5: bool) -> Result<Packet, DecodeError> {
    let packet_id = read_packet_id(&mut body)?;
    let mut properties = Properties::default();
    if v5 {
        let context = if subscribe {
            PropertyContext::Subscribe
        } else {
            PropertyContext::Unsubscribe
        };
        properties = read_properties(&mut body, context)?;
    }
    let mut filters = Vec::new();
    while body.has_remaining() {
        let filter = read_string(&mut body)?;
        validate_topic_filter(&filter).map_err(|_| DecodeError::InvalidFilter)?;
        let qos = if subscribe {
            subscription_qos(read_u8(&mut body)?, v5)?
        } else {
            0
        };
        filters.push((filter, qos));
    }
    if filters.is_empty() {
        return Err(DecodeError::Malformed("no topic filters"));
    }
    Ok(if subscribe {
        Packet::Subscribe(Box::new(Subscribe {
            packet_id,
            filters,
            subscription_identifier: properties.subscription_identifier.is_some(),
        }))
    } else {
        Packet::Unsubscribe {
            packet_id,
            filters: filters.into_iter().map(|(filter, _)| filter).collect(),
        }
    })
}

/// The requested QoS of a subscription options byte (§3.8.3.1); reserved bits, QoS 3 and
/// (MQTT 5) Retain Handling 3 are malformed.
fn subscription_qos(options: u8, v5: bool) -> Result<u8, DecodeError> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    let retain_handling = (options >> 4) & 0b11;
    if options & reserved != 0 || options & 0b11 == 3 || retain_handling == 3 {
        return Err(DecodeError::Malformed("subscription options"));
    }
    Ok(options & 0b11)
}

/// The CONNECT flags byte (§3.1.2.3).
mod connect_flags {
    pub const RESERVED: u8 = 0x01;
    pub const CLEAN_START: u8 = 0x02;
    pub const WILL: u8 = 0x04;
    pub const WILL_QOS: u8 = 0x18;
    pub const WILL_RETAIN: u8 = 0x20;
    pub const PASSWORD: u8 = 0x40;
    pub const USER_NAME: u8 = 0x80;
}

/// The PUBLISH fixed-header flags (§3.3.1).
mod publish_flags {
    pub const RETAIN: u8 = 0x01;
    pub const QOS: u8 = 0x06;
    pub const DUP: u8 = 0x08;
}

fn decode_connect(body: &mut Bytes) -> Result<Connect, DecodeError> {
    let protocol = read_string(body)?;
    let level = read_u8(body)?;
    let v5 = match (protocol.as_str(), level) {
        ("MQTT", 4) => false,
        ("MQTT", 5) => true,
        ("MQTT" | "MQIsdp", other) => return Err(DecodeError::UnsupportedProtocol(other)),
        _ => return Err(DecodeError::Malformed("protocol name")),
    };
    // An MQTT 5 client learns why its CONNECT was refused (§4.13); 3.1.1 is just closed.
    decode_connect_after_level(body, v5).map_err(|error| {
        if v5 {
            DecodeError::Connect5(Box::new(error))
        } else {
            error
        }
    })
}

fn decode_connect_after_level(body: &mut Bytes, v5: bool) -> Result<Connect, DecodeError> {
    let flags = read_u8(body)?;
    if flags & connect_flags::RESERVED != 0 {
        return Err(DecodeError::Malformed("reserved connect flag"));
    }
    let has_will = flags & connect_flags::WILL != 0;
    let will_qos = (flags & connect_flags::WILL_QOS) >> 3;
    let will_retain = flags & connect_flags::WILL_RETAIN != 0;
    if will_qos == 3 || (!has_will && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::Malformed("will flags"));
    }
    let has_password = flags & connect_flags::PASSWORD != 0;
    let has_username = flags & connect_flags::USER_NAME != 0;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = read_u16(body)?;
    let properties = if v5 {
        read_properties(body, PropertyContext::Connect)?
    } else {
        Properties::default()
    };
    let client_id = read_string(body)?;
    let will = if has_will {
        Some(read_will(body, v5, will_retain)?)
    } else {
        None
    };
    let username = if has_username {
        Some(read_string(body)?)
    } else {
        None
    };
    let password = if has_password {
        Some(read_binary(body)?)
    } else {
        None
    };
    expect_empty(body)?;
    Ok(Connect {
        v5,
        clean_start: flags & connect_flags::CLEAN_START != 0,
        keep_alive,
        client_id,
        username,
        password,
        will,
        properties,
    })
}

fn read_will(body: &mut Bytes, v5: bool, retain: bool) -> Result<Will, DecodeError> {
    let properties = if v5 {
        read_properties(body, PropertyContext::Will)?
    } else {
        Properties::default()
    };
    let topic = read_string(body)?;
    validate_topic_name(&topic).map_err(|_| DecodeError::InvalidTopic)?;
    let payload = read_binary(body)?;
    Ok(Will {
        topic,
        payload,
        retain,
        properties,
    })
}

fn decode_publish(flags: u8, mut body: Bytes, v5: bool) -> Result<Publish, DecodeError> {
    let qos = (flags & publish_flags::QOS) >> 1;
    if qos == 3 {
        return Err(DecodeError::Malformed("QoS 3"));
    }
    if qos == 0 && flags & publish_flags::DUP != 0 {
        return Err(DecodeError::Malformed("DUP set at QoS 0"));
    }
    let topic = read_string(&mut body)?;
    let packet_id = if qos > 0 {
        Some(read_packet_id(&mut body)?)
    } else {
        None
    };
    let properties = if v5 {
        read_properties(&mut body, PropertyContext::Publish)?
    } else {
        Properties::default()
    };
    if properties.topic_alias.is_some() {
        return Err(DecodeError::TopicAlias);
    }
    validate_topic_name(&topic).map_err(|_| DecodeError::InvalidTopic)?;
    Ok(Publish {
        qos,
        dup: flags & publish_flags::DUP != 0,
        retain: flags & publish_flags::RETAIN != 0,
        topic,
        packet_id,
        payload: body,
        properties,
    })
}

fn expect_empty(body: &Bytes) -> Result<(), DecodeError> {
    if body.has_remaining() {
        Err(DecodeError::Malformed("trailing bytes"))
    } else {
        Ok(())
    }
}

/// Reads one byte.
pub(crate) fn read_u8(body: &mut Bytes) -> Result<u8, DecodeError> {
    if body.remaining() < 1 {
        return Err(DecodeError::Malformed("truncated byte"));
    }
    Ok(body.get_u8())
}

/// Reads a big-endian u16.
pub(crate) fn read_u16(body: &mut Bytes) -> Result<u16, DecodeError> {
    if body.remaining() < 2 {
        return Err(DecodeError::Malformed("truncated two-byte integer"));
    }
    Ok(body.get_u16())
}

/// Reads a big-endian u32.
pub(crate) fn read_u32(body: &mut Bytes) -> Result<u32, DecodeError> {
    if body.remaining() < 4 {
        return Err(DecodeError::Malformed("truncated four-byte integer"));
    }
    Ok(body.get_u32())
}

fn read_packet_id(body: &mut Bytes) -> Result<u16, DecodeError> {
    match read_u16(body)? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

/// Reads a variable byte integer (at most 4 bytes).
pub(crate) fn read_varint(body: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value: u32 = 0;
    for index in 0..4 {
        let byte = read_u8(body)?;
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Malformed("variable byte integer"))
}

/// Reads length-prefixed binary data.
pub(crate) fn read_binary(body: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(read_u16(body)?);
    if body.remaining() < len {
        return Err(DecodeError::Malformed("length beyond the packet"));
    }
    Ok(body.split_to(len))
}

/// Reads a length-prefixed UTF-8 string without U+0000.
pub(crate) fn read_string(body: &mut Bytes) -> Result<String, DecodeError> {
    let raw = read_binary(body)?;
    let text = std::str::from_utf8(&raw).map_err(|_| DecodeError::InvalidString)?;
    if text.contains('\0') {
        return Err(DecodeError::InvalidString);
    }
    Ok(text.to_owned())
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
