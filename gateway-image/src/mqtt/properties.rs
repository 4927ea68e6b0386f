//! MQTT 5 properties: each is checked against the packet it arrived in (MQTT 5.0 §2.2.2
//! and the property list of each packet in §3): a property that packet may not carry is a
//! Malformed Packet, one given twice that may appear once, or an out-of-range value, a
//! Protocol Error. The gateway keeps the properties it acts on or passes on.

use bytes::{Buf, Bytes};

use super::codec::{
    read_binary, read_string, read_u16, read_u32, read_u8, read_varint, DecodeError,
};
use super::names::{PropertyId, PropertyType};
use crate::topics::validate_topic_name;

/// The packet (or part of one) a property block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    /// CONNECT (§3.1.2.11).
    Connect,
    /// A CONNECT's will properties (§3.1.3.2).
    Will,
    /// PUBLISH from a client (§3.3.2.3).
    Publish,
    /// PUBACK, PUBREC, PUBREL or PUBCOMP (§3.4.2.2 to §3.7.2.2).
    Ack,
    /// SUBSCRIBE (§3.8.2.1).
    Subscribe,
    /// UNSUBSCRIBE (§3.10.2.1).
    Unsubscribe,
    /// DISCONNECT from a client (§3.14.2.2).
    Disconnect,
}

impl PropertyContext {
    /// Whether `id` may appear in this packet at all.
    fn allows(self, id: PropertyId) -> bool {
        use PropertyId::*;
        match self {
            PropertyContext::Connect => matches!(
                id,
                SessionExpiryInterval
                    | ReceiveMaximum
                    | MaximumPacketSize
                    | TopicAliasMaximum
                    | RequestResponseInformation
                    | RequestProblemInformation
                    | UserProperty
                    | AuthenticationMethod
                    | AuthenticationData
            ),
            PropertyContext::Will => matches!(
                id,
                WillDelayInterval
                    | PayloadFormatIndicator
                    | MessageExpiryInterval
                    | ContentType
                    | ResponseTopic
                    | CorrelationData
                    | UserProperty
            ),
            // Subscription Identifier belongs to PUBLISH too, but only server to client:
            // checked in `check_value`.
            PropertyContext::Publish => matches!(
                id,
                PayloadFormatIndicator
                    | MessageExpiryInterval
                    | TopicAlias
                    | ResponseTopic
                    | CorrelationData
                    | UserProperty
                    | SubscriptionIdentifier
                    | ContentType
            ),
            PropertyContext::Ack => matches!(id, ReasonString | UserProperty),
            PropertyContext::Unsubscribe => id == UserProperty,
            PropertyContext::Subscribe => matches!(id, SubscriptionIdentifier | UserProperty),
            PropertyContext::Disconnect => matches!(
                id,
                SessionExpiryInterval | ReasonString | UserProperty | ServerReference
            ),
        }
    }
}

/// The MQTT 5 properties the gateway acts on or passes on in the envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Payload Format Indicator 1: the payload claims to be UTF-8 text (PUBLISH, will).
    pub payload_is_utf8: bool,
    /// Content type (PUBLISH, will).
    pub content_type: Option<String>,
    /// Response topic (PUBLISH, will), a valid topic name.
    pub response_topic: Option<String>,
    /// Correlation data (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// User properties in the order sent (every packet).
    pub user_properties: Vec<(String, String)>,
    /// Topic alias (PUBLISH); refused, as the gateway advertises no aliases.
    pub topic_alias: Option<u16>,
    /// Authentication method (CONNECT); enhanced authentication is not supported.
    pub auth_method: Option<String>,
    /// The largest packet the client accepts (CONNECT).
    pub maximum_packet_size: Option<u32>,
    /// Session Expiry Interval (CONNECT, DISCONNECT): a non-zero one keeps the session's
    /// commands queued after the connection closes.
    pub session_expiry_interval: Option<u32>,
    /// Receive Maximum (CONNECT): most QoS 1 and 2 messages the client takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// Subscription Identifier (SUBSCRIBE).
    pub subscription_identifier: Option<u32>,
}

impl Properties {
    /// Whether the payload is refused as "payload format invalid": it claims to be UTF-8
    /// (Payload Format Indicator 1) and is not.
    pub fn payload_format_invalid(&self, payload: &[u8]) -> bool {
        self.payload_is_utf8 && std::str::from_utf8(payload).is_err()
    }
}

/// Reads the property block (length-prefixed) of `context` from `body`.
pub fn read_properties(
    body: &mut Bytes,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    let len = read_varint(body)? as usize;
    if body.remaining() < len {
        return Err(DecodeError::Malformed("properties beyond the packet"));
    }
    let mut block = body.split_to(len);
    let mut properties = Properties::default();
    // Every identifier is below 64: one bit each for "seen already".
    let mut seen: u64 = 0;
    while block.has_remaining() {
        let id = PropertyId::from_id(read_varint(&mut block)?)
            .ok_or(DecodeError::Malformed("unknown property"))?;
        if !context.allows(id) {
            return Err(DecodeError::PropertyNotAllowed(id));
        }
        let bit = 1u64 << id.id();
        if seen & bit != 0 && id != PropertyId::UserProperty {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= bit;
        read_value(&mut block, id, context, &mut properties)?;
    }
    Ok(properties)
}

/// Reads one property's value, checks its range and keeps it when the gateway uses it.
fn read_value(
    block: &mut Bytes,
    id: PropertyId,
    context: PropertyContext,
    properties: &mut Properties,
) -> Result<(), DecodeError> {
    let invalid = Err(DecodeError::InvalidPropertyValue(id));
    match id {
        PropertyId::PayloadFormatIndicator => match read_u8(block)? {
            0 => {}
            1 => properties.payload_is_utf8 = true,
            _ => return invalid,
        },
        PropertyId::RequestProblemInformation | PropertyId::RequestResponseInformation => {
            if read_u8(block)? > 1 {
                return invalid;
            }
        }
        PropertyId::ReceiveMaximum => match read_u16(block)? {
            0 => return invalid,
            maximum => properties.receive_maximum = Some(maximum),
        },
        PropertyId::MaximumPacketSize => match read_u32(block)? {
            0 => return invalid,
            size => properties.maximum_packet_size = Some(size),
        },
        PropertyId::TopicAlias => match read_u16(block)? {
            0 => return invalid,
            alias => properties.topic_alias = Some(alias),
        },
        PropertyId::SubscriptionIdentifier => {
            // A client's PUBLISH must not carry one [MQTT-3.3.4-6]; 0 is never valid.
            match read_varint(block)? {
                0 => return invalid,
                _ if context == PropertyContext::Publish => return invalid,
                identifier => properties.subscription_identifier = Some(identifier),
            }
        }
        PropertyId::ContentType => properties.content_type = Some(read_string(block)?),
        PropertyId::ResponseTopic => {
            let topic = read_string(block)?;
            if validate_topic_name(&topic).is_err() {
                return invalid;
            }
            properties.response_topic = Some(topic);
        }
        PropertyId::CorrelationData => properties.correlation_data = Some(read_binary(block)?),
        PropertyId::UserProperty => {
            let name = read_string(block)?;
            let value = read_string(block)?;
            properties.user_properties.push((name, value));
        }
        PropertyId::AuthenticationMethod => properties.auth_method = Some(read_string(block)?),
        PropertyId::SessionExpiryInterval => {
            properties.session_expiry_interval = Some(read_u32(block)?)
        }
        other => skip_value(block, other.value_type())?,
    }
    Ok(())
}

/// Reads and discards one value of type `kind` (still checked: strings must be UTF-8).
fn skip_value(block: &mut Bytes, kind: PropertyType) -> Result<(), DecodeError> {
    match kind {
        PropertyType::Byte => {
            read_u8(block)?;
        }
        PropertyType::TwoByteInteger => {
            read_u16(block)?;
        }
        PropertyType::FourByteInteger => {
            read_u32(block)?;
        }
        PropertyType::VariableByteInteger => {
            read_varint(block)?;
        }
        PropertyType::Utf8String => {
            read_string(block)?;
        }
        PropertyType::BinaryData => {
            read_binary(block)?;
        }
        PropertyType::Utf8StringPair => {
            read_string(block)?;
            read_string(block)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "properties_tests.rs"]
mod tests;
