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
//!
//! A [`Codec`] decodes by the version it is told ([`Codec::set_version`]); it does not switch by
//! itself when it decodes a CONNECT, which always declares its own version ([`connect_version`]
//! reads it before the CONNECT is decoded, so a refusal can be answered in that version).
//!
//! [`encode`] writes what a peer of the given version reads. What MQTT 3.x cannot carry is left
//! out rather than refused: properties, and reason codes where 3.x has none (a SUBACK failure
//! becomes 0x80, a CONNACK reason code the nearest 3.x return code), so one [`Publish`] can be
//! encoded for subscribers of every version. The encoder refuses what it cannot represent (long
//! fields, oversized packets) and what would frame a packet the decoder rejects outright; the
//! content rules the decoder checks (UTF-8, wildcards in topic names and response topics,
//! property values) are the caller's to respect. [`encoded_len`] is exact and allocation-free,
//! for checking a peer's maximum packet size before encoding.
#![warn(missing_docs)]

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod read;
mod reason;
#[cfg(test)]
mod test_vectors;

pub use decode::{connect_version, Codec};
pub use encode::{encode, encoded_len, publish_len};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, PacketType, ProtocolVersion,
    PubAck, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
pub use properties::{Properties, PropertyContext, PropertyId, PropertySet};
pub use reason::ReasonCode;

/// The default maximum packet size a [`Codec`] accepts: 1 MiB (remaining length plus header).
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// The largest remaining length the variable byte integer can express (268,435,455).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
