//! MQTT 3.1, 3.1.1 and 5.0 wire format: bytes to [`Packet`] and back.
//!
//! This crate does no I/O, reads no clock and logs nothing. It turns a byte buffer into packets
//! ([`Codec::decode`]) and packets into bytes ([`encode`]), applying the limits that protect a
//! server while decoding: the maximum packet size, the remaining-length rules, UTF-8 and topic
//! rules, reserved flags and duplicate properties. Incomplete input is not an error: `decode`
//! returns `Ok(None)` and leaves the buffer as it was.
//!
//! A protocol violation is a [`DecodeError`] that names the specification's clause and maps to
//! exactly one MQTT 5.0 reason code ([`DecodeError::reason_code`]).
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;

pub use decode::Codec;
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, PacketType, ProtocolVersion,
    PubAck, Publish, QoS, RetainHandling, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use properties::{PropertyId, Properties};
pub use reason::ReasonCode;

/// The default maximum packet size a [`Codec`] accepts: 1 MiB (remaining length plus header).
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// The largest remaining length the variable byte integer can express (268,435,455).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
