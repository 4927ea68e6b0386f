//! MQTT 5 properties: every property is type-checked; the gateway keeps the few it uses.

use bytes::{Buf, Bytes};

use super::codec::{
    read_binary, read_string, read_u16, read_u32, read_u8, read_varint, DecodeError,
};

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
        let id = read_varint(&mut block)?;
        match id {
            // Byte properties.
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                read_u8(&mut block)?;
            }
            0x23 => properties.topic_alias = Some(read_u16(&mut block)?),
            // Two-byte integers.
            0x13 | 0x21 | 0x22 => {
                read_u16(&mut block)?;
            }
            0x27 => properties.maximum_packet_size = Some(read_u32(&mut block)?),
            // Four-byte integers.
            0x02 | 0x11 | 0x18 => {
                read_u32(&mut block)?;
            }
            0x0B => {
                read_varint(&mut block)?;
            }
            0x03 => properties.content_type = Some(read_string(&mut block)?),
            0x15 => properties.auth_method = Some(read_string(&mut block)?),
            0x08 | 0x12 | 0x1A | 0x1C | 0x1F => {
                read_string(&mut block)?;
            }
            0x09 | 0x16 => {
                read_binary(&mut block)?;
            }
            0x26 => {
                read_string(&mut block)?;
                read_string(&mut block)?;
            }
            _ => return Err(DecodeError::Malformed("unknown property")),
        }
    }
    Ok(properties)
}
