//! The on-disk encoding of keys and values, written by hand.
//!
//! Every value starts with a record version byte ([`RECORD_V1`]) so that a record layout can
//! change without a new store format. Keys that belong to a session start with the client id,
//! length-prefixed (`u16` big-endian), so a client id containing `/` or any other byte cannot
//! run into another's keys, and every key of a session lies in one range. Numbers in keys are
//! big-endian so that keys sort numerically; numbers in values are little-endian.

use bytes::Bytes;
use moat_codec::{LastWill, Properties, QoS, RetainHandling, SubscriptionOptions};
use moat_core::store::{StoredMessage, StoredState};

/// The record layout version written in the first byte of every value.
pub(crate) const RECORD_V1: u8 = 1;

/// Why a stored key or value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) &'static str);

type Result<T> = std::result::Result<T, DecodeError>;

// ---- keys ----

/// The key prefix of every key of a session: `u16` length, then the client id.
pub(crate) fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client_id.len() + 8);
    put_key_str(&mut k, client_id);
    k
}

/// `prefix ++ suffix`.
pub(crate) fn key_with(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut k = client_prefix(client_id);
    k.extend_from_slice(suffix);
    k
}

/// Splits a session key into the client id and what follows it.
pub(crate) fn split_client_key(key: &[u8]) -> Result<(&str, &[u8])> {
    let mut r = Reader::new(key);
    let len = usize::from(r.u16_be()?);
    let id = r.take(len)?;
    let id = std::str::from_utf8(id).map_err(|_| DecodeError("client id is not UTF-8"))?;
    Ok((id, r.rest()))
}

/// The first key after every key that starts with `prefix`, `None` if there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn put_key_str(k: &mut Vec<u8>, s: &str) {
    // MQTT strings are at most 65,535 bytes; longer ones are refused before they get here.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Checks that a string fits a key component.
pub(crate) fn key_str_fits(s: &str) -> bool {
    s.len() <= usize::from(u16::MAX)
}

pub(crate) fn decode_u64_be(b: &[u8]) -> Result<u64> {
    let a: [u8; 8] = b
        .try_into()
        .map_err(|_| DecodeError("bad sequence number in key"))?;
    Ok(u64::from_be_bytes(a))
}

pub(crate) fn decode_u16_be(b: &[u8]) -> Result<u16> {
    let a: [u8; 2] = b
        .try_into()
        .map_err(|_| DecodeError("bad packet id in key"))?;
    Ok(u16::from_be_bytes(a))
}

pub(crate) fn decode_key_str(b: &[u8]) -> Result<&str> {
    let mut r = Reader::new(b);
    let len = usize::from(r.u16_be()?);
    let s = r.take(len)?;
    r.end()?;
    std::str::from_utf8(s).map_err(|_| DecodeError("key is not UTF-8"))
}

pub(crate) fn encode_key_str(s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + s.len());
    put_key_str(&mut k, s);
    k
}

// ---- values ----

/// Session meta: expiry interval and when it went offline.
pub(crate) fn encode_session(expiry_interval: u32, offline_since_ms: Option<u64>) -> Vec<u8> {
    let mut w = Writer::new();
    w.u32(expiry_interval);
    w.opt_u64(offline_since_ms);
    w.0
}

pub(crate) fn decode_session(v: &[u8]) -> Result<(u32, Option<u64>)> {
    let mut r = Reader::record(v)?;
    let out = (r.u32()?, r.opt_u64()?);
    r.end()?;
    Ok(out)
}

pub(crate) fn encode_subscription(options: SubscriptionOptions, id: Option<u32>) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(options_byte(options));
    w.opt_u32(id);
    w.0
}

pub(crate) fn decode_subscription(v: &[u8]) -> Result<(SubscriptionOptions, Option<u32>)> {
    let mut r = Reader::record(v)?;
    let options = options_from_byte(r.u8()?)?;
    let id = r.opt_u32()?;
    r.end()?;
    Ok((options, id))
}

/// An outgoing message: the state comes first, at a fixed offset, so that a state change
/// rewrites a few bytes.
pub(crate) fn encode_outgoing(message: &StoredMessage, state: StoredState) -> Vec<u8> {
    let mut w = Writer::new();
    put_state(&mut w.0, state);
    put_message(&mut w, message);
    w.0
}

/// The byte range of the state in an encoded outgoing message.
pub(crate) const STATE_RANGE: std::ops::Range<usize> = 1..4;

pub(crate) fn encode_state(state: StoredState) -> [u8; 3] {
    let mut v = Vec::with_capacity(3);
    put_state(&mut v, state);
    [v[0], v[1], v[2]]
}

pub(crate) fn decode_outgoing(v: &[u8]) -> Result<(StoredMessage, StoredState)> {
    let mut r = Reader::record(v)?;
    let tag = r.u8()?;
    let pid = r.u16()?;
    let state = match tag {
        0 => StoredState::Queued,
        1 => StoredState::Sent(pid),
        2 => StoredState::Released(pid),
        _ => return Err(DecodeError("unknown message state")),
    };
    let m = read_message(&mut r)?;
    r.end()?;
    Ok((m, state))
}

pub(crate) fn encode_retained(message: &StoredMessage) -> Vec<u8> {
    let mut w = Writer::new();
    put_message(&mut w, message);
    w.0
}

pub(crate) fn decode_retained(v: &[u8]) -> Result<StoredMessage> {
    let mut r = Reader::record(v)?;
    let m = read_message(&mut r)?;
    r.end()?;
    Ok(m)
}

pub(crate) fn encode_will(will: &LastWill, at_ms: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(at_ms);
    w.str(&will.topic);
    w.bytes(&will.payload);
    w.u8(will.qos as u8);
    w.u8(u8::from(will.retain));
    put_properties(&mut w, &will.properties);
    w.0
}

pub(crate) fn decode_will(v: &[u8]) -> Result<(LastWill, u64)> {
    let mut r = Reader::record(v)?;
    let at_ms = r.u64()?;
    let will = LastWill {
        topic: r.string()?,
        payload: r.payload()?,
        qos: qos(r.u8()?)?,
        retain: r.bool()?,
        properties: read_properties(&mut r)?,
    };
    r.end()?;
    Ok((will, at_ms))
}

fn put_state(v: &mut Vec<u8>, state: StoredState) {
    let (tag, pid) = match state {
        StoredState::Queued => (0u8, 0u16),
        StoredState::Sent(p) => (1, p),
        StoredState::Released(p) => (2, p),
    };
    v.push(tag);
    v.extend_from_slice(&pid.to_le_bytes());
}

fn put_message(w: &mut Writer, m: &StoredMessage) {
    w.str(&m.topic);
    w.bytes(&m.payload);
    w.u8(m.qos as u8);
    w.u8(u8::from(m.retain));
    w.opt_u64(m.expires_at_ms);
    w.u32_list(&m.subscription_ids);
    put_properties(w, &m.properties);
}

fn read_message(r: &mut Reader<'_>) -> Result<StoredMessage> {
    Ok(StoredMessage {
        topic: r.string()?,
        payload: r.payload()?,
        qos: qos(r.u8()?)?,
        retain: r.bool()?,
        expires_at_ms: r.opt_u64()?,
        subscription_ids: r.u32_list()?,
        properties: read_properties(r)?,
    })
}

fn qos(b: u8) -> Result<QoS> {
    QoS::from_u8(b).ok_or(DecodeError("bad QoS"))
}

fn options_byte(o: SubscriptionOptions) -> u8 {
    o.qos as u8
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

fn options_from_byte(b: u8) -> Result<SubscriptionOptions> {
    if b & 0xc0 != 0 {
        return Err(DecodeError("bad subscription options"));
    }
    Ok(SubscriptionOptions {
        qos: qos(b & 0x03)?,
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling: match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError("bad retain handling")),
        },
    })
}

/// Every property: a presence bitmap of the 25 optional ones, their values in order, then
/// the subscription identifiers and the user properties. The destructuring has no `..`, so
/// a property added to the codec breaks the build here instead of being dropped silently.
fn put_properties(w: &mut Writer, p: &Properties) {
    let moat_codec::PropertySet {
        payload_format_indicator,
        message_expiry_interval,
        content_type,
        response_topic,
        correlation_data,
        subscription_identifiers,
        session_expiry_interval,
        assigned_client_identifier,
        server_keep_alive,
        authentication_method,
        authentication_data,
        request_problem_information,
        will_delay_interval,
        request_response_information,
        response_information,
        server_reference,
        reason_string,
        receive_maximum,
        topic_alias_maximum,
        topic_alias,
        maximum_qos,
        retain_available,
        user_properties,
        maximum_packet_size,
        wildcard_subscription_available,
        subscription_identifier_available,
        shared_subscription_available,
    } = &**p;
    if p.is_empty() {
        // The common case: one byte.
        w.u8(0);
        return;
    }
    w.u8(1);
    let present = [
        payload_format_indicator.is_some(),
        message_expiry_interval.is_some(),
        content_type.is_some(),
        response_topic.is_some(),
        correlation_data.is_some(),
        session_expiry_interval.is_some(),
        assigned_client_identifier.is_some(),
        server_keep_alive.is_some(),
        authentication_method.is_some(),
        authentication_data.is_some(),
        request_problem_information.is_some(),
        will_delay_interval.is_some(),
        request_response_information.is_some(),
        response_information.is_some(),
        server_reference.is_some(),
        reason_string.is_some(),
        receive_maximum.is_some(),
        topic_alias_maximum.is_some(),
        topic_alias.is_some(),
        maximum_qos.is_some(),
        retain_available.is_some(),
        maximum_packet_size.is_some(),
        wildcard_subscription_available.is_some(),
        subscription_identifier_available.is_some(),
        shared_subscription_available.is_some(),
    ];
    let bits = present
        .iter()
        .enumerate()
        .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << i));
    w.u32(bits);
    let u8s = |w: &mut Writer, v: &Option<u8>| {
        if let Some(v) = v {
            w.u8(*v);
        }
    };
    let u16s = |w: &mut Writer, v: &Option<u16>| {
        if let Some(v) = v {
            w.u16(*v);
        }
    };
    let u32s = |w: &mut Writer, v: &Option<u32>| {
        if let Some(v) = v {
            w.u32(*v);
        }
    };
    let strs = |w: &mut Writer, v: &Option<String>| {
        if let Some(v) = v {
            w.str(v);
        }
    };
    let bins = |w: &mut Writer, v: &Option<Bytes>| {
        if let Some(v) = v {
            w.bytes(v);
        }
    };
    u8s(w, payload_format_indicator);
    u32s(w, message_expiry_interval);
    strs(w, content_type);
    strs(w, response_topic);
    bins(w, correlation_data);
    u32s(w, session_expiry_interval);
    strs(w, assigned_client_identifier);
    u16s(w, server_keep_alive);
    strs(w, authentication_method);
    bins(w, authentication_data);
    u8s(w, request_problem_information);
    u32s(w, will_delay_interval);
    u8s(w, request_response_information);
    strs(w, response_information);
    strs(w, server_reference);
    strs(w, reason_string);
    u16s(w, receive_maximum);
    u16s(w, topic_alias_maximum);
    u16s(w, topic_alias);
    u8s(w, maximum_qos);
    u8s(w, retain_available);
    u32s(w, maximum_packet_size);
    u8s(w, wildcard_subscription_available);
    u8s(w, subscription_identifier_available);
    u8s(w, shared_subscription_available);
    w.u32_list(subscription_identifiers);
    w.u32(u32::try_from(user_properties.len()).unwrap_or(u32::MAX));
    for (k, v) in user_properties {
        w.str(k);
        w.str(v);
    }
}

fn read_properties(r: &mut Reader<'_>) -> Result<Properties> {
    let mut p = Properties::default();
    match r.u8()? {
        0 => return Ok(p),
        1 => {}
        _ => return Err(DecodeError("bad properties tag")),
    }
    let bits = r.u32()?;
    if bits >> 25 != 0 {
        return Err(DecodeError("unknown property bits"));
    }
    let mut i = 0;
    let mut has = || {
        let b = bits & (1 << i) != 0;
        i += 1;
        b
    };
    macro_rules! field {
        ($f:ident, $read:ident) => {
            if has() {
                p.$f = Some(r.$read()?);
            }
        };
    }
    field!(payload_format_indicator, u8);
    field!(message_expiry_interval, u32);
    field!(content_type, string);
    field!(response_topic, string);
    field!(correlation_data, payload);
    field!(session_expiry_interval, u32);
    field!(assigned_client_identifier, string);
    field!(server_keep_alive, u16);
    field!(authentication_method, string);
    field!(authentication_data, payload);
    field!(request_problem_information, u8);
    field!(will_delay_interval, u32);
    field!(request_response_information, u8);
    field!(response_information, string);
    field!(server_reference, string);
    field!(reason_string, string);
    field!(receive_maximum, u16);
    field!(topic_alias_maximum, u16);
    field!(topic_alias, u16);
    field!(maximum_qos, u8);
    field!(retain_available, u8);
    field!(maximum_packet_size, u32);
    field!(wildcard_subscription_available, u8);
    field!(subscription_identifier_available, u8);
    field!(shared_subscription_available, u8);
    p.subscription_identifiers = r.u32_list()?;
    let n = r.count(8)?;
    p.user_properties = Vec::with_capacity(n);
    for _ in 0..n {
        p.user_properties.push((r.string()?, r.string()?));
    }
    Ok(p)
}

// ---- primitives ----

struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Self {
        let mut v = Vec::with_capacity(64);
        v.push(RECORD_V1);
        Self(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        // Values are bounded by the maximum packet size, far below 4 GiB.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn u32_list(&mut self, l: &[u32]) {
        self.u32(u32::try_from(l.len()).unwrap_or(u32::MAX));
        for v in l {
            self.u32(*v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self(b)
    }
    /// A value: checks the record version byte.
    fn record(b: &'a [u8]) -> Result<Self> {
        let mut r = Self(b);
        match r.u8()? {
            RECORD_V1 => Ok(r),
            _ => Err(DecodeError("unknown record version")),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(DecodeError("truncated value"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn rest(&self) -> &'a [u8] {
        self.0
    }
    fn end(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes in value"))
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad boolean")),
        }
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u16_be(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn opt_u32(&mut self) -> Result<Option<u32>> {
        if self.bool()? {
            self.u32().map(Some)
        } else {
            Ok(None)
        }
    }
    fn opt_u64(&mut self) -> Result<Option<u64>> {
        if self.bool()? {
            self.u64().map(Some)
        } else {
            Ok(None)
        }
    }
    /// A count of items at least `min_size` bytes each, checked against what is left so that
    /// a corrupt count cannot allocate much.
    fn count(&mut self, min_size: usize) -> Result<usize> {
        let n = usize::try_from(self.u32()?).map_err(|_| DecodeError("bad count"))?;
        if n.saturating_mul(min_size) > self.0.len() {
            return Err(DecodeError("truncated value"));
        }
        Ok(n)
    }
    fn slice(&mut self) -> Result<&'a [u8]> {
        let n = self.count(1)?;
        self.take(n)
    }
    fn payload(&mut self) -> Result<Bytes> {
        self.slice().map(Bytes::copy_from_slice)
    }
    fn string(&mut self) -> Result<String> {
        let s = self.slice()?;
        std::str::from_utf8(s)
            .map(str::to_owned)
            .map_err(|_| DecodeError("string is not UTF-8"))
    }
    fn u32_list(&mut self) -> Result<Vec<u32>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_properties() -> Properties {
        Properties::from(moat_codec::PropertySet {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("re/sp".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            subscription_identifiers: vec![1, 268_435_455],
            session_expiry_interval: Some(7),
            assigned_client_identifier: Some("a".into()),
            server_keep_alive: Some(30),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"d")),
            request_problem_information: Some(0),
            will_delay_interval: Some(5),
            request_response_information: Some(1),
            response_information: Some("ri".into()),
            server_reference: Some("sr".into()),
            reason_string: Some("rs".into()),
            receive_maximum: Some(10),
            topic_alias_maximum: Some(11),
            topic_alias: Some(12),
            maximum_qos: Some(1),
            retain_available: Some(1),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            maximum_packet_size: Some(1000),
            wildcard_subscription_available: Some(0),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(0),
        })
    }

    fn message(properties: Properties) -> StoredMessage {
        StoredMessage {
            topic: "a/b/ü".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
            expires_at_ms: Some(1_700_000_000_000),
            subscription_ids: vec![3, 4],
        }
    }

    #[test]
    fn messages_round_trip() {
        for p in [Properties::default(), full_properties()] {
            let m = message(p);
            for s in [
                StoredState::Queued,
                StoredState::Sent(1),
                StoredState::Released(65535),
            ] {
                let v = encode_outgoing(&m, s);
                assert_eq!(decode_outgoing(&v), Ok((m.clone(), s)));
                assert_eq!(&v[STATE_RANGE], &encode_state(s));
            }
            assert_eq!(decode_retained(&encode_retained(&m)), Ok(m));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let v = encode_outgoing(&message(full_properties()), StoredState::Sent(9));
        for n in 0..v.len() {
            assert!(decode_outgoing(&v[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn options_round_trip() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for rh in [
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendAtSubscribeIfNew,
                RetainHandling::DoNotSend,
            ] {
                for (nl, rap) in [(false, true), (true, false)] {
                    let o = SubscriptionOptions {
                        qos,
                        no_local: nl,
                        retain_as_published: rap,
                        retain_handling: rh,
                    };
                    let v = encode_subscription(o, Some(5));
                    assert_eq!(decode_subscription(&v), Ok((o, Some(5))));
                }
            }
        }
    }

    #[test]
    fn client_keys_do_not_overlap() {
        let a = key_with("a/b", b"x");
        let (id, rest) = split_client_key(&a).unwrap();
        assert_eq!((id, rest), ("a/b", &b"x"[..]));
        // "a" is not a prefix of "ab"'s keys.
        assert!(!key_with("ab", b"").starts_with(&client_prefix("a")));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
