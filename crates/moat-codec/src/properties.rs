//! MQTT 5.0 properties (section 2.2.2). One struct holds every property; which ones a packet may
//! carry is checked while decoding ([`PropertyId::allowed_in`]).

use bytes::Bytes;

use crate::packet::PacketType;

/// Property identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum PropertyId {
    PayloadFormatIndicator = 0x01,
    MessageExpiryInterval = 0x02,
    ContentType = 0x03,
    ResponseTopic = 0x08,
    CorrelationData = 0x09,
    SubscriptionIdentifier = 0x0B,
    SessionExpiryInterval = 0x11,
    AssignedClientIdentifier = 0x12,
    ServerKeepAlive = 0x13,
    AuthenticationMethod = 0x15,
    AuthenticationData = 0x16,
    RequestProblemInformation = 0x17,
    WillDelayInterval = 0x18,
    RequestResponseInformation = 0x19,
    ResponseInformation = 0x1A,
    ServerReference = 0x1C,
    ReasonString = 0x1F,
    ReceiveMaximum = 0x21,
    TopicAliasMaximum = 0x22,
    TopicAlias = 0x23,
    MaximumQoS = 0x24,
    RetainAvailable = 0x25,
    UserProperty = 0x26,
    MaximumPacketSize = 0x27,
    WildcardSubscriptionAvailable = 0x28,
    SubscriptionIdentifierAvailable = 0x29,
    SharedSubscriptionAvailable = 0x2A,
}

/// Where a property set appears. Will properties live in CONNECT's payload, so they get their
/// own context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    /// The properties of a packet of this type.
    Packet(PacketType),
    /// The will properties in CONNECT's payload.
    Will,
}

/// Every MQTT 5.0 property. Absent properties are `None` (or empty); `Default` is "none at all".
/// Packets hold it as [`Properties`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct PropertySet {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// Several in a PUBLISH sent by the server; at most one in SUBSCRIBE; never 0.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// In order; the same name may appear more than once.
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// No property at all: what an absent [`Properties`] reads as.
static EMPTY: PropertySet = PropertySet {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl PropertySet {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        *self == EMPTY
    }
}

/// A packet's properties. Most packets carry none (every MQTT 3.1.1 packet, most 5.0 PUBLISH
/// and acknowledgements), so none costs one pointer and no allocation, and a packet stays small
/// to move through the broker's queues; a set is boxed. Fields read and write through
/// [`Deref`](std::ops::Deref) and [`DerefMut`](std::ops::DerefMut) (the first write makes the
/// box).
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertySet>>);

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|p| p.is_empty())
    }

    /// The set, if there is one to change: unlike writing through `DerefMut`, it never makes a
    /// box for an absent set (clearing what is not there costs nothing).
    pub fn existing_mut(&mut self) -> Option<&mut PropertySet> {
        self.0.as_deref_mut()
    }
}

impl From<PropertySet> for Properties {
    fn from(set: PropertySet) -> Self {
        if set.is_empty() {
            Self(None)
        } else {
            Self(Some(Box::new(set)))
        }
    }
}

impl std::ops::Deref for Properties {
    type Target = PropertySet;

    fn deref(&self) -> &PropertySet {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertySet {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl PropertyId {
    /// The identifier for a wire byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        use PropertyId::*;
        Some(match v {
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
            0x24 => MaximumQoS,
            0x25 => RetainAvailable,
            0x26 => UserProperty,
            0x27 => MaximumPacketSize,
            0x28 => WildcardSubscriptionAvailable,
            0x29 => SubscriptionIdentifierAvailable,
            0x2A => SharedSubscriptionAvailable,
            _ => return None,
        })
    }

    /// Whether this property may appear in `ctx` (the table in section 2.2.2.2).
    pub fn allowed_in(self, ctx: PropertyContext) -> bool {
        use PacketType as T;
        use PropertyContext::{Packet, Will};
        use PropertyId::*;
        match self {
            PayloadFormatIndicator
            | MessageExpiryInterval
            | ContentType
            | ResponseTopic
            | CorrelationData => matches!(ctx, Packet(T::Publish) | Will),
            SubscriptionIdentifier => matches!(ctx, Packet(T::Publish) | Packet(T::Subscribe)),
            SessionExpiryInterval => {
                matches!(
                    ctx,
                    Packet(T::Connect) | Packet(T::ConnAck) | Packet(T::Disconnect)
                )
            }
            AssignedClientIdentifier
            | ServerKeepAlive
            | ResponseInformation
            | MaximumQoS
            | RetainAvailable
            | WildcardSubscriptionAvailable
            | SubscriptionIdentifierAvailable
            | SharedSubscriptionAvailable => {
                matches!(ctx, Packet(T::ConnAck))
            }
            AuthenticationMethod | AuthenticationData => {
                matches!(
                    ctx,
                    Packet(T::Connect) | Packet(T::ConnAck) | Packet(T::Auth)
                )
            }
            RequestProblemInformation | RequestResponseInformation => {
                matches!(ctx, Packet(T::Connect))
            }
            WillDelayInterval => matches!(ctx, Will),
            ServerReference => matches!(ctx, Packet(T::ConnAck) | Packet(T::Disconnect)),
            ReasonString => !matches!(
                ctx,
                Will | Packet(T::Connect)
                    | Packet(T::Publish)
                    | Packet(T::Subscribe)
                    | Packet(T::Unsubscribe)
                    | Packet(T::PingReq)
                    | Packet(T::PingResp)
            ),
            ReceiveMaximum | TopicAliasMaximum | MaximumPacketSize => {
                matches!(ctx, Packet(T::Connect) | Packet(T::ConnAck))
            }
            TopicAlias => matches!(ctx, Packet(T::Publish)),
            UserProperty => !matches!(ctx, Packet(T::PingReq) | Packet(T::PingResp)),
        }
    }
}
