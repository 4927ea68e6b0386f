//! MQTT 5 properties: every property is type-checked; the gateway keeps the few it uses.

use bytes::{Buf, Bytes};

use super::codec::{
    read_binary, read_string, read_u16, read_u32, read_u8, read_varint, DecodeError,
};
use super::names::{PropertyId, PropertyType};

/// The MQTT 5 properties the gateway acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// Content type (PUBLISH).
    pub content_type: Option<String>,
    /// Topic alias (PUBLISH); refused, as the gateway advertises no aliases.
    pub topic_alias: Option<u16>,
    /// Authentication method (CONNECT); enhanced authentication is not supported.
    pub auth_method: Option<String>,
    /// The largest packet the client accepts (CONNECT).
    pub maximum_packet_size: Option<u32>,
}

/// Reads a property block (length-prefixed) from `body`.
pub fn read_properties(body: &mut Bytes) -> Result<Properties, DecodeError> {
    let len = read_varint(body)? as usize;
    if body.remaining() < len {
        return Err(DecodeError::Malformed("properties beyond the packet"));
    }
    let mut block = body.split_to(len);
    let mut properties = Properties::default();
    while block.has_remaining() {
        let id = PropertyId::from_id(read_varint(&mut block)?)
            .ok_or(DecodeError::Malformed("unknown property"))?;
        match id {
            PropertyId::TopicAlias => properties.topic_alias = Some(read_u16(&mut block)?),
            PropertyId::MaximumPacketSize => {
                properties.maximum_packet_size = Some(read_u32(&mut block)?)
            }
            PropertyId::ContentType => properties.content_type = Some(read_string(&mut block)?),
            PropertyId::AuthenticationMethod => {
                properties.auth_method = Some(read_string(&mut block)?)
            }
            other => skip_value(&mut block, other.value_type())?,
        }
    }
    Ok(properties)
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
