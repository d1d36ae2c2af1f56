//! Bytes to packets.

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::packet::{Packet, ProtocolVersion};

/// A decoder for one connection: knows the protocol version (set after CONNECT) and the maximum
/// packet size it accepts.
#[derive(Debug, Clone)]
pub struct Codec {
    version: ProtocolVersion,
    max_packet_size: u32,
}

impl Codec {
    /// A decoder that accepts packets up to `max_packet_size` bytes (fixed header included).
    /// Until [`Codec::set_version`] is called it decodes as MQTT 3.1.1; CONNECT is always decoded
    /// by the version it declares.
    pub fn new(max_packet_size: u32) -> Self {
        Self { version: ProtocolVersion::V3_1_1, max_packet_size }
    }

    /// The protocol version used for every packet but CONNECT.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Sets the protocol version (after CONNECT).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// The maximum packet size accepted.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Decodes one packet from the front of `buf`, removing its bytes.
    ///
    /// Returns `Ok(None)` and leaves `buf` untouched when it does not yet hold a whole packet.
    /// A packet whose fixed header announces more than the maximum packet size is an error as
    /// soon as the header is read, before its body arrives.
    ///
    /// # Errors
    /// [`DecodeError`] for malformed packets and protocol violations; the connection should then
    /// be closed (after a DISCONNECT or CONNACK with [`DecodeError::reason_code`] for v5).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let _ = buf;
        todo!("implemented by the codec work")
    }
}
