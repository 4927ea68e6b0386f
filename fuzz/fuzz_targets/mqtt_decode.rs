//! The MQTT decoder on arbitrary bytes from a device, as MQTT 3.1.1 and as MQTT 5: it returns
//! a packet, asks for more bytes or refuses, never panics, never reads past what it was
//! given, and never lets a packet over the size limit through.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tributary_gateway::mqtt::codec::decode;

const MAX_PACKET: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let v5 = mode & 1 == 1;
    let mut buffer = BytesMut::from(stream);
    loop {
        let before = buffer.len();
        match decode(&mut buffer, v5, MAX_PACKET) {
            Ok(Some(_packet)) => {
                let consumed = before - buffer.len();
                assert!(consumed > 0, "a decoded packet consumed no bytes");
                assert!(
                    consumed <= MAX_PACKET,
                    "a {consumed}-byte packet passed the limit"
                );
            }
            Ok(None) => {
                assert_eq!(buffer.len(), before, "an incomplete packet consumed bytes");
                break;
            }
            Err(_) => break,
        }
    }
});
