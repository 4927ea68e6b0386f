use super::*;

const MAX: usize = 1024;

fn decode_all(bytes: &[u8], v5: bool) -> Result<Option<Packet>, DecodeError> {
    let mut buffer = BytesMut::from(bytes);
    decode(&mut buffer, v5, MAX)
}

fn string(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn connect_body(level: u8, flags: u8, client_id: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&[0, 30]);
    if level == 5 {
        body.push(0);
    }
    body.extend(string(client_id));
    body.extend_from_slice(tail);
    body
}

#[test]
fn v311_connect_with_credentials_decodes() {
    let mut tail = string(b"press-7");
    tail.extend(string(b"secret"));
    let bytes = packet(0x10, &connect_body(4, 0xC2, b"c1", &tail));
    let Some(Packet::Connect(connect)) = decode_all(&bytes, false).expect("valid") else {
        panic!("not a connect");
    };
    assert!(!connect.v5);
    assert_eq!(connect.username.as_deref(), Some("press-7"));
    assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
    assert_eq!(connect.keep_alive, 30);
}

#[test]
fn v5_publish_with_content_type_decodes() {
    let mut body = string(b"devices/a/t");
    body.extend_from_slice(&[0, 9]); // packet id
    let content_type = string(b"application/json");
    body.push((1 + content_type.len()) as u8);
    body.push(0x03);
    body.extend(content_type);
    body.extend_from_slice(b"{}");
    let Some(Packet::Publish(publish)) = decode_all(&packet(0x32, &body), true).expect("ok") else {
        panic!("not a publish");
    };
    assert_eq!(publish.packet_id, Some(9));
    assert_eq!(
        publish.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(&publish.payload[..], b"{}");
}

#[test]
fn will_message_and_disconnect_reason_decode() {
    // v5 CONNECT with a will (flags: user name, will QoS 1, will, clean start).
    let mut tail = vec![4, 0x03, 0, 1, b't']; // will properties: content type "t"
    tail.extend(string(b"devices/press-7/status"));
    tail.extend(string(b"offline"));
    tail.extend(string(b"press-7"));
    let bytes = packet(0x10, &connect_body(5, 0x8E, b"c1", &tail));
    let Some(Packet::Connect(connect)) = decode_all(&bytes, true).expect("valid") else {
        panic!("not a connect");
    };
    let will = connect.will.expect("will");
    assert_eq!(will.topic, "devices/press-7/status");
    assert_eq!(&will.payload[..], b"offline");
    assert_eq!(will.properties.content_type.as_deref(), Some("t"));
    assert_eq!(connect.username.as_deref(), Some("press-7"));
    // A will topic with a wildcard is refused.
    let mut tail = string(b"devices/#");
    tail.extend(string(b"x"));
    let bytes = packet(0x10, &connect_body(4, 0x06, b"c1", &tail));
    assert_eq!(decode_all(&bytes, false), Err(DecodeError::InvalidTopic));
    // DISCONNECT: 3.1.1 has no reason; v5 0x04 asks for the will.
    assert_eq!(
        decode_all(&[0xE0, 0], false),
        Ok(Some(Packet::Disconnect {
            reason: 0,
            session_expiry: None
        }))
    );
    assert_eq!(
        decode_all(&[0xE0, 1, 0x04], true),
        Ok(Some(Packet::Disconnect {
            reason: 0x04,
            session_expiry: None
        }))
    );
}

#[test]
fn qos2_publish_and_pubrel_decode_with_identifier_and_dup_flag() {
    let mut body = string(b"devices/a/t");
    body.extend_from_slice(&[0, 7]);
    body.extend_from_slice(b"{}");
    // 0x3C: PUBLISH, DUP, QoS 2.
    let Some(Packet::Publish(publish)) = decode_all(&packet(0x3C, &body), false).expect("ok")
    else {
        panic!("not a publish");
    };
    assert_eq!(
        (publish.qos, publish.packet_id, publish.dup),
        (2, Some(7), true)
    );
    assert_eq!(
        decode_all(&[0x62, 2, 0, 7], false),
        Ok(Some(Packet::Ack {
            kind: PacketType::Pubrel,
            packet_id: 7
        }))
    );
    // PUBREL must carry flags 0b0010.
    assert_eq!(
        decode_all(&[0x60, 2, 0, 7], false),
        Err(DecodeError::ReservedFlags(6))
    );
}

#[test]
fn incomplete_packets_wait_for_more_bytes() {
    assert_eq!(decode_all(&[0x30], false), Ok(None));
    assert_eq!(decode_all(&[0x30, 0x80], false), Ok(None));
    assert_eq!(decode_all(&[0x30, 10, 0, 1], false), Ok(None));
}

#[test]
fn remaining_length_over_four_bytes_is_malformed() {
    assert_eq!(
        decode_all(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], false),
        Err(DecodeError::MalformedRemainingLength)
    );
}

#[test]
fn oversized_packet_is_refused_before_its_body_arrives() {
    assert_eq!(
        decode_all(&[0x30, 0xFF, 0x7F], false),
        Err(DecodeError::PacketTooLarge(16386))
    );
}

#[test]
fn string_length_beyond_the_packet_is_malformed() {
    assert!(matches!(
        decode_all(&packet(0x30, &[0, 50, b'a']), false),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn hostile_publishes_are_refused_with_the_right_error() {
    let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
        (
            "invalid utf-8",
            packet(0x30, &string(&[0xC3, 0x28])),
            DecodeError::InvalidString,
        ),
        (
            "nul in topic",
            packet(0x30, &string(b"a\0b")),
            DecodeError::InvalidString,
        ),
        (
            "plus wildcard",
            packet(0x30, &string(b"a/+")),
            DecodeError::InvalidTopic,
        ),
        (
            "hash wildcard",
            packet(0x30, &string(b"a/#")),
            DecodeError::InvalidTopic,
        ),
        (
            "empty topic",
            packet(0x30, &string(b"")),
            DecodeError::InvalidTopic,
        ),
        (
            "packet id 0",
            packet(0x32, &[0, 1, b'a', 0, 0]),
            DecodeError::ZeroPacketId,
        ),
        (
            "qos 3",
            packet(0x36, &[0, 1, b'a', 0, 1]),
            DecodeError::Malformed("QoS 3"),
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(decode_all(&bytes, false), Err(expected), "{name}");
    }
}

#[test]
fn server_only_packets_from_a_client_are_refused() {
    for first in [0x20u8, 0x90, 0xB0, 0xD0] {
        assert!(
            matches!(
                decode_all(&[first, 0], false),
                Err(DecodeError::ServerOnlyPacket(_))
            ),
            "{first:#x}"
        );
    }
}

#[test]
fn reserved_flags_are_refused() {
    assert_eq!(
        decode_all(&[0xC1, 0], false),
        Err(DecodeError::ReservedFlags(12))
    );
    assert_eq!(
        decode_all(&packet(0x80, &[0, 1, 0, 1, b'a', 0]), false),
        Err(DecodeError::ReservedFlags(8))
    );
    assert_eq!(
        decode_all(&[0x11, 0], false),
        Err(DecodeError::ReservedFlags(1))
    );
}

#[test]
fn connect_with_reserved_flag_or_unknown_level_is_refused() {
    let reserved = packet(0x10, &connect_body(4, 0x03, b"c", &[]));
    assert!(matches!(
        decode_all(&reserved, false),
        Err(DecodeError::Malformed(_))
    ));
    let level3 = packet(0x10, &connect_body(3, 0x02, b"c", &[]));
    assert_eq!(
        decode_all(&level3, false),
        Err(DecodeError::UnsupportedProtocol(3))
    );
}

#[test]
fn v5_topic_alias_is_refused() {
    let mut body = string(b"a");
    body.extend_from_slice(&[3, 0x23, 0, 1]);
    assert_eq!(
        decode_all(&packet(0x30, &body), true),
        Err(DecodeError::TopicAlias)
    );
}

#[test]
fn subscribe_keeps_its_filters_and_qos() {
    let mut body = vec![0, 5];
    body.extend(string(b"a/#"));
    body.push(1);
    body.extend(string(b"b/+"));
    body.push(0);
    assert_eq!(
        decode_all(&packet(0x82, &body), false),
        Ok(Some(Packet::Subscribe(Box::new(Subscribe {
            packet_id: 5,
            filters: vec![("a/#".into(), 1), ("b/+".into(), 0)],
            subscription_identifier: false,
        }))))
    );
}

#[test]
fn two_packets_in_one_buffer_decode_one_at_a_time() {
    let mut buffer = BytesMut::from(&[0xC0, 0, 0xE0, 0][..]);
    assert_eq!(decode(&mut buffer, false, MAX), Ok(Some(Packet::Pingreq)));
    assert_eq!(
        decode(&mut buffer, false, MAX),
        Ok(Some(Packet::Disconnect {
            reason: 0,
            session_expiry: None
        }))
    );
    assert_eq!(decode(&mut buffer, false, MAX), Ok(None));
}

#[test]
fn invalid_v5_connect_carries_its_reason_for_the_connack() {
    // A will topic with a wildcard, in a v5 CONNECT: wrapped, reason "topic name invalid".
    let mut tail = vec![0]; // no will properties
    tail.extend(string(b"a/#"));
    tail.extend(string(b"{}"));
    let bytes = packet(0x10, &connect_body(5, 0x06, b"c1", &tail));
    let error = decode_all(&bytes, false).expect_err("refused");
    assert_eq!(
        error,
        DecodeError::Connect5(Box::new(DecodeError::InvalidTopic))
    );
    assert_eq!(error.v5_reason(), ReasonCode::TopicNameInvalid);
    // The same in 3.1.1 is not wrapped: the connection is just closed.
    let mut tail = string(b"a/#");
    tail.extend(string(b"{}"));
    let bytes = packet(0x10, &connect_body(4, 0x06, b"c1", &tail));
    assert_eq!(decode_all(&bytes, false), Err(DecodeError::InvalidTopic));
}

#[test]
fn v5_will_keeps_its_retain_flag() {
    let mut tail = vec![0];
    tail.extend(string(b"a/b"));
    tail.extend(string(b"{}"));
    let bytes = packet(0x10, &connect_body(5, 0x26, b"c1", &tail));
    let Some(Packet::Connect(connect)) = decode_all(&bytes, false).expect("valid") else {
        panic!("not a CONNECT");
    };
    assert!(connect.will.expect("will").retain);
}

#[test]
fn v5_pubrel_reason_and_properties_are_checked() {
    // Reason 0 and a reason string: fine.
    let ok = packet(0x62, &[0, 7, 0, 4, 0x1F, 0, 1, b'x']);
    assert!(matches!(
        decode_all(&ok, true),
        Ok(Some(Packet::Ack {
            kind: PacketType::Pubrel,
            packet_id: 7
        }))
    ));
    // A content type does not belong in a PUBREL.
    let bad = packet(0x62, &[0, 7, 0, 3, 0x03, 0, 0]);
    assert_eq!(
        decode_all(&bad, true),
        Err(DecodeError::PropertyNotAllowed(PropertyId::ContentType))
    );
}

#[test]
fn v5_disconnect_tells_whether_it_sets_a_session_expiry() {
    let sets = |seconds: u8| {
        let bytes = [0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, seconds];
        match decode_all(&bytes, true) {
            Ok(Some(Packet::Disconnect { session_expiry, .. })) => {
                session_expiry.is_some_and(|seconds| seconds > 0)
            }
            other => panic!("not a DISCONNECT: {other:?}"),
        }
    };
    assert!(sets(60));
    assert!(!sets(0));
}

#[test]
fn v5_subscribe_tells_its_subscription_identifier_and_unsubscribe_keeps_filters() {
    let mut body = vec![0, 5, 2, 0x0B, 7];
    body.extend(string(b"commands/d1/#"));
    body.push(0b0000_0010); // QoS 2 requested
    let Some(Packet::Subscribe(subscribe)) = decode_all(&packet(0x82, &body), true).expect("valid")
    else {
        panic!("not a SUBSCRIBE");
    };
    assert!(subscribe.subscription_identifier);
    assert_eq!(subscribe.filters, vec![("commands/d1/#".to_owned(), 2)]);
    let mut body = vec![0, 6, 0];
    body.extend(string(b"commands/d1/#"));
    body.extend(string(b"commands/d1/fan/+"));
    assert_eq!(
        decode_all(&packet(0xA2, &body), true),
        Ok(Some(Packet::Unsubscribe {
            packet_id: 6,
            filters: vec!["commands/d1/#".into(), "commands/d1/fan/+".into()],
        }))
    );
}

#[test]
fn subscription_options_with_reserved_bits_or_retain_handling_3_are_malformed() {
    for (v5, options) in [
        (false, 0b0000_0100),
        (true, 0b0011_0000),
        (true, 0b0100_0000),
    ] {
        let mut body = vec![0, 5];
        if v5 {
            body.push(0);
        }
        body.extend(string(b"a/b"));
        body.push(options);
        assert_eq!(
            decode_all(&packet(0x82, &body), v5),
            Err(DecodeError::Malformed("subscription options")),
            "v5 {v5}, options {options:#010b}"
        );
    }
}
