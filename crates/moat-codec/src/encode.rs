//! Packets to bytes.
//!
//! [`encode`] measures the packet first ([`measure`]): every length is computed and every field
//! checked before a byte is written, so a failed encode appends nothing, and the buffer grows at
//! most once. [`encoded_len`] runs the same measurement, so the two always agree.
//!
//! What is written is exactly what the decoder reads for `version`. Fields a version cannot carry
//! are left out rather than refused: properties, and reason codes where MQTT 3.x has none, are
//! dropped for 3.x (a v5 PUBLISH forwarded to a 3.1.1 subscriber loses its properties). Property
//! values, UTF-8 content and topic wildcards are the caller's to get right; the encoder refuses
//! only what it cannot represent or what would frame a packet the decoder rejects outright.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::EncodeError;
use crate::packet::{
    Connect, Packet, ProtocolVersion, PubAck, Publish, QoS, RetainHandling, SubscriptionOptions,
};
use crate::properties::Properties;
use crate::reason::ReasonCode;
use crate::MAX_REMAINING_LENGTH;

/// Appends the encoding of `packet` for `version` to `buf`.
///
/// CONNECT is encoded for the version it declares ([`Connect::protocol`]), as the decoder reads
/// it; `version` applies to every other packet.
///
/// # Errors
/// [`EncodeError`] when a field cannot be represented; nothing is appended then.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let lengths = measure(packet, version)?;
    buf.reserve(lengths.total());
    write(packet, version, &lengths, buf);
    Ok(())
}

/// The number of bytes [`encode`] would append (fixed header included): 0 when it would fail.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    measure(packet, version).map_or(0, |lengths| lengths.total())
}

/// [`encoded_len`] of `Packet::Publish(p)`, for a PUBLISH not (yet) in a [`Packet`].
pub fn publish_len(p: &Publish, version: ProtocolVersion) -> usize {
    let mut l = Lengths::default();
    publish_remaining(p, version.is_v5(), &mut l)
        .and_then(|remaining| within_limit(Lengths { remaining, ..l }))
        .map_or(0, |lengths| lengths.total())
}

/// The lengths that the fixed header and the property length fields announce.
#[derive(Debug, Clone, Copy, Default)]
struct Lengths {
    /// The Remaining Length.
    remaining: usize,
    /// The Property Length of the packet's properties (0 when absent or not written).
    properties: usize,
    /// The Property Length of the will properties in CONNECT.
    will_properties: usize,
}

impl Lengths {
    fn total(&self) -> usize {
        1 + vbi_len(self.remaining) + self.remaining
    }
}

/// Checks `packet` for `version` and computes its lengths.
fn measure(packet: &Packet, version: ProtocolVersion) -> Result<Lengths, EncodeError> {
    let v5 = version.is_v5();
    let mut l = Lengths::default();
    l.remaining = match packet {
        Packet::Connect(c) => {
            let v5 = c.protocol.is_v5();
            if !v5 && c.password.is_some() && c.username.is_none() {
                return Err(EncodeError::Invalid(
                    "password without a user name before MQTT 5.0",
                ));
            }
            let (name, _) = protocol_name(c.protocol);
            // Protocol name, level, flags, keep alive.
            let mut n = 2 + name.len() + 1 + 1 + 2;
            if v5 {
                l.properties = properties_len(&c.properties)?;
                n += vbi_len(l.properties) + l.properties;
            }
            n += string_len(&c.client_id, "client identifier")?;
            if let Some(will) = &c.will {
                if v5 {
                    l.will_properties = properties_len(&will.properties)?;
                    n += vbi_len(l.will_properties) + l.will_properties;
                }
                n += string_len(&will.topic, "will topic")?;
                n += binary_len(&will.payload, "will payload")?;
            }
            if let Some(username) = &c.username {
                n += string_len(username, "user name")?;
            }
            if let Some(password) = &c.password {
                n += binary_len(password, "password")?;
            }
            n
        }
        Packet::ConnAck(ack) => 2 + optional_properties(v5, &ack.properties, &mut l)?,
        Packet::Publish(p) => publish_remaining(p, v5, &mut l)?,
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            if v5 {
                l.properties = properties_len(&ack.properties)?;
            }
            match puback_form(ack, v5, l.properties) {
                AckForm::PacketId => 2,
                AckForm::ReasonCode => 3,
                AckForm::Properties => 3 + vbi_len(l.properties) + l.properties,
            }
        }
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::Invalid("SUBSCRIBE without a topic filter"));
            }
            let mut n = 2 + optional_properties(v5, &s.properties, &mut l)?;
            for (filter, _) in &s.filters {
                n += string_len(filter, "topic filter")? + 1;
            }
            n
        }
        Packet::SubAck(ack) => {
            2 + optional_properties(v5, &ack.properties, &mut l)? + ack.reason_codes.len()
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::Invalid("UNSUBSCRIBE without a topic filter"));
            }
            let mut n = 2 + optional_properties(v5, &u.properties, &mut l)?;
            for filter in &u.filters {
                n += string_len(filter, "topic filter")?;
            }
            n
        }
        Packet::UnsubAck(ack) => {
            if v5 {
                2 + optional_properties(v5, &ack.properties, &mut l)? + ack.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                l.properties = properties_len(&d.properties)?;
            }
            match disconnect_form(d.reason_code, v5, l.properties) {
                TrailerForm::Empty => 0,
                TrailerForm::ReasonCode => 1,
                TrailerForm::Properties => 1 + vbi_len(l.properties) + l.properties,
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::Invalid("AUTH does not exist before MQTT 5.0"));
            }
            l.properties = properties_len(&a.properties)?;
            match auth_form(a.reason_code, l.properties) {
                TrailerForm::Empty => 0,
                TrailerForm::ReasonCode | TrailerForm::Properties => {
                    1 + vbi_len(l.properties) + l.properties
                }
            }
        }
    };
    within_limit(l)
}

/// The Remaining Length of a PUBLISH (its property length goes to `l`).
fn publish_remaining(p: &Publish, v5: bool, l: &mut Lengths) -> Result<usize, EncodeError> {
    check_publish(p, v5)?;
    let mut n = string_len(&p.topic, "topic name")?;
    if p.packet_id.is_some() {
        n += 2;
    }
    Ok(n + optional_properties(v5, &p.properties, l)? + p.payload.len())
}

fn within_limit(l: Lengths) -> Result<Lengths, EncodeError> {
    if l.remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge(l.remaining));
    }
    Ok(l)
}

fn check_publish(p: &Publish, v5: bool) -> Result<(), EncodeError> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, Some(_)) => {
            return Err(EncodeError::Invalid(
                "QoS 0 PUBLISH with a packet identifier",
            ));
        }
        (QoS::AtLeastOnce | QoS::ExactlyOnce, None) => {
            return Err(EncodeError::Invalid(
                "QoS 1 or 2 PUBLISH without a packet identifier",
            ));
        }
        _ => {}
    }
    if p.dup && p.qos == QoS::AtMostOnce {
        return Err(EncodeError::Invalid("DUP flag on a QoS 0 PUBLISH"));
    }
    if p.topic.is_empty() && !(v5 && p.properties.topic_alias.is_some()) {
        return Err(EncodeError::Invalid(
            "empty topic name without a topic alias",
        ));
    }
    Ok(())
}

/// The Property Length field plus the properties, for packets that always carry them in v5.
fn optional_properties(
    v5: bool,
    props: &Properties,
    l: &mut Lengths,
) -> Result<usize, EncodeError> {
    if !v5 {
        return Ok(0);
    }
    l.properties = properties_len(props)?;
    Ok(vbi_len(l.properties) + l.properties)
}

/// How much of PUBACK, PUBREC, PUBREL and PUBCOMP follows the packet id.
enum AckForm {
    PacketId,
    ReasonCode,
    Properties,
}

fn puback_form(ack: &PubAck, v5: bool, properties_len: usize) -> AckForm {
    if !v5 || (ack.reason_code == ReasonCode::SUCCESS && properties_len == 0) {
        AckForm::PacketId
    } else if properties_len == 0 {
        AckForm::ReasonCode
    } else {
        AckForm::Properties
    }
}

/// How much of DISCONNECT and AUTH is written: nothing, the reason code, or both fields.
enum TrailerForm {
    Empty,
    ReasonCode,
    Properties,
}

fn disconnect_form(code: ReasonCode, v5: bool, properties_len: usize) -> TrailerForm {
    if !v5 || (code == ReasonCode::NORMAL_DISCONNECTION && properties_len == 0) {
        TrailerForm::Empty
    } else if properties_len == 0 {
        TrailerForm::ReasonCode
    } else {
        TrailerForm::Properties
    }
}

/// AUTH has no reason-code-only form: the property length must follow the reason code.
fn auth_form(code: ReasonCode, properties_len: usize) -> TrailerForm {
    if code == ReasonCode::SUCCESS && properties_len == 0 {
        TrailerForm::Empty
    } else {
        TrailerForm::Properties
    }
}

fn protocol_name(version: ProtocolVersion) -> (&'static [u8], u8) {
    match version {
        ProtocolVersion::V3_1 => (b"MQIsdp", 3),
        ProtocolVersion::V3_1_1 => (b"MQTT", 4),
        ProtocolVersion::V5 => (b"MQTT", 5),
    }
}

/// The encoded size of a UTF-8 Encoded String.
fn string_len(s: &str, field: &'static str) -> Result<usize, EncodeError> {
    binary_len(s.as_bytes(), field)
}

/// The encoded size of Binary Data.
fn binary_len(b: &[u8], field: &'static str) -> Result<usize, EncodeError> {
    if b.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong {
            field,
            len: b.len(),
        });
    }
    Ok(2 + b.len())
}

/// The size of a Variable Byte Integer.
fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The Property Length of `p`: the size of its properties, not counting the length field.
fn properties_len(p: &Properties) -> Result<usize, EncodeError> {
    let byte = |v: Option<u8>| v.map_or(0, |_| 2);
    let two = |v: Option<u16>| v.map_or(0, |_| 3);
    let four = |v: Option<u32>| v.map_or(0, |_| 5);
    let string =
        |v: &Option<String>, field| v.as_ref().map_or(Ok(0), |s| Ok(1 + string_len(s, field)?));
    let binary =
        |v: &Option<Bytes>, field| v.as_ref().map_or(Ok(0), |b| Ok(1 + binary_len(b, field)?));

    let mut n = byte(p.payload_format_indicator)
        + four(p.message_expiry_interval)
        + string(&p.content_type, "content type")?
        + string(&p.response_topic, "response topic")?
        + binary(&p.correlation_data, "correlation data")?
        + four(p.session_expiry_interval)
        + string(&p.assigned_client_identifier, "assigned client identifier")?
        + two(p.server_keep_alive)
        + string(&p.authentication_method, "authentication method")?
        + binary(&p.authentication_data, "authentication data")?
        + byte(p.request_problem_information)
        + four(p.will_delay_interval)
        + byte(p.request_response_information)
        + string(&p.response_information, "response information")?
        + string(&p.server_reference, "server reference")?
        + string(&p.reason_string, "reason string")?
        + two(p.receive_maximum)
        + two(p.topic_alias_maximum)
        + two(p.topic_alias)
        + byte(p.maximum_qos)
        + byte(p.retain_available)
        + four(p.maximum_packet_size)
        + byte(p.wildcard_subscription_available)
        + byte(p.subscription_identifier_available)
        + byte(p.shared_subscription_available);
    for &id in &p.subscription_identifiers {
        let id = id as usize;
        if id == 0 || id > MAX_REMAINING_LENGTH {
            return Err(EncodeError::Invalid(
                "subscription identifier outside 1..=268435455",
            ));
        }
        n += 1 + vbi_len(id);
    }
    for (name, value) in &p.user_properties {
        n +=
            1 + string_len(name, "user property name")? + string_len(value, "user property value")?;
    }
    Ok(n)
}

/// Writes a packet that [`measure`] accepted, with the lengths it computed.
fn write(packet: &Packet, version: ProtocolVersion, l: &Lengths, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    buf.put_u8(first_byte(packet));
    put_vbi(buf, l.remaining);
    match packet {
        Packet::Connect(c) => write_connect(c, l, buf),
        Packet::ConnAck(ack) => {
            match version {
                ProtocolVersion::V5 => {
                    buf.put_u8(u8::from(ack.session_present));
                    buf.put_u8(ack.reason_code.0);
                }
                ProtocolVersion::V3_1_1 => {
                    buf.put_u8(u8::from(ack.session_present));
                    buf.put_u8(ack.reason_code.to_v3_connack());
                }
                // MQTT 3.1 has no session present flag: the byte is reserved.
                ProtocolVersion::V3_1 => {
                    buf.put_u8(0);
                    buf.put_u8(ack.reason_code.to_v3_connack());
                }
            }
            if v5 {
                put_properties(buf, &ack.properties, l.properties);
            }
        }
        Packet::Publish(p) => {
            put_string(buf, &p.topic);
            if let Some(id) = p.packet_id {
                buf.put_u16(id.get());
            }
            if v5 {
                put_properties(buf, &p.properties, l.properties);
            }
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubRel(ack) | Packet::PubComp(ack) => {
            buf.put_u16(ack.packet_id.get());
            match puback_form(ack, v5, l.properties) {
                AckForm::PacketId => {}
                AckForm::ReasonCode => buf.put_u8(ack.reason_code.0),
                AckForm::Properties => {
                    buf.put_u8(ack.reason_code.0);
                    put_properties(buf, &ack.properties, l.properties);
                }
            }
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id.get());
            if v5 {
                put_properties(buf, &s.properties, l.properties);
            }
            for (filter, options) in &s.filters {
                put_string(buf, filter);
                buf.put_u8(subscription_options(options, v5));
            }
        }
        Packet::SubAck(ack) => {
            buf.put_u16(ack.packet_id.get());
            if v5 {
                put_properties(buf, &ack.properties, l.properties);
                for code in &ack.reason_codes {
                    buf.put_u8(code.0);
                }
            } else {
                // 3.x knows one failure code, 0x80; granted QoS values pass unchanged.
                for code in &ack.reason_codes {
                    buf.put_u8(if code.is_error() { 0x80 } else { code.0 });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id.get());
            if v5 {
                put_properties(buf, &u.properties, l.properties);
            }
            for filter in &u.filters {
                put_string(buf, filter);
            }
        }
        Packet::UnsubAck(ack) => {
            buf.put_u16(ack.packet_id.get());
            if v5 {
                put_properties(buf, &ack.properties, l.properties);
                for code in &ack.reason_codes {
                    buf.put_u8(code.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => match disconnect_form(d.reason_code, v5, l.properties) {
            TrailerForm::Empty => {}
            TrailerForm::ReasonCode => buf.put_u8(d.reason_code.0),
            TrailerForm::Properties => {
                buf.put_u8(d.reason_code.0);
                put_properties(buf, &d.properties, l.properties);
            }
        },
        Packet::Auth(a) => match auth_form(a.reason_code, l.properties) {
            TrailerForm::Empty => {}
            TrailerForm::ReasonCode | TrailerForm::Properties => {
                buf.put_u8(a.reason_code.0);
                put_properties(buf, &a.properties, l.properties);
            }
        },
    }
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn write_connect(c: &Connect, l: &Lengths, buf: &mut BytesMut) {
    let v5 = c.protocol.is_v5();
    let (name, level) = protocol_name(c.protocol);
    put_binary(buf, name);
    buf.put_u8(level);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        put_properties(buf, &c.properties, l.properties);
    }
    put_string(buf, &c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            put_properties(buf, &will.properties, l.will_properties);
        }
        put_string(buf, &will.topic);
        put_binary(buf, &will.payload);
    }
    if let Some(username) = &c.username {
        put_string(buf, username);
    }
    if let Some(password) = &c.password {
        put_binary(buf, password);
    }
}

fn subscription_options(o: &SubscriptionOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if !v5 {
        return qos;
    }
    let retain_handling = match o.retain_handling {
        RetainHandling::SendAtSubscribe => 0,
        RetainHandling::SendAtSubscribeIfNew => 1,
        RetainHandling::DoNotSend => 2,
    };
    qos | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3 | retain_handling << 4
}

fn put_vbi(buf: &mut BytesMut, mut v: usize) {
    loop {
        // v % 128 always fits in a byte.
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            return;
        }
    }
}

/// Writes Binary Data; `measure` has checked that the length fits in two bytes.
fn put_binary(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

fn put_string(buf: &mut BytesMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

/// Writes the Property Length and the properties, in identifier order.
fn put_properties(buf: &mut BytesMut, p: &Properties, len: usize) {
    put_vbi(buf, len);
    if len == 0 {
        return;
    }
    let byte = |buf: &mut BytesMut, id: u8, v: Option<u8>| {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u8(v);
        }
    };
    let two = |buf: &mut BytesMut, id: u8, v: Option<u16>| {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u16(v);
        }
    };
    let four = |buf: &mut BytesMut, id: u8, v: Option<u32>| {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u32(v);
        }
    };
    let string = |buf: &mut BytesMut, id: u8, v: &Option<String>| {
        if let Some(v) = v {
            buf.put_u8(id);
            put_string(buf, v);
        }
    };
    let binary = |buf: &mut BytesMut, id: u8, v: &Option<Bytes>| {
        if let Some(v) = v {
            buf.put_u8(id);
            put_binary(buf, v);
        }
    };
    byte(buf, 0x01, p.payload_format_indicator);
    four(buf, 0x02, p.message_expiry_interval);
    string(buf, 0x03, &p.content_type);
    string(buf, 0x08, &p.response_topic);
    binary(buf, 0x09, &p.correlation_data);
    for &id in &p.subscription_identifiers {
        buf.put_u8(0x0B);
        put_vbi(buf, id as usize);
    }
    four(buf, 0x11, p.session_expiry_interval);
    string(buf, 0x12, &p.assigned_client_identifier);
    two(buf, 0x13, p.server_keep_alive);
    string(buf, 0x15, &p.authentication_method);
    binary(buf, 0x16, &p.authentication_data);
    byte(buf, 0x17, p.request_problem_information);
    four(buf, 0x18, p.will_delay_interval);
    byte(buf, 0x19, p.request_response_information);
    string(buf, 0x1A, &p.response_information);
    string(buf, 0x1C, &p.server_reference);
    string(buf, 0x1F, &p.reason_string);
    two(buf, 0x21, p.receive_maximum);
    two(buf, 0x22, p.topic_alias_maximum);
    two(buf, 0x23, p.topic_alias);
    byte(buf, 0x24, p.maximum_qos);
    byte(buf, 0x25, p.retain_available);
    for (name, value) in &p.user_properties {
        buf.put_u8(0x26);
        put_string(buf, name);
        put_string(buf, value);
    }
    four(buf, 0x27, p.maximum_packet_size);
    byte(buf, 0x28, p.wildcard_subscription_available);
    byte(buf, 0x29, p.subscription_identifier_available);
    byte(buf, 0x2A, p.shared_subscription_available);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{
        Auth, ConnAck, Disconnect, PacketId, SubAck, Subscribe, UnsubAck, Unsubscribe,
    };
    use crate::test_vectors::{pid, vectors};
    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn encoded(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
        let mut buf = BytesMut::new();
        encode(packet, version, &mut buf)?;
        assert_eq!(
            encoded_len(packet, version),
            buf.len(),
            "encoded_len of {packet:?}"
        );
        Ok(buf.to_vec())
    }

    /// Asserts that encoding fails with `expected`, appends nothing and has length 0.
    #[track_caller]
    fn assert_refused(packet: &Packet, version: ProtocolVersion, expected: EncodeError) {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(encode(packet, version, &mut buf), Err(expected));
        assert_eq!(&buf[..], b"keep", "bytes were appended on error");
        assert_eq!(encoded_len(packet, version), 0);
    }

    fn publish(topic: &str, qos: QoS, packet_id: Option<PacketId>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn spec_vectors_encode() {
        for vector in vectors().into_iter().filter(|v| v.canonical) {
            let bytes = encoded(&vector.packet, vector.version)
                .unwrap_or_else(|e| panic!("{}: {e}", vector.name));
            assert_eq!(bytes, vector.bytes, "{}", vector.name);
        }
    }

    #[test]
    fn non_canonical_vectors_encode_to_the_compact_form() {
        for vector in vectors().into_iter().filter(|v| !v.canonical) {
            let bytes = encoded(&vector.packet, vector.version).unwrap();
            assert!(bytes.len() < vector.bytes.len(), "{}", vector.name);
        }
    }

    #[test]
    fn encode_appends_to_the_buffer() {
        let mut buf = BytesMut::from(&b"\xc0\x00"[..]);
        encode(&Packet::PingResp, V5, &mut buf).unwrap();
        assert_eq!(&buf[..], b"\xc0\x00\xd0\x00");
    }

    #[test]
    fn connect_is_encoded_by_the_version_it_declares() {
        for vector in vectors() {
            if let Packet::Connect(_) = vector.packet {
                for version in [V3_1, V3_1_1, V5] {
                    assert_eq!(encoded(&vector.packet, version).unwrap(), vector.bytes);
                }
            }
        }
    }

    #[test]
    fn remaining_length_sizes() {
        for (remaining, header) in [
            (127, &b"\x30\x7f"[..]),
            (128, b"\x30\x80\x01"),
            (16_383, b"\x30\xff\x7f"),
            (16_384, b"\x30\x80\x80\x01"),
        ] {
            let mut p = publish("t", QoS::AtMostOnce, None);
            p.payload = Bytes::from(vec![0; remaining - 3]);
            let bytes = encoded(&Packet::Publish(p), V3_1_1).unwrap();
            assert_eq!(&bytes[..header.len()], header);
            assert_eq!(bytes.len(), header.len() + remaining);
        }
        // The largest packet: measured only, to keep the test cheap.
        let mut p = publish("t", QoS::AtMostOnce, None);
        p.payload = Bytes::from(vec![0; MAX_REMAINING_LENGTH - 3]);
        assert_eq!(
            encoded_len(&Packet::Publish(p), V3_1_1),
            1 + 4 + MAX_REMAINING_LENGTH
        );
    }

    #[test]
    fn packet_too_large_is_refused() {
        let mut p = publish("t", QoS::AtMostOnce, None);
        // `vec![0; n]` does not touch the pages, so this costs no real memory.
        p.payload = Bytes::from(vec![0; MAX_REMAINING_LENGTH - 2]);
        let size = MAX_REMAINING_LENGTH + 1;
        assert_refused(
            &Packet::Publish(p),
            V3_1_1,
            EncodeError::PacketTooLarge(size),
        );
    }

    #[test]
    fn fields_longer_than_65535_bytes_are_refused() {
        let long = "a".repeat(65_536);
        let p = Packet::Publish(publish(&long, QoS::AtMostOnce, None));
        let expected = EncodeError::FieldTooLong {
            field: "topic name",
            len: 65_536,
        };
        assert_refused(&p, V3_1_1, expected);

        let mut p = publish("t", QoS::AtMostOnce, None);
        p.properties
            .user_properties
            .push(("k".into(), long.clone()));
        let expected = EncodeError::FieldTooLong {
            field: "user property value",
            len: 65_536,
        };
        assert_refused(&Packet::Publish(p.clone()), V5, expected);
        // v3 does not write properties, so their lengths do not matter.
        assert!(encoded(&Packet::Publish(p), V3_1_1).is_ok());

        let filters = vec![long.clone()];
        let u = Unsubscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters,
        };
        let expected = EncodeError::FieldTooLong {
            field: "topic filter",
            len: 65_536,
        };
        assert_refused(&Packet::Unsubscribe(u), V5, expected);

        // 65,535 bytes is the limit itself.
        let max = "a".repeat(65_535);
        assert!(encoded(&Packet::Publish(publish(&max, QoS::AtMostOnce, None)), V5).is_ok());
    }

    #[test]
    fn publish_packet_id_must_match_qos() {
        let p = Packet::Publish(publish("t", QoS::AtMostOnce, Some(pid(1))));
        let e = EncodeError::Invalid("QoS 0 PUBLISH with a packet identifier");
        assert_refused(&p, V5, e);
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let p = Packet::Publish(publish("t", qos, None));
            let e = EncodeError::Invalid("QoS 1 or 2 PUBLISH without a packet identifier");
            assert_refused(&p, V3_1_1, e);
        }
    }

    #[test]
    fn publish_dup_with_qos_0_is_refused() {
        let p = Publish {
            dup: true,
            ..publish("t", QoS::AtMostOnce, None)
        };
        let e = EncodeError::Invalid("DUP flag on a QoS 0 PUBLISH");
        assert_refused(&Packet::Publish(p), V5, e);
    }

    #[test]
    fn empty_topic_needs_v5_and_a_topic_alias() {
        let mut p = publish("", QoS::AtMostOnce, None);
        let e = EncodeError::Invalid("empty topic name without a topic alias");
        assert_refused(&Packet::Publish(p.clone()), V5, e.clone());
        p.properties.topic_alias = Some(1);
        assert_refused(&Packet::Publish(p.clone()), V3_1_1, e);
        assert!(encoded(&Packet::Publish(p), V5).is_ok());
    }

    #[test]
    fn v3_password_needs_a_user_name() {
        let connect = Connect {
            protocol: V3_1_1,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: Some(Bytes::from_static(b"p")),
            properties: Properties::default(),
        };
        let e = EncodeError::Invalid("password without a user name before MQTT 5.0");
        assert_refused(&Packet::Connect(Box::new(connect.clone())), V3_1_1, e);
        let v5 = Connect {
            protocol: V5,
            ..connect
        };
        assert!(encoded(&Packet::Connect(Box::new(v5)), V5).is_ok());
    }

    #[test]
    fn auth_is_refused_before_v5() {
        let e = EncodeError::Invalid("AUTH does not exist before MQTT 5.0");
        for version in [V3_1, V3_1_1] {
            assert_refused(&Packet::Auth(Auth::default()), version, e.clone());
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_need_a_filter() {
        let s = Subscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters: vec![],
        };
        let e = EncodeError::Invalid("SUBSCRIBE without a topic filter");
        assert_refused(&Packet::Subscribe(s), V5, e);
        let u = Unsubscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters: vec![],
        };
        let e = EncodeError::Invalid("UNSUBSCRIBE without a topic filter");
        assert_refused(&Packet::Unsubscribe(u), V3_1_1, e);
    }

    #[test]
    fn subscription_identifier_must_fit_a_variable_byte_integer() {
        for id in [0, 268_435_456, u32::MAX] {
            let mut p = publish("t", QoS::AtMostOnce, None);
            p.properties.subscription_identifiers = vec![id];
            let e = EncodeError::Invalid("subscription identifier outside 1..=268435455");
            assert_refused(&Packet::Publish(p), V5, e);
        }
        let mut p = publish("t", QoS::AtMostOnce, None);
        p.properties.subscription_identifiers = vec![268_435_455];
        let bytes = encoded(&Packet::Publish(p), V5).unwrap();
        assert_eq!(bytes, b"\x30\x0a\x00\x01t\x05\x0b\xff\xff\xff\x7fx");
    }

    #[test]
    fn v3_drops_properties() {
        let mut p = publish("a/b", QoS::AtLeastOnce, Some(pid(10)));
        p.properties.message_expiry_interval = Some(60);
        p.properties.user_properties.push(("k".into(), "v".into()));
        assert_eq!(
            encoded(&Packet::Publish(p), V3_1_1).unwrap(),
            b"\x32\x08\x00\x03a/b\x00\x0ax"
        );
    }

    #[test]
    fn v3_acks_drop_reason_codes() {
        let ack = PubAck {
            packet_id: pid(1),
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: Properties::from(crate::PropertySet {
                reason_string: Some("no".into()),
                ..Default::default()
            }),
        };
        assert_eq!(
            encoded(&Packet::PubRec(ack), V3_1_1).unwrap(),
            b"\x50\x02\x00\x01"
        );
        let unsuback = UnsubAck {
            packet_id: pid(1),
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        };
        assert_eq!(
            encoded(&Packet::UnsubAck(unsuback), V3_1_1).unwrap(),
            b"\xb0\x02\x00\x01"
        );
        let disconnect = Disconnect {
            reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
            ..Default::default()
        };
        assert_eq!(
            encoded(&Packet::Disconnect(disconnect), V3_1).unwrap(),
            b"\xe0\x00"
        );
    }

    #[test]
    fn v3_suback_maps_every_failure_to_0x80() {
        let ack = SubAck {
            packet_id: pid(2),
            properties: Properties::default(),
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::NOT_AUTHORIZED,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ],
        };
        let expected = b"\x90\x06\x00\x02\x02\x80\x01\x80";
        assert_eq!(
            encoded(&Packet::SubAck(ack.clone()), V3_1_1).unwrap(),
            expected
        );
        let v5 = b"\x90\x07\x00\x02\x00\x02\x87\x01\xa2";
        assert_eq!(encoded(&Packet::SubAck(ack), V5).unwrap(), v5);
    }

    #[test]
    fn v3_connack_maps_reason_codes_to_return_codes() {
        let ack = |session_present, reason_code| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties: Properties::default(),
            })
        };
        let cases = [
            (ReasonCode::SUCCESS, 0),
            (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, 1),
            (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, 2),
            (ReasonCode::SERVER_BUSY, 3),
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
            (ReasonCode::BANNED, 5),
        ];
        for (code, v3) in cases {
            assert_eq!(
                encoded(&ack(false, code), V3_1_1).unwrap(),
                [0x20, 0x02, 0x00, v3]
            );
        }
        assert_eq!(
            encoded(&ack(true, ReasonCode::SUCCESS), V3_1_1).unwrap(),
            b"\x20\x02\x01\x00"
        );
        // 3.1 has no session present flag.
        assert_eq!(
            encoded(&ack(true, ReasonCode::SUCCESS), V3_1).unwrap(),
            b"\x20\x02\x00\x00"
        );
    }

    #[test]
    fn v5_subscription_options_byte() {
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: false,
            retain_as_published: true,
            retain_handling: RetainHandling::SendAtSubscribeIfNew,
        };
        assert_eq!(subscription_options(&options, true), 0b0001_1010);
        assert_eq!(subscription_options(&options, false), 0b0000_0010);
    }

    #[test]
    fn every_property_is_written_once_in_identifier_order() {
        let props = Properties::from(crate::PropertySet {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(2),
            content_type: Some("c".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"d")),
            subscription_identifiers: vec![3],
            session_expiry_interval: Some(4),
            assigned_client_identifier: Some("a".into()),
            server_keep_alive: Some(5),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(b"x")),
            request_problem_information: Some(0),
            will_delay_interval: Some(6),
            request_response_information: Some(1),
            response_information: Some("i".into()),
            server_reference: Some("s".into()),
            reason_string: Some("why".into()),
            receive_maximum: Some(7),
            topic_alias_maximum: Some(8),
            topic_alias: Some(9),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![("k".into(), "v".into())],
            maximum_packet_size: Some(10),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(1),
        });
        let len = properties_len(&props).unwrap();
        let mut buf = BytesMut::new();
        put_properties(&mut buf, &props, len);
        let expected: &[u8] = b"\x5f\
            \x01\x01\x02\x00\x00\x00\x02\x03\x00\x01c\x08\x00\x01r\x09\x00\x01d\x0b\x03\
            \x11\x00\x00\x00\x04\x12\x00\x01a\x13\x00\x05\x15\x00\x01m\x16\x00\x01x\x17\x00\
            \x18\x00\x00\x00\x06\x19\x01\x1a\x00\x01i\x1c\x00\x01s\x1f\x00\x03why\
            \x21\x00\x07\x22\x00\x08\x23\x00\x09\x24\x01\x25\x00\x26\x00\x01k\x00\x01v\
            \x27\x00\x00\x00\x0a\x28\x01\x29\x00\x2a\x01";
        assert_eq!(&buf[..], expected);
        assert_eq!(len + 1, expected.len());
    }
}
