//! Packets to bytes.

use bytes::BytesMut;

use crate::error::EncodeError;
use crate::packet::{Packet, ProtocolVersion};

/// Appends the encoding of `packet` for `version` to `buf`.
///
/// # Errors
/// [`EncodeError`] when a field cannot be represented; nothing is appended then.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let _ = (packet, version, buf);
    todo!("implemented by the codec work")
}

/// The number of bytes [`encode`] would append (fixed header included).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    todo!("implemented by the codec work")
}
