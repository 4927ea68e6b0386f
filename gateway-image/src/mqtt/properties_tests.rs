use super::*;
use crate::mqtt::names::ReasonCode;

fn read(block: &[u8], context: PropertyContext) -> Result<Properties, DecodeError> {
    let mut body = vec![block.len() as u8];
    body.extend_from_slice(block);
    read_properties(&mut Bytes::from(body), context)
}

#[test]
fn a_property_that_may_appear_once_twice_is_a_protocol_error() {
    let twice = [0x21, 0, 5, 0x21, 0, 5];
    assert_eq!(
        read(&twice, PropertyContext::Connect),
        Err(DecodeError::DuplicateProperty(PropertyId::ReceiveMaximum))
    );
    let content_type_twice = [0x03, 0, 1, b'a', 0x03, 0, 1, b'b'];
    assert_eq!(
        read(&content_type_twice, PropertyContext::Publish),
        Err(DecodeError::DuplicateProperty(PropertyId::ContentType))
    );
}

#[test]
fn user_properties_may_repeat_and_keep_their_order() {
    let block = [0x26, 0, 1, b'k', 0, 1, b'1', 0x26, 0, 1, b'k', 0, 1, b'2'];
    let properties = read(&block, PropertyContext::Publish).expect("valid");
    assert_eq!(
        properties.user_properties,
        vec![("k".into(), "1".into()), ("k".into(), "2".into())]
    );
}

#[test]
fn a_property_the_packet_may_not_carry_is_malformed() {
    // Receive Maximum belongs to CONNECT, not PUBLISH; Topic Alias not to a will;
    // Assigned Client Identifier only to CONNACK.
    let cases = [
        (
            vec![0x21, 0, 5],
            PropertyContext::Publish,
            PropertyId::ReceiveMaximum,
        ),
        (
            vec![0x23, 0, 1],
            PropertyContext::Will,
            PropertyId::TopicAlias,
        ),
        (
            vec![0x12, 0, 1, b'c'],
            PropertyContext::Connect,
            PropertyId::AssignedClientIdentifier,
        ),
        (
            vec![0x03, 0, 0],
            PropertyContext::Disconnect,
            PropertyId::ContentType,
        ),
    ];
    for (block, context, id) in cases {
        assert_eq!(
            read(&block, context),
            Err(DecodeError::PropertyNotAllowed(id)),
            "{id:?} in {context:?}"
        );
    }
}

#[test]
fn out_of_range_values_are_protocol_errors() {
    let cases = [
        (
            vec![0x21, 0, 0],
            PropertyContext::Connect,
            PropertyId::ReceiveMaximum,
        ),
        (
            vec![0x27, 0, 0, 0, 0],
            PropertyContext::Connect,
            PropertyId::MaximumPacketSize,
        ),
        (
            vec![0x17, 2],
            PropertyContext::Connect,
            PropertyId::RequestProblemInformation,
        ),
        (
            vec![0x19, 2],
            PropertyContext::Connect,
            PropertyId::RequestResponseInformation,
        ),
        (
            vec![0x01, 2],
            PropertyContext::Publish,
            PropertyId::PayloadFormatIndicator,
        ),
        (
            vec![0x01, 7],
            PropertyContext::Will,
            PropertyId::PayloadFormatIndicator,
        ),
        (
            vec![0x23, 0, 0],
            PropertyContext::Publish,
            PropertyId::TopicAlias,
        ),
        (
            vec![0x0B, 1],
            PropertyContext::Publish,
            PropertyId::SubscriptionIdentifier,
        ),
        (
            vec![0x0B, 0],
            PropertyContext::Subscribe,
            PropertyId::SubscriptionIdentifier,
        ),
        (
            vec![0x08, 0, 1, b'#'],
            PropertyContext::Publish,
            PropertyId::ResponseTopic,
        ),
    ];
    for (block, context, id) in cases {
        let error = read(&block, context).expect_err("refused");
        assert_eq!(error, DecodeError::InvalidPropertyValue(id), "{id:?}");
        assert_eq!(error.v5_reason(), ReasonCode::ProtocolError);
    }
    assert_eq!(
        DecodeError::PropertyNotAllowed(PropertyId::TopicAlias).v5_reason(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn payload_format_indicator_one_requires_utf8() {
    let properties = read(&[0x01, 1], PropertyContext::Publish).expect("valid");
    assert!(properties.payload_format_invalid(&[0xC3, 0x28]));
    assert!(!properties.payload_format_invalid("grüße".as_bytes()));
    let unspecified = read(&[0x01, 0], PropertyContext::Publish).expect("valid");
    assert!(!unspecified.payload_format_invalid(&[0xC3, 0x28]));
}

#[test]
fn request_response_properties_are_kept() {
    let block = [
        0x08, 0, 3, b'r', b'/', b'1', // response topic
        0x09, 0, 2, 0, 0xFF, // correlation data
        0x02, 0, 0, 0, 60, // message expiry: checked, not kept
    ];
    let properties = read(&block, PropertyContext::Publish).expect("valid");
    assert_eq!(properties.response_topic.as_deref(), Some("r/1"));
    assert_eq!(properties.correlation_data.as_deref(), Some(&[0, 0xFF][..]));
}
