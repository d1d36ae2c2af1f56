//! [`Record`]: one accepted message on its way to a sink, and its spool encoding.
//!
//! # Encoding (version 1)
//! All integers big-endian; `len` is an unsigned LEB128 varint of at most 5 bytes (< 2^32).
//! ```text
//! u8   version = 1
//! u64  key
//! u64  received_at_ms
//! u8   flags: bit 0 retain, bits 1-2 qos, bit 3 username, bit 4 cert_identity, bit 5 content_type
//! str  topic, str client_id                      (str = len, UTF-8 bytes)
//! str  username, cert_identity, content_type     (each only when its flag is set)
//! len  count, then count x (str name, str value)  user properties
//! len  payload length, payload bytes
//! ```
//! Nothing may follow the payload. [`Record::decode`] checks every length against what is
//! left before it allocates, so a damaged spool entry gives a [`DecodeError`], never a panic
//! or a huge allocation.

use std::fmt;

use bytes::Bytes;

/// The first byte of an encoded record.
pub const RECORD_VERSION: u8 = 1;

const RETAIN: u8 = 1;
const QOS_SHIFT: u8 = 1;
const QOS_MASK: u8 = 0b110;
const HAS_USERNAME: u8 = 1 << 3;
const HAS_CERT_IDENTITY: u8 = 1 << 4;
const HAS_CONTENT_TYPE: u8 = 1 << 5;
const KNOWN_FLAGS: u8 = RETAIN | QOS_MASK | HAS_USERNAME | HAS_CERT_IDENTITY | HAS_CONTENT_TYPE;

/// One accepted message to deliver.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Unique message key, durable across restarts (the broker assigns it); sinks write it as
    /// the de-duplication key.
    pub key: u64,
    /// The MQTT topic the message was published to.
    pub topic: String,
    /// The application message.
    pub payload: Bytes,
    /// The QoS it was published with (0, 1 or 2).
    pub qos: u8,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// The publisher's client identifier.
    pub client_id: String,
    /// The publisher's authenticated user name, if any.
    pub username: Option<String>,
    /// The identity of the publisher's client certificate, if any.
    pub cert_identity: Option<String>,
    /// When the broker accepted the message, in Unix milliseconds.
    pub received_at_ms: u64,
    /// MQTT 5 Content Type property.
    pub content_type: Option<String>,
    /// MQTT 5 User Property pairs, in order (names may repeat).
    pub user_properties: Vec<(String, String)>,
}

impl fmt::Debug for Record {
    /// The payload shows as its length only: it may be large, binary or sensitive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key)
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("cert_identity", &self.cert_identity)
            .field("received_at_ms", &self.received_at_ms)
            .field("content_type", &self.content_type)
            .field("user_properties", &self.user_properties)
            .finish()
    }
}

/// Why bytes are not an encoded [`Record`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty record")]
    Empty,
    /// Written by another (newer) format version.
    #[error("record format version {0} is not known (this build reads {RECORD_VERSION})")]
    Version(u8),
    /// The bytes end inside the named field.
    #[error("record truncated in {0}")]
    Truncated(&'static str),
    /// A length does not fit in 32 bits.
    #[error("record length of {0} is too long")]
    BadLength(&'static str),
    /// The named string is not UTF-8.
    #[error("record field {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// QoS 3, or flag bits this version does not define.
    #[error("record flags {0:#04x} are not valid")]
    BadFlags(u8),
    /// Bytes follow the payload.
    #[error("{0} bytes follow the record")]
    Trailing(usize),
}

impl Record {
    /// Appends the spool encoding of this record to `out` (see the module docs).
    ///
    /// # Panics
    /// If a string or the payload is 4 GiB or longer, which MQTT cannot carry.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.key.to_be_bytes());
        out.extend_from_slice(&self.received_at_ms.to_be_bytes());
        let mut flags = (self.qos << QOS_SHIFT) & QOS_MASK;
        if self.retain {
            flags |= RETAIN;
        }
        if self.username.is_some() {
            flags |= HAS_USERNAME;
        }
        if self.cert_identity.is_some() {
            flags |= HAS_CERT_IDENTITY;
        }
        if self.content_type.is_some() {
            flags |= HAS_CONTENT_TYPE;
        }
        out.push(flags);
        put_bytes(out, self.topic.as_bytes());
        put_bytes(out, self.client_id.as_bytes());
        for s in [&self.username, &self.cert_identity, &self.content_type]
            .into_iter()
            .flatten()
        {
            put_bytes(out, s.as_bytes());
        }
        put_len(out, self.user_properties.len());
        for (name, value) in &self.user_properties {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value.as_bytes());
        }
        put_bytes(out, &self.payload);
    }

    /// Reads a record written by [`Record::encode`]. Never panics, whatever the input.
    ///
    /// # Errors
    /// [`DecodeError`] when the bytes are not exactly one encoded record.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != RECORD_VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut r = Reader { rest };
        let key = r.u64("key")?;
        let received_at_ms = r.u64("received_at_ms")?;
        let flags = r.u8("flags")?;
        let qos = (flags & QOS_MASK) >> QOS_SHIFT;
        if flags & !KNOWN_FLAGS != 0 || qos > 2 {
            return Err(DecodeError::BadFlags(flags));
        }
        let topic = r.string("topic")?;
        let client_id = r.string("client_id")?;
        let username = r.opt_string(flags & HAS_USERNAME != 0, "username")?;
        let cert_identity = r.opt_string(flags & HAS_CERT_IDENTITY != 0, "cert_identity")?;
        let content_type = r.opt_string(flags & HAS_CONTENT_TYPE != 0, "content_type")?;
        let count = r.len("user_properties")?;
        // Each pair takes at least two bytes: never reserve more than the input can hold.
        let mut user_properties = Vec::with_capacity(count.min(r.rest.len() / 2));
        for _ in 0..count {
            let name = r.string("user property name")?;
            let value = r.string("user property value")?;
            user_properties.push((name, value));
        }
        let payload = Bytes::copy_from_slice(r.bytes("payload")?);
        if !r.rest.is_empty() {
            return Err(DecodeError::Trailing(r.rest.len()));
        }
        Ok(Self {
            key,
            topic,
            payload,
            qos,
            retain: flags & RETAIN != 0,
            client_id,
            username,
            cert_identity,
            received_at_ms,
            content_type,
            user_properties,
        })
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    let mut v = u32::try_from(len).expect("MQTT strings and payloads are shorter than 4 GiB");
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(buf))
    }

    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..5 {
            let byte = self.u8(what)?;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return usize::try_from(v)
                    .ok()
                    .filter(|&n| u32::try_from(n).is_ok())
                    .ok_or(DecodeError::BadLength(what));
            }
        }
        Err(DecodeError::BadLength(what))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = self.len(what)?;
        self.take(n, what)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8(what))
    }

    fn opt_string(
        &mut self,
        present: bool,
        what: &'static str,
    ) -> Result<Option<String>, DecodeError> {
        present.then(|| self.string(what)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Record {
        Record {
            key: 42,
            topic: "devices/d1/telemetry".into(),
            payload: Bytes::from_static(br#"{"temp":21.5}"#),
            qos: 1,
            retain: true,
            client_id: "d1".into(),
            username: Some("alice".into()),
            cert_identity: None,
            received_at_ms: 1_700_000_000_123,
            content_type: Some("application/json".into()),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
        }
    }

    #[test]
    fn round_trip_and_first_byte_is_the_version() {
        let rec = sample();
        let mut out = Vec::new();
        rec.encode(&mut out);
        assert_eq!(out[0], RECORD_VERSION);
        assert_eq!(Record::decode(&out), Ok(rec));
    }

    #[test]
    fn damaged_input_is_an_error() {
        let mut out = Vec::new();
        sample().encode(&mut out);
        assert_eq!(Record::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Record::decode(&[9]), Err(DecodeError::Version(9)));
        for cut in 1..out.len() {
            assert!(Record::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(Record::decode(&longer), Err(DecodeError::Trailing(1)));
        let mut qos3 = out.clone();
        qos3[17] |= QOS_MASK;
        assert!(matches!(
            Record::decode(&qos3),
            Err(DecodeError::BadFlags(_))
        ));
    }

    #[test]
    fn debug_shows_the_payload_length_only() {
        let s = format!("{:?}", sample());
        assert!(s.contains("payload_len: 13"), "{s}");
        assert!(!s.contains("temp"), "{s}");
    }

    fn any_record() -> impl Strategy<Value = Record> {
        (
            (
                any::<u64>(),
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..300),
            ),
            (0u8..=2, any::<bool>(), ".{0,10}"),
            (
                proptest::option::of(".{0,10}"),
                proptest::option::of(".{0,10}"),
                any::<u64>(),
                proptest::option::of(".{0,10}"),
            ),
            proptest::collection::vec((".{0,5}", ".{0,5}"), 0..4),
        )
            .prop_map(
                |(
                    (key, topic, payload),
                    (qos, retain, client_id),
                    (username, cert_identity, received_at_ms, content_type),
                    user_properties,
                )| Record {
                    key,
                    topic,
                    payload: payload.into(),
                    qos,
                    retain,
                    client_id,
                    username,
                    cert_identity,
                    received_at_ms,
                    content_type,
                    user_properties,
                },
            )
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(rec in any_record()) {
            let mut out = Vec::new();
            rec.encode(&mut out);
            prop_assert_eq!(Record::decode(&out), Ok(rec));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_damaged_records(rec in any_record(), at in any::<usize>(), byte in any::<u8>()) {
            let mut out = Vec::new();
            rec.encode(&mut out);
            let i = at % out.len();
            out[i] = byte;
            let _ = Record::decode(&out);
        }
    }
}
