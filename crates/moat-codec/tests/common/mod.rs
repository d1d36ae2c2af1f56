//! Checks shared by the property tests, the corpus replay and (in a copy) the fuzz target.
#![allow(dead_code)] // Each test crate uses a different subset.

use bytes::BytesMut;
use moat_codec::{encode, encoded_len, publish_len, Codec, DecodeError, Packet, ProtocolVersion};

pub(crate) const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// What decoding a whole input gave: the packets, then why it stopped.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) packets: Vec<Packet>,
    /// `None` when the input ran out (nothing left, or an incomplete packet).
    pub(crate) error: Option<DecodeError>,
    /// Bytes left in the buffer when decoding stopped.
    pub(crate) left: usize,
}

/// Decodes packets from `input` until it runs out or an error, checking every decoded packet
/// with [`assert_roundtrip`] and that `Codec::is_decodable` foretold each step. Never panics on
/// its own: any panic is a bug in the codec.
pub(crate) fn decode_all(input: &[u8], version: ProtocolVersion, max_packet_size: u32) -> Decoded {
    let mut codec = Codec::new(max_packet_size);
    codec.set_version(version);
    let mut buf = BytesMut::from(input);
    let mut packets = Vec::new();
    loop {
        let before = buf.clone();
        let decodable = codec.is_decodable(&buf);
        let decoded = codec.decode(&mut buf);
        assert_eq!(
            decodable,
            !matches!(decoded, Ok(None)),
            "is_decodable disagrees with decode's {decoded:?}"
        );
        match decoded {
            Ok(Some(packet)) => {
                assert_roundtrip(&packet, version);
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(buf, before, "decode returned None but changed the buffer");
                return Decoded {
                    packets,
                    error: None,
                    left: buf.len(),
                };
            }
            Err(error) => {
                return Decoded {
                    packets,
                    error: Some(error),
                    left: buf.len(),
                }
            }
        }
    }
}

/// Asserts that `packet` (as decoded for `version`) encodes to `encoded_len` bytes and decodes
/// back to itself.
pub(crate) fn assert_roundtrip(packet: &Packet, version: ProtocolVersion) {
    let mut buf = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut buf) {
        panic!("{packet:?} does not encode for {version}: {e}");
    }
    assert_eq!(
        buf.len(),
        encoded_len(packet, version),
        "encoded_len of {packet:?}"
    );
    if let Packet::Publish(p) = packet {
        assert_eq!(buf.len(), publish_len(p, version), "publish_len of {p:?}");
    }
    let bytes = buf.clone();
    let mut codec = Codec::new(u32::MAX);
    codec.set_version(version);
    match codec.decode(&mut buf) {
        Ok(Some(again)) => {
            assert_eq!(&again, packet, "round trip through {:02X?}", &bytes[..]);
            assert!(buf.is_empty(), "{} bytes left after the packet", buf.len());
        }
        other => panic!(
            "{packet:?} encoded as {:02X?} decodes to {other:?}",
            &bytes[..]
        ),
    }
}
