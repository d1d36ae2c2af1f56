//! Decodes arbitrary bytes with every protocol version. Decoding must never panic, and every
//! packet that decodes must encode to `encoded_len` bytes and decode back to itself.
//!
//! The same check runs on stable over the committed corpus:
//! `crates/moat-codec/tests/corpus.rs`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use moat_codec::{encode, encoded_len, Codec, ProtocolVersion};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut codec = Codec::new(1 << 20);
        codec.set_version(version);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = codec.decode(&mut buf) {
            let mut out = BytesMut::new();
            if let Err(e) = encode(&packet, version, &mut out) {
                panic!("{packet:?} decoded but does not encode: {e}");
            }
            assert_eq!(out.len(), encoded_len(&packet, version));
            let mut again = Codec::new(u32::MAX);
            again.set_version(version);
            match again.decode(&mut out) {
                Ok(Some(decoded)) => {
                    assert_eq!(decoded, packet);
                    assert!(out.is_empty());
                }
                other => panic!("{packet:?} re-encoded decodes to {other:?}"),
            }
        }
    }
});
