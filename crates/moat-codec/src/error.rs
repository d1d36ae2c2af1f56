//! Decoding and encoding errors.

use crate::reason::ReasonCode;

/// Why a packet could not be decoded. Each maps to one v5 reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not form a valid packet.
    #[error("malformed packet: {reason} [{clause}]")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
        /// The specification's conformance statement, e.g. "MQTT-1.5.4-1".
        clause: &'static str,
    },
    /// A well-formed packet that breaks a protocol rule.
    #[error("protocol error: {reason} [{clause}]")]
    Protocol {
        /// What is wrong.
        reason: &'static str,
        /// The specification's conformance statement.
        clause: &'static str,
    },
    /// A PUBLISH whose Topic Name the specification refuses: one with a wildcard.
    #[error("topic name invalid: {reason} [{clause}]")]
    TopicNameInvalid {
        /// What is wrong.
        reason: &'static str,
        /// The specification's conformance statement.
        clause: &'static str,
    },
    /// A PUBLISH whose Topic Alias the specification refuses: alias 0.
    #[error("topic alias invalid: {reason} [{clause}]")]
    TopicAliasInvalid {
        /// What is wrong.
        reason: &'static str,
        /// The specification's conformance statement.
        clause: &'static str,
    },
    /// The packet is larger than the maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// The whole packet's size as announced by its fixed header.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// CONNECT with a protocol name or level this server does not speak.
    #[error("unsupported protocol: name {name:?}, level {level} [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion {
        /// The protocol name found.
        name: String,
        /// The protocol level found.
        level: u8,
    },
}

impl DecodeError {
    /// The v5 reason code a server sends (in CONNACK or DISCONNECT) for this error: the most
    /// specific one the specification gives.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Malformed { .. } => ReasonCode::MALFORMED_PACKET,
            Self::Protocol { .. } => ReasonCode::PROTOCOL_ERROR,
            Self::TopicNameInvalid { .. } => ReasonCode::TOPIC_NAME_INVALID,
            Self::TopicAliasInvalid { .. } => ReasonCode::TOPIC_ALIAS_INVALID,
            Self::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::UnsupportedProtocolVersion { .. } => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("{field} is {len} bytes long; the limit is 65535")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The packet's remaining length exceeds 268,435,455 bytes.
    #[error("packet too large to encode: remaining length {0}")]
    PacketTooLarge(usize),
    /// A field's value cannot be represented (a QoS 0 PUBLISH with a packet id, say).
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}
