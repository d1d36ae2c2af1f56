//! A checked cursor over the body of one packet.
//!
//! By the time a body is read, the whole packet is in memory (its remaining length was known),
//! so running out of bytes inside a field is a malformed packet, never "wait for more". Every
//! read checks the length first; nothing here can panic or allocate more than the bytes present.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;

/// A malformed packet (reason code 0x81).
pub(crate) const fn malformed(reason: &'static str, clause: &'static str) -> DecodeError {
    DecodeError::Malformed { reason, clause }
}

/// A protocol error (reason code 0x82).
pub(crate) const fn protocol(reason: &'static str, clause: &'static str) -> DecodeError {
    DecodeError::Protocol { reason, clause }
}

/// A field runs past the end of the packet: the remaining length is too short for it.
const TRUNCATED: DecodeError = malformed("packet ends inside a field", "section 2.1.4");

/// Reads the fields of one packet body front to back. Binary fields and the rest of the body
/// are returned as `Bytes` slices of the packet, without copying.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    /// The number of unread bytes.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.first().ok_or(TRUNCATED)?;
        self.buf.advance(1);
        Ok(b)
    }

    /// A Two Byte Integer (big-endian).
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    /// A Four Byte Integer (big-endian).
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes: [u8; N] = self
            .buf
            .get(..N)
            .and_then(|s| s.try_into().ok())
            .ok_or(TRUNCATED)?;
        self.buf.advance(N);
        Ok(bytes)
    }

    /// A Variable Byte Integer (at most four bytes, so at most 268,435,455). Encodings longer
    /// than necessary are accepted.
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for shift in [0, 7, 14, 21] {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(
            "variable byte integer longer than four bytes",
            "section 1.5.5",
        ))
    }

    /// The next `n` bytes, or an error if fewer remain.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A UTF-8 Encoded String: a two-byte length, then well-formed UTF-8 without U+0000.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let raw = self.buf.get(..len).ok_or(TRUNCATED)?;
        let s = utf8(raw)?.to_owned();
        self.buf.advance(len);
        Ok(s)
    }

    /// Everything not read yet (a PUBLISH payload, a list of reason codes).
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Checks that every byte was read: bytes after the last field make the packet malformed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(
                "unexpected bytes after the packet's last field",
                "section 2.1.4",
            ))
        }
    }
}

/// Validates the character data of a UTF-8 Encoded String.
pub(crate) fn utf8(raw: &[u8]) -> Result<&str, DecodeError> {
    // from_utf8 also rejects encoded surrogates (U+D800..U+DFFF) and overlong forms.
    let s = std::str::from_utf8(raw)
        .map_err(|_| malformed("ill-formed UTF-8 string", "MQTT-1.5.4-1"))?;
    if raw.contains(&0) {
        return Err(malformed(
            "string contains the null character U+0000",
            "MQTT-1.5.4-2",
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> Reader {
        Reader::new(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn integers_are_big_endian() {
        let mut r = reader(&[0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x07]);
        assert_eq!(r.u16(), Ok(0x1234));
        assert_eq!(r.u32(), Ok(0xDEAD_BEEF));
        assert_eq!(r.u8(), Ok(7));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err(TRUNCATED));
    }

    #[test]
    fn variable_byte_integers_from_the_spec_table() {
        // Table 1-1: the smallest and largest values of each size.
        let cases: &[(&[u8], u32)] = &[
            (&[0x00], 0),
            (&[0x7F], 127),
            (&[0x80, 0x01], 128),
            (&[0xFF, 0x7F], 16_383),
            (&[0x80, 0x80, 0x01], 16_384),
            (&[0xFF, 0xFF, 0x7F], 2_097_151),
            (&[0x80, 0x80, 0x80, 0x01], 2_097_152),
            (&[0xFF, 0xFF, 0xFF, 0x7F], 268_435_455),
        ];
        for &(bytes, value) in cases {
            let mut r = reader(bytes);
            assert_eq!(r.vbi(), Ok(value), "{bytes:02X?}");
            assert!(r.is_empty());
        }
    }

    #[test]
    fn variable_byte_integer_of_five_bytes_is_malformed() {
        let mut r = reader(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert_eq!(
            r.vbi(),
            Err(malformed(
                "variable byte integer longer than four bytes",
                "section 1.5.5"
            ))
        );
        assert_eq!(reader(&[0x80, 0x80]).vbi(), Err(TRUNCATED));
    }

    #[test]
    fn strings_and_binary_check_their_length() {
        let mut r = reader(&[0x00, 0x02, b'h', b'i', 0x00, 0x01, 0xFF, 0x00, 0x05, b'x']);
        assert_eq!(r.string().as_deref(), Ok("hi"));
        assert_eq!(r.binary(), Ok(Bytes::from_static(&[0xFF])));
        assert_eq!(r.binary(), Err(TRUNCATED));
    }

    #[test]
    fn strings_reject_bad_utf8_surrogates_and_nul() {
        let bad_utf8 = [0x00, 0x02, 0xC3, 0x28];
        let surrogate = [0x00, 0x03, 0xED, 0xA0, 0x80]; // U+D800 encoded as UTF-8
        let nul = [0x00, 0x03, b'a', 0x00, b'b'];
        for bytes in [&bad_utf8[..], &surrogate[..]] {
            let err = reader(bytes).string().unwrap_err();
            assert_eq!(err, malformed("ill-formed UTF-8 string", "MQTT-1.5.4-1"));
        }
        let err = reader(&nul).string().unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Malformed {
                clause: "MQTT-1.5.4-2",
                ..
            }
        ));
    }

    #[test]
    fn zero_width_no_break_space_is_kept() {
        // MQTT-1.5.4-3: 0xEF 0xBB 0xBF is U+FEFF and must not be stripped.
        let mut r = reader(&[0x00, 0x04, 0xEF, 0xBB, 0xBF, b'a']);
        assert_eq!(r.string().as_deref(), Ok("\u{FEFF}a"));
    }

    #[test]
    fn finish_rejects_trailing_bytes() {
        let mut r = reader(&[1, 2]);
        assert!(r.finish().is_err());
        assert_eq!(r.rest(), Bytes::from_static(&[1, 2]));
        assert_eq!(r.finish(), Ok(()));
    }
}
