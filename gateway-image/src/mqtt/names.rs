//! The MQTT numbers by name: control packet types, CONNACK return codes (3.1.1), reason
//! codes (5.0) and property identifiers (5.0), as the specifications number them.

/// Control packet types (the high nibble of the fixed header's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client asks to connect.
    Connect = 1,
    /// Server answers CONNECT.
    Connack = 2,
    /// An application message.
    Publish = 3,
    /// QoS 1 acknowledgement.
    Puback = 4,
    /// QoS 2, part 1: received.
    Pubrec = 5,
    /// QoS 2, part 2: release.
    Pubrel = 6,
    /// QoS 2, part 3: complete.
    Pubcomp = 7,
    /// Client subscribes.
    Subscribe = 8,
    /// Server answers SUBSCRIBE.
    Suback = 9,
    /// Client unsubscribes.
    Unsubscribe = 10,
    /// Server answers UNSUBSCRIBE.
    Unsuback = 11,
    /// Keep-alive ping.
    Pingreq = 12,
    /// Answer to a ping.
    Pingresp = 13,
    /// Either side closes.
    Disconnect = 14,
    /// Enhanced authentication exchange (MQTT 5 only).
    Auth = 15,
}

impl PacketType {
    /// The packet type with this number, if any (0 is reserved).
    pub fn from_number(number: u8) -> Option<Self> {
        use PacketType::*;
        Some(match number {
            1 => Connect,
            2 => Connack,
            3 => Publish,
            4 => Puback,
            5 => Pubrec,
            6 => Pubrel,
            7 => Pubcomp,
            8 => Subscribe,
            9 => Suback,
            10 => Unsubscribe,
            11 => Unsuback,
            12 => Pingreq,
            13 => Pingresp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The packet type's number.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The fixed header's first byte: this type with `flags` in the low nibble.
    pub fn with_flags(self, flags: u8) -> u8 {
        (self.number() << 4) | (flags & 0x0F)
    }

    /// The fixed-header flags the specification requires, for packets with fixed flags
    /// (every packet but PUBLISH).
    pub fn required_flags(self) -> u8 {
        match self {
            PacketType::Pubrel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// Whether only a server may send this packet.
    pub fn is_server_only(self) -> bool {
        matches!(
            self,
            PacketType::Connack | PacketType::Suback | PacketType::Unsuback | PacketType::Pingresp
        )
    }
}

/// MQTT 3.1.1 CONNACK return codes (§3.2.2.3).
pub mod connack_v311 {
    /// Connection accepted.
    pub const ACCEPTED: u8 = 0x00;
    /// The server does not support the protocol level the client asked for.
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
    /// The client identifier is not allowed.
    pub const IDENTIFIER_REJECTED: u8 = 0x02;
    /// The MQTT service is unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x03;
    /// The user name or password is malformed or wrong.
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x04;
    /// The client is not authorized to connect.
    pub const NOT_AUTHORIZED: u8 = 0x05;
}

/// MQTT 3.1.1 SUBACK return code for a refused subscription (§3.9.3).
pub const SUBACK_V311_FAILURE: u8 = 0x80;

/// MQTT 5 reason codes (§2.4), each with the packets the gateway uses it in. One number may
/// carry several names in the specification (0x00 is Success, Normal disconnection and
/// Granted QoS 0); the other names are associated constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    /// CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH: success.
    Success = 0x00,
    /// SUBACK: granted QoS 1.
    GrantedQos1 = 0x01,
    /// DISCONNECT from the client: close and publish the will message.
    DisconnectWithWillMessage = 0x04,
    /// PUBACK, PUBREC: accepted, but nobody receives it (a response to an unknown or
    /// expired command).
    NoMatchingSubscribers = 0x10,
    /// UNSUBACK: no subscription existed.
    NoSubscriptionExisted = 0x11,
    /// Any ack, CONNACK, DISCONNECT: unspecified error.
    UnspecifiedError = 0x80,
    /// CONNACK, DISCONNECT: the packet could not be parsed.
    MalformedPacket = 0x81,
    /// CONNACK, DISCONNECT: a packet broke the protocol.
    ProtocolError = 0x82,
    /// CONNACK: unsupported protocol version.
    UnsupportedProtocolVersion = 0x84,
    /// CONNACK: client identifier not valid.
    ClientIdentifierNotValid = 0x85,
    /// CONNACK: bad user name or password.
    BadUserNameOrPassword = 0x86,
    /// CONNACK, PUBACK, PUBREC, SUBACK, DISCONNECT: not authorized.
    NotAuthorized = 0x87,
    /// CONNACK: server unavailable.
    ServerUnavailable = 0x88,
    /// CONNACK, DISCONNECT: server busy.
    ServerBusy = 0x89,
    /// DISCONNECT: server shutting down.
    ServerShuttingDown = 0x8B,
    /// CONNACK, DISCONNECT: bad authentication method.
    BadAuthenticationMethod = 0x8C,
    /// DISCONNECT: session taken over by a newer connection with the same client id.
    SessionTakenOver = 0x8E,
    /// CONNACK, PUBACK, PUBREC, DISCONNECT: topic name invalid.
    TopicNameInvalid = 0x90,
    /// PUBACK, PUBREC, DISCONNECT: packet identifier in use.
    PacketIdentifierInUse = 0x91,
    /// PUBREL, PUBCOMP: packet identifier not found.
    PacketIdentifierNotFound = 0x92,
    /// DISCONNECT: topic alias invalid.
    TopicAliasInvalid = 0x94,
    /// CONNACK, DISCONNECT: packet too large.
    PacketTooLarge = 0x95,
    /// CONNACK, PUBACK, PUBREC, DISCONNECT: quota exceeded.
    QuotaExceeded = 0x97,
    /// CONNACK, PUBACK, PUBREC, DISCONNECT: payload format invalid.
    PayloadFormatInvalid = 0x99,
    /// CONNACK, DISCONNECT: retain not supported.
    RetainNotSupported = 0x9A,
    /// SUBACK, DISCONNECT: shared subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E,
    /// SUBACK, DISCONNECT: subscription identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1,
}

impl ReasonCode {
    /// DISCONNECT: normal disconnection (discards the will message).
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// SUBACK: granted QoS 0.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// The reason code's number.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Whether this reason code reports a failure (0x80 and above).
    pub fn is_failure(self) -> bool {
        self.code() >= 0x80
    }
}

/// The data type of a property's value (§2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyType {
    /// One byte.
    Byte,
    /// Big-endian 16-bit integer.
    TwoByteInteger,
    /// Big-endian 32-bit integer.
    FourByteInteger,
    /// Variable byte integer.
    VariableByteInteger,
    /// Length-prefixed UTF-8 string.
    Utf8String,
    /// Length-prefixed binary data.
    BinaryData,
    /// Two UTF-8 strings.
    Utf8StringPair,
}

/// MQTT 5 property identifiers (§2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PropertyId {
    /// PUBLISH, will: 0 unspecified bytes, 1 UTF-8 text.
    PayloadFormatIndicator = 0x01,
    /// PUBLISH, will: lifetime in seconds.
    MessageExpiryInterval = 0x02,
    /// PUBLISH, will: the payload's content type.
    ContentType = 0x03,
    /// PUBLISH, will: topic for a response.
    ResponseTopic = 0x08,
    /// PUBLISH, will: binary data to correlate a response.
    CorrelationData = 0x09,
    /// PUBLISH (server to client), SUBSCRIBE.
    SubscriptionIdentifier = 0x0B,
    /// CONNECT, CONNACK, DISCONNECT.
    SessionExpiryInterval = 0x11,
    /// CONNACK: the client id the server assigned.
    AssignedClientIdentifier = 0x12,
    /// CONNACK: the keep-alive the server grants.
    ServerKeepAlive = 0x13,
    /// CONNECT, CONNACK, AUTH.
    AuthenticationMethod = 0x15,
    /// CONNECT, CONNACK, AUTH.
    AuthenticationData = 0x16,
    /// CONNECT: 0 or 1.
    RequestProblemInformation = 0x17,
    /// Will: seconds to wait before publishing the will.
    WillDelayInterval = 0x18,
    /// CONNECT: 0 or 1.
    RequestResponseInformation = 0x19,
    /// CONNACK.
    ResponseInformation = 0x1A,
    /// CONNACK, DISCONNECT.
    ServerReference = 0x1C,
    /// CONNACK, acks, SUBACK, UNSUBACK, DISCONNECT, AUTH.
    ReasonString = 0x1F,
    /// CONNECT, CONNACK: most unacknowledged QoS 1 and 2 messages.
    ReceiveMaximum = 0x21,
    /// CONNECT, CONNACK.
    TopicAliasMaximum = 0x22,
    /// PUBLISH.
    TopicAlias = 0x23,
    /// CONNACK.
    MaximumQos = 0x24,
    /// CONNACK: whether retained messages are supported.
    RetainAvailable = 0x25,
    /// Every packet with properties; may repeat.
    UserProperty = 0x26,
    /// CONNECT, CONNACK: the largest packet the sender accepts.
    MaximumPacketSize = 0x27,
    /// CONNACK.
    WildcardSubscriptionAvailable = 0x28,
    /// CONNACK.
    SubscriptionIdentifierAvailable = 0x29,
    /// CONNACK.
    SharedSubscriptionAvailable = 0x2A,
}

impl PropertyId {
    /// The property with this identifier, if the specification defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        use PropertyId::*;
        Some(match id {
            0x01 => PayloadFormatIndicator,
            0x02 => MessageExpiryInterval,
            0x03 => ContentType,
            0x08 => ResponseTopic,
            0x09 => CorrelationData,
            0x0B => SubscriptionIdentifier,
            0x11 => SessionExpiryInterval,
            0x12 => AssignedClientIdentifier,
            0x13 => ServerKeepAlive,
            0x15 => AuthenticationMethod,
            0x16 => AuthenticationData,
            0x17 => RequestProblemInformation,
            0x18 => WillDelayInterval,
            0x19 => RequestResponseInformation,
            0x1A => ResponseInformation,
            0x1C => ServerReference,
            0x1F => ReasonString,
            0x21 => ReceiveMaximum,
            0x22 => TopicAliasMaximum,
            0x23 => TopicAlias,
            0x24 => MaximumQos,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// The identifier's number (every defined identifier fits one byte).
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The data type of the property's value.
    pub fn value_type(self) -> PropertyType {
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | RequestProblemInformation
            | RequestResponseInformation
            | MaximumQos
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => PropertyType::Byte,
            ServerKeepAlive | ReceiveMaximum | TopicAliasMaximum | TopicAlias => {
                PropertyType::TwoByteInteger
            }
            MessageExpiryInterval
            | SessionExpiryInterval
            | WillDelayInterval
            | MaximumPacketSize => PropertyType::FourByteInteger,
            SubscriptionIdentifier => PropertyType::VariableByteInteger,
            ContentType
            | ResponseTopic
            | AssignedClientIdentifier
            | AuthenticationMethod
            | ResponseInformation
            | ServerReference
            | ReasonString => PropertyType::Utf8String,
            CorrelationData | AuthenticationData => PropertyType::BinaryData,
            UserProperty => PropertyType::Utf8StringPair,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_types_round_trip_through_their_numbers() {
        for number in 1..=15 {
            let kind = PacketType::from_number(number).expect("defined");
            assert_eq!(kind.number(), number);
        }
        assert_eq!(PacketType::from_number(0), None);
        assert_eq!(PacketType::Publish.with_flags(0b0010), 0x32);
    }

    #[test]
    fn property_ids_round_trip_through_their_numbers() {
        let defined: Vec<PropertyId> = (0..=0x30).filter_map(PropertyId::from_id).collect();
        assert_eq!(defined.len(), 27, "MQTT 5 defines 27 properties");
        assert!(defined
            .iter()
            .all(|p| PropertyId::from_id(p.id().into()) == Some(*p)));
    }
}
