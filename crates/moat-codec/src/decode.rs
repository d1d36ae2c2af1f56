//! Bytes to packets.
//!
//! Decoding happens in two steps. The fixed header is checked first (packet type, reserved
//! flags, remaining length, maximum packet size), so that an oversized or nonsensical packet is
//! refused before its body arrives. Once the whole packet is buffered, its bytes are split off
//! the input and the body is read with a [`Reader`] that checks every length.
//!
//! Every error names the rule it enforces: an MQTT 5.0 conformance statement ("MQTT-3.3.1-4")
//! where the specification numbers one, otherwise the MQTT 5.0 section that states the rule
//! ("section 2.2.2.2"). Rules that exist only in 3.1.1 cite that version's numbering.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, PacketType, ProtocolVersion,
    PubAck, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use crate::properties::{Properties, PropertyContext, PropertyId};
use crate::read::{malformed, protocol, Reader};
use crate::reason::ReasonCode;
use crate::DEFAULT_MAX_PACKET_SIZE;

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
        Self {
            version: ProtocolVersion::V3_1_1,
            max_packet_size,
        }
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
    /// The PUBLISH payload, the will payload, the password and binary properties are zero-copy
    /// slices of `buf`'s storage.
    ///
    /// # Errors
    /// [`DecodeError`] for malformed packets and protocol violations; the connection should then
    /// be closed (after a DISCONNECT or CONNACK with [`DecodeError::reason_code`] for v5). What
    /// is left in `buf` after an error is unspecified: the packet's bytes may have been removed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(frame) = self.frame(buf)? else {
            return Ok(None);
        };
        // No `reserve` for the missing bytes here: a peer could then make us allocate the
        // maximum packet size per connection by sending a five-byte header.
        if buf.len() < frame.size {
            return Ok(None);
        }
        let mut body = buf.split_to(frame.size).freeze();
        body.advance(frame.header_len);
        decode_body(frame.kind, frame.flags, Reader::new(body), self.version).map(Some)
    }

    /// Whether [`Codec::decode`] would take something from the front of `buf`: a whole packet,
    /// or an error its fixed header already shows. `false` means `decode` would return
    /// `Ok(None)`: more bytes are needed. Cheap (the fixed header only), so a reader can ask
    /// before it waits for more input.
    pub fn is_decodable(&self, buf: &[u8]) -> bool {
        match self.frame(buf) {
            Ok(Some(frame)) => buf.len() >= frame.size,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Checks the fixed header at the front of `buf` (packet type, reserved flags, remaining
    /// length, maximum packet size); `None` while it is incomplete.
    fn frame(&self, buf: &[u8]) -> Result<Option<Frame>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let kind = packet_type(first, self.version)?;
        let Some((remaining, length_bytes)) = remaining_length(buf.get(1..).unwrap_or(&[]))? else {
            return Ok(None);
        };
        let header_len = 1 + length_bytes;
        let size = header_len + remaining;
        let max = usize::try_from(self.max_packet_size).unwrap_or(usize::MAX);
        if size > max {
            return Err(DecodeError::PacketTooLarge { size, max });
        }
        Ok(Some(Frame {
            kind,
            flags: first & 0x0F,
            header_len,
            size,
        }))
    }
}

/// The protocol version a CONNECT at the front of `buf` declares, as soon as its protocol name
/// and level have arrived, before (and whether or not) the rest of it decodes: a server can
/// then answer a CONNECT it refuses in the CONNECT's own version (a v5 CONNACK with the reason
/// code). `None` for anything else: another packet, a name or level this crate does not speak,
/// or too few bytes yet.
pub fn connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (_, length_bytes) = remaining_length(buf.get(1..)?).ok()??;
    let rest = buf.get(1 + length_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    let level = *rest.get(2 + name_len)?;
    match (name, level) {
        (b"MQTT", 4) => Some(ProtocolVersion::V3_1_1),
        (b"MQTT", 5) => Some(ProtocolVersion::V5),
        (b"MQIsdp", 3) => Some(ProtocolVersion::V3_1),
        _ => None,
    }
}

/// A checked fixed header.
struct Frame {
    kind: PacketType,
    /// The low four bits of the first byte.
    flags: u8,
    header_len: usize,
    /// The whole packet's size, header included.
    size: usize,
}

impl Default for Codec {
    /// A decoder for MQTT 3.1.1 (until [`Codec::set_version`]) with [`DEFAULT_MAX_PACKET_SIZE`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PACKET_SIZE)
    }
}

/// Checks the first byte of the fixed header: a known packet type with its reserved flags set
/// as the specification lists them (Table 2-2).
fn packet_type(first: u8, version: ProtocolVersion) -> Result<PacketType, DecodeError> {
    use PacketType as T;
    let flags = first & 0x0F;
    let (kind, expected, clause) = match first >> 4 {
        0 => return Err(malformed("reserved packet type 0", "section 2.1.2")),
        1 => (T::Connect, 0, "MQTT-2.1.3-1"),
        2 => (T::ConnAck, 0, "MQTT-2.1.3-1"),
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(malformed("PUBLISH with both QoS bits set", "MQTT-3.3.1-4"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(malformed("DUP flag set on a QoS 0 PUBLISH", "MQTT-3.3.1-2"));
            }
            return Ok(T::Publish);
        }
        4 => (T::PubAck, 0, "MQTT-2.1.3-1"),
        5 => (T::PubRec, 0, "MQTT-2.1.3-1"),
        6 => (T::PubRel, 0b0010, "MQTT-3.6.1-1"),
        7 => (T::PubComp, 0, "MQTT-2.1.3-1"),
        8 => (T::Subscribe, 0b0010, "MQTT-3.8.1-1"),
        9 => (T::SubAck, 0, "MQTT-2.1.3-1"),
        10 => (T::Unsubscribe, 0b0010, "MQTT-3.10.1-1"),
        11 => (T::UnsubAck, 0, "MQTT-2.1.3-1"),
        12 => (T::PingReq, 0, "MQTT-2.1.3-1"),
        13 => (T::PingResp, 0, "MQTT-2.1.3-1"),
        14 => (T::Disconnect, 0, "MQTT-3.14.1-1"),
        _ if version.is_v5() => (T::Auth, 0, "MQTT-3.15.1-1"),
        _ => {
            return Err(malformed(
                "packet type 15 (AUTH) is reserved before MQTT 5.0",
                "MQTT-3.1.1 section 2.2.1",
            ))
        }
    };
    if flags != expected {
        return Err(malformed(
            "reserved fixed header flags are not as specified",
            clause,
        ));
    }
    Ok(kind)
}

/// Reads the Remaining Length after the first byte: `Some((value, bytes used))`, or `None`
/// while its last byte has not arrived.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(malformed(
            "remaining length longer than four bytes",
            "section 1.5.5",
        ));
    }
    Ok(None)
}

fn decode_body(
    kind: PacketType,
    flags: u8,
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    Ok(match kind {
        PacketType::Connect => Packet::Connect(Box::new(connect(r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(r, version)?),
        PacketType::Publish => Packet::Publish(publish(flags, r, v5)?),
        PacketType::PubAck => Packet::PubAck(puback(r, v5, kind)?),
        PacketType::PubRec => Packet::PubRec(puback(r, v5, kind)?),
        PacketType::PubRel => Packet::PubRel(puback(r, v5, kind)?),
        PacketType::PubComp => Packet::PubComp(puback(r, v5, kind)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(r, v5)?),
        PacketType::SubAck => Packet::SubAck(suback(r, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(r, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(r, v5)?),
        PacketType::PingReq => {
            r.finish()?;
            Packet::PingReq
        }
        PacketType::PingResp => {
            r.finish()?;
            Packet::PingResp
        }
        PacketType::Disconnect => {
            let mut disconnect = Disconnect::default();
            if v5 && !r.is_empty() {
                disconnect.reason_code = ReasonCode(r.u8()?);
                if !r.is_empty() {
                    disconnect.properties = read_properties(&mut r, PropertyContext::Packet(kind))?;
                }
            }
            r.finish()?;
            Packet::Disconnect(disconnect)
        }
        PacketType::Auth => {
            // Only reached for v5 (packet_type refuses type 15 otherwise). A remaining length
            // of 0 means success without properties; otherwise both fields are present.
            let mut auth = Auth::default();
            if !r.is_empty() {
                auth.reason_code = ReasonCode(r.u8()?);
                auth.properties = read_properties(&mut r, PropertyContext::Packet(kind))?;
            }
            r.finish()?;
            Packet::Auth(auth)
        }
    })
}

fn connect(mut r: Reader) -> Result<Connect, DecodeError> {
    let name = r.string()?;
    let level = r.u8()?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocolVersion { name, level }),
    };
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed("reserved CONNECT flag is set", "MQTT-3.1.2-3"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let will_qos = match (will_flag, QoS::from_u8((flags >> 3) & 0x03)) {
        (true, Some(qos)) => qos,
        (true, None) => {
            let clause = if v5 { "MQTT-3.1.2-12" } else { "MQTT-3.1.2-14" };
            return Err(malformed("will QoS 3", clause));
        }
        (false, Some(QoS::AtMostOnce)) => QoS::AtMostOnce,
        (false, _) => {
            let clause = if v5 { "MQTT-3.1.2-11" } else { "MQTT-3.1.2-13" };
            return Err(malformed("will QoS set without the will flag", clause));
        }
    };
    if !will_flag && will_retain {
        let clause = if v5 { "MQTT-3.1.2-13" } else { "MQTT-3.1.2-15" };
        return Err(malformed("will retain set without the will flag", clause));
    }
    if !v5 && password_flag && !username_flag {
        return Err(malformed(
            "password flag set without the user name flag",
            "MQTT-3.1.2-22",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        read_properties(&mut r, PropertyContext::Packet(PacketType::Connect))?
    } else {
        Properties::default()
    };

    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            read_properties(&mut r, PropertyContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;

    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    let code = r.u8()?;
    let ack = match version {
        ProtocolVersion::V5 => ConnAck {
            session_present: connack_flags(flags)?,
            reason_code: ReasonCode(code),
            properties: read_properties(&mut r, PropertyContext::Packet(PacketType::ConnAck))?,
        },
        // In 3.1 the first byte is "reserved, not used": there is no session present flag.
        ProtocolVersion::V3_1 | ProtocolVersion::V3_1_1 => ConnAck {
            session_present: version == ProtocolVersion::V3_1_1 && connack_flags(flags)?,
            reason_code: ReasonCode::from_v3_connack(code).ok_or(malformed(
                "CONNACK return code above 5",
                "MQTT-3.1.1 section 3.2.2.3",
            ))?,
            properties: Properties::default(),
        },
    };
    r.finish()?;
    Ok(ack)
}

/// The Connect Acknowledge Flags: only bit 0, Session Present, may be set.
fn connack_flags(flags: u8) -> Result<bool, DecodeError> {
    if flags & 0xFE != 0 {
        return Err(malformed("reserved CONNACK flags are set", "MQTT-3.2.2-1"));
    }
    Ok(flags == 1)
}

fn publish(flags: u8, mut r: Reader, v5: bool) -> Result<Publish, DecodeError> {
    // packet_type has already refused QoS 3 and DUP with QoS 0.
    let qos = QoS::from_u8((flags >> 1) & 0x03)
        .ok_or(malformed("PUBLISH with both QoS bits set", "MQTT-3.3.1-4"))?;
    let topic = r.string()?;
    if has_wildcard(&topic) {
        // Well formed, but not a name a message can be published to: 0x90 (Topic Name
        // invalid) is more specific than 0x81 or 0x82.
        return Err(DecodeError::TopicNameInvalid {
            reason: "topic name contains a wildcard",
            clause: "MQTT-3.3.2-2",
        });
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(&mut r)?)
    };
    let properties = if v5 {
        read_properties(&mut r, PropertyContext::Packet(PacketType::Publish))?
    } else {
        Properties::default()
    };
    if topic.is_empty() {
        if !v5 {
            return Err(protocol("empty topic name", "MQTT-4.7.3-1"));
        }
        if properties.topic_alias.is_none() {
            return Err(protocol(
                "empty topic name without a topic alias",
                "section 3.3.2.1",
            ));
        }
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP. In v5 the reason code may be omitted (success) and so
/// may the properties.
fn puback(mut r: Reader, v5: bool, kind: PacketType) -> Result<PubAck, DecodeError> {
    let mut ack = PubAck::new(packet_id(&mut r)?);
    if v5 && !r.is_empty() {
        ack.reason_code = ReasonCode(r.u8()?);
        if !r.is_empty() {
            ack.properties = read_properties(&mut r, PropertyContext::Packet(kind))?;
        }
    }
    r.finish()?;
    Ok(ack)
}

fn subscribe(mut r: Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v5 {
        read_properties(&mut r, PropertyContext::Packet(PacketType::Subscribe))?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, v5)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        let clause = if v5 { "MQTT-3.8.3-2" } else { "MQTT-3.8.3-3" };
        return Err(protocol("SUBSCRIBE without a topic filter", clause));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    if !v5 {
        // 3.1.1 treats reserved bits and QoS 3 alike, as malformed [MQTT-3-8.3-4].
        if byte & 0xFC != 0 {
            return Err(malformed(
                "reserved subscription option bits are set",
                "MQTT-3.8.3-4",
            ));
        }
        let qos = QoS::from_u8(byte).ok_or(malformed("subscription with QoS 3", "MQTT-3.8.3-4"))?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    if byte & 0xC0 != 0 {
        return Err(malformed(
            "reserved subscription option bits are set",
            "MQTT-3.8.3-5",
        ));
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(protocol(
        "subscription with maximum QoS 3",
        "section 3.8.3.1",
    ))?;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(protocol("retain handling 3", "section 3.8.3.1")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn suback(mut r: Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v5 {
        read_properties(&mut r, PropertyContext::Packet(PacketType::SubAck))?
    } else {
        Properties::default()
    };
    let codes = r.rest();
    if !v5
        && codes
            .iter()
            .any(|c| !matches!(c, 0x00 | 0x01 | 0x02 | 0x80))
    {
        return Err(malformed(
            "SUBACK return code other than 0, 1, 2 or 0x80",
            "MQTT-3.9.3-2",
        ));
    }
    let reason_codes = codes.iter().map(|&c| ReasonCode(c)).collect();
    Ok(SubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

fn unsubscribe(mut r: Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if v5 {
        read_properties(&mut r, PropertyContext::Packet(PacketType::Unsubscribe))?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(protocol(
            "UNSUBSCRIBE without a topic filter",
            "MQTT-3.10.3-2",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn unsuback(mut r: Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    if !v5 {
        r.finish()?;
        return Ok(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reason_codes: Vec::new(),
        });
    }
    let properties = read_properties(&mut r, PropertyContext::Packet(PacketType::UnsubAck))?;
    let reason_codes = r.rest().iter().map(|&c| ReasonCode(c)).collect();
    Ok(UnsubAck {
        packet_id,
        properties,
        reason_codes,
    })
}

/// Whether a topic name holds a wildcard character ('+' or '#'), which only filters may.
fn has_wildcard(topic: &str) -> bool {
    topic.bytes().any(|b| b == b'+' || b == b'#')
}

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16()?).ok_or(protocol("packet identifier 0", "MQTT-2.2.1-3"))
}

/// Reads a Property Length and the properties it covers, checking that each identifier is
/// known and allowed in `ctx`, that none but User Property (and Subscription Identifier in
/// PUBLISH) repeats, and that values are in range.
fn read_properties(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
    let len = r.vbi()? as usize;
    if len > r.remaining() {
        return Err(malformed(
            "property length exceeds the packet",
            "section 2.2.2.1",
        ));
    }
    let mut p = Reader::new(r.take(len)?);
    let section = properties_section(ctx);
    let mut props = Properties::default();
    // One bit per identifier seen; every identifier is below 64.
    let mut seen = 0u64;
    while !p.is_empty() {
        let byte = p.u8()?;
        // Identifiers are Variable Byte Integers, but all defined ones fit in one byte: a byte
        // with the continuation bit is an unknown identifier as well.
        let id = PropertyId::from_u8(byte)
            .ok_or(malformed("unknown property identifier", "section 2.2.2.2"))?;
        if !id.allowed_in(ctx) {
            return Err(malformed(
                "property not allowed in this packet",
                "section 2.2.2.2",
            ));
        }
        let repeatable = id == PropertyId::UserProperty
            || (id == PropertyId::SubscriptionIdentifier
                && ctx == PropertyContext::Packet(PacketType::Publish));
        if !repeatable {
            let bit = 1u64 << byte;
            if seen & bit != 0 {
                return Err(protocol("property included more than once", section));
            }
            seen |= bit;
        }
        read_property(&mut p, id, &mut props, section)?;
    }
    Ok(props)
}

fn read_property(
    p: &mut Reader,
    id: PropertyId,
    props: &mut Properties,
    section: &'static str,
) -> Result<(), DecodeError> {
    use PropertyId as P;
    let flag = |p: &mut Reader| match p.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(protocol("property value other than 0 or 1", section)),
    };
    let non_zero_u16 = |p: &mut Reader| match p.u16()? {
        0 => Err(protocol("property value 0 is not allowed", section)),
        v => Ok(v),
    };
    match id {
        P::PayloadFormatIndicator => props.payload_format_indicator = Some(flag(p)?),
        P::MessageExpiryInterval => props.message_expiry_interval = Some(p.u32()?),
        P::ContentType => props.content_type = Some(p.string()?),
        P::ResponseTopic => {
            // In a PUBLISH and in will properties alike: the responder publishes to it.
            let topic = p.string()?;
            if has_wildcard(&topic) {
                return Err(protocol(
                    "response topic contains a wildcard",
                    "MQTT-3.3.2-14",
                ));
            }
            props.response_topic = Some(topic);
        }
        P::CorrelationData => props.correlation_data = Some(p.binary()?),
        P::SubscriptionIdentifier => match p.vbi()? {
            0 => return Err(protocol("subscription identifier 0", section)),
            v => props.subscription_identifiers.push(v),
        },
        P::SessionExpiryInterval => props.session_expiry_interval = Some(p.u32()?),
        P::AssignedClientIdentifier => props.assigned_client_identifier = Some(p.string()?),
        P::ServerKeepAlive => props.server_keep_alive = Some(p.u16()?),
        P::AuthenticationMethod => props.authentication_method = Some(p.string()?),
        P::AuthenticationData => props.authentication_data = Some(p.binary()?),
        P::RequestProblemInformation => props.request_problem_information = Some(flag(p)?),
        P::WillDelayInterval => props.will_delay_interval = Some(p.u32()?),
        P::RequestResponseInformation => props.request_response_information = Some(flag(p)?),
        P::ResponseInformation => props.response_information = Some(p.string()?),
        P::ServerReference => props.server_reference = Some(p.string()?),
        P::ReasonString => props.reason_string = Some(p.string()?),
        P::ReceiveMaximum => props.receive_maximum = Some(non_zero_u16(p)?),
        P::TopicAliasMaximum => props.topic_alias_maximum = Some(p.u16()?),
        P::TopicAlias => match p.u16()? {
            0 => {
                return Err(DecodeError::TopicAliasInvalid {
                    reason: "topic alias 0",
                    clause: "MQTT-3.3.2-8",
                })
            }
            v => props.topic_alias = Some(v),
        },
        P::MaximumQoS => props.maximum_qos = Some(flag(p)?),
        P::RetainAvailable => props.retain_available = Some(flag(p)?),
        P::UserProperty => {
            let name = p.string()?;
            let value = p.string()?;
            props.user_properties.push((name, value));
        }
        P::MaximumPacketSize => match p.u32()? {
            0 => return Err(protocol("maximum packet size 0", section)),
            v => props.maximum_packet_size = Some(v),
        },
        P::WildcardSubscriptionAvailable => {
            props.wildcard_subscription_available = Some(flag(p)?);
        }
        P::SubscriptionIdentifierAvailable => {
            props.subscription_identifier_available = Some(flag(p)?);
        }
        P::SharedSubscriptionAvailable => props.shared_subscription_available = Some(flag(p)?),
    }
    Ok(())
}

/// The MQTT 5.0 section that lists the properties of `ctx`: it states the rules on repeated
/// properties and on their values.
fn properties_section(ctx: PropertyContext) -> &'static str {
    use PacketType as T;
    match ctx {
        PropertyContext::Will => "section 3.1.3.2",
        PropertyContext::Packet(kind) => match kind {
            T::Connect => "section 3.1.2.11",
            T::ConnAck => "section 3.2.2.3",
            T::Publish => "section 3.3.2.3",
            T::PubAck => "section 3.4.2.2",
            T::PubRec => "section 3.5.2.2",
            T::PubRel => "section 3.6.2.2",
            T::PubComp => "section 3.7.2.2",
            T::Subscribe => "section 3.8.2.1",
            T::SubAck => "section 3.9.2.1",
            T::Unsubscribe => "section 3.10.2.1",
            T::UnsubAck => "section 3.11.2.1",
            T::Disconnect => "section 3.14.2.2",
            T::Auth => "section 3.15.2.2",
            T::PingReq | T::PingResp => "section 2.2.2",
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::test_vectors::{pid, vectors};
    use ProtocolVersion::{V3_1, V3_1_1, V5};

    const V3S: [ProtocolVersion; 2] = [V3_1, V3_1_1];

    /// Decodes exactly one packet that fills `bytes`.
    fn decode(version: ProtocolVersion, bytes: &[u8]) -> Result<Packet, DecodeError> {
        let mut codec = Codec::new(1 << 20);
        codec.set_version(version);
        let mut buf = BytesMut::from(bytes);
        let packet = codec.decode(&mut buf)?.expect("a whole packet");
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        Ok(packet)
    }

    fn decode_err(version: ProtocolVersion, bytes: &[u8]) -> DecodeError {
        match decode(version, bytes) {
            Ok(packet) => panic!("decoded {packet:?} from {bytes:02X?}"),
            Err(e) => e,
        }
    }

    /// Asserts a malformed-packet error citing `clause`.
    #[track_caller]
    fn assert_malformed(e: DecodeError, clause: &str) {
        assert!(
            matches!(e, DecodeError::Malformed { clause: c, .. } if c == clause),
            "expected malformed [{clause}], got {e:?}"
        );
        assert_eq!(e.reason_code(), ReasonCode::MALFORMED_PACKET);
    }

    /// Asserts a protocol error citing `clause`.
    #[track_caller]
    fn assert_protocol(e: DecodeError, clause: &str) {
        assert!(
            matches!(e, DecodeError::Protocol { clause: c, .. } if c == clause),
            "expected protocol error [{clause}], got {e:?}"
        );
        assert_eq!(e.reason_code(), ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn spec_vectors_decode() {
        for vector in vectors() {
            let packet = decode(vector.version, vector.bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", vector.name));
            assert_eq!(packet, vector.packet, "{}", vector.name);
        }
    }

    #[test]
    fn connect_is_decoded_by_the_version_it_declares() {
        for vector in vectors() {
            if let Packet::Connect(_) = vector.packet {
                for codec_version in [V3_1, V3_1_1, V5] {
                    assert_eq!(
                        decode(codec_version, vector.bytes),
                        Ok(vector.packet.clone())
                    );
                }
            }
        }
    }

    #[test]
    fn incomplete_input_returns_none_and_leaves_the_buffer() {
        for vector in vectors() {
            let mut codec = Codec::new(1 << 20);
            codec.set_version(vector.version);
            for end in 0..vector.bytes.len() {
                let mut buf = BytesMut::from(&vector.bytes[..end]);
                assert_eq!(
                    codec.decode(&mut buf),
                    Ok(None),
                    "{} cut at {end}",
                    vector.name
                );
                assert_eq!(&buf[..], &vector.bytes[..end]);
            }
        }
    }

    #[test]
    fn is_decodable_says_whether_decode_takes_something() {
        for vector in vectors() {
            let mut codec = Codec::new(1 << 20);
            codec.set_version(vector.version);
            for end in 0..vector.bytes.len() {
                assert!(!codec.is_decodable(&vector.bytes[..end]), "{}", vector.name);
            }
            let mut whole = BytesMut::from(vector.bytes);
            whole.extend_from_slice(b"\x30");
            assert!(codec.is_decodable(&whole), "{}", vector.name);
            assert!(codec.decode(&mut whole).is_ok_and(|p| p.is_some()));
            assert!(
                !codec.is_decodable(&whole),
                "{}: a lone first byte",
                vector.name
            );
        }
        // Errors the fixed header already shows: decode would return them.
        let codec = Codec::new(16);
        for bytes in [&b"\x00"[..], b"\x31\xff\xff\xff\xff", b"\x30\x7f"] {
            assert!(codec.is_decodable(bytes), "{bytes:02X?}");
        }
    }

    #[test]
    fn connect_version_is_known_from_name_and_level() {
        for vector in vectors() {
            let Packet::Connect(c) = &vector.packet else {
                assert_eq!(connect_version(vector.bytes), None, "{}", vector.name);
                continue;
            };
            // The name's length (2), "MQTT" or "MQIsdp", and the level after the fixed header.
            let (_, length_bytes) = remaining_length(&vector.bytes[1..]).unwrap().unwrap();
            let header = 1 + length_bytes;
            let known_at = header + 2 + if c.protocol == V3_1 { 6 } else { 4 } + 1;
            for end in 0..vector.bytes.len() {
                let expected = (end >= known_at).then_some(c.protocol);
                assert_eq!(
                    connect_version(&vector.bytes[..end]),
                    expected,
                    "{}",
                    vector.name
                );
            }
        }
        // Whatever follows: a CONNECT whose properties do not decode still declares v5.
        let bad = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x00\x03\x23\x00\x01\x00\x01c";
        assert!(Codec::default()
            .decode(&mut BytesMut::from(&bad[..]))
            .is_err());
        assert_eq!(connect_version(bad), Some(V5));
        for unknown in [
            &b"\x10\x0a\x00\x04MQTT\x06\x02\x00\x00"[..],
            b"\x10\x0a\x00\x04MQTX\x05",
        ] {
            assert_eq!(connect_version(unknown), None);
        }
    }

    #[test]
    fn packets_are_split_off_one_at_a_time() {
        let mut buf = BytesMut::from(&b"\xc0\x00\x40\x02\x00\x01\x30"[..]);
        let mut codec = Codec::default();
        assert_eq!(codec.decode(&mut buf), Ok(Some(Packet::PingReq)));
        assert_eq!(
            codec.decode(&mut buf),
            Ok(Some(Packet::PubAck(PubAck::new(pid(1)))))
        );
        assert_eq!(codec.decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], b"\x30");
    }

    #[test]
    fn publish_payload_is_a_slice_of_the_input() {
        let mut buf = BytesMut::from(&b"\x30\x0a\x00\x03a/bhello"[..]);
        let start = buf.as_ptr() as usize;
        let Some(Packet::Publish(p)) = Codec::default().decode(&mut buf).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(p.payload, Bytes::from_static(b"hello"));
        assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload was copied");
    }

    #[test]
    fn remaining_length_of_five_bytes_is_malformed() {
        // The error comes as soon as the fourth length byte still has its continuation bit.
        let e = decode_err(V3_1_1, b"\x30\xff\xff\xff\xff");
        assert_malformed(e, "section 1.5.5");
        let mut buf = BytesMut::from(&b"\x30\xff\xff\xff"[..]);
        assert_eq!(Codec::new(u32::MAX).decode(&mut buf), Ok(None));
    }

    #[test]
    fn largest_remaining_length_is_refused_by_size_not_format() {
        let mut buf = BytesMut::from(&b"\x30\xff\xff\xff\x7f"[..]);
        let e = Codec::default().decode(&mut buf).unwrap_err();
        let max = DEFAULT_MAX_PACKET_SIZE as usize;
        assert_eq!(
            e,
            DecodeError::PacketTooLarge {
                size: 268_435_460,
                max
            }
        );
    }

    #[test]
    fn packet_too_large_is_reported_before_the_body_arrives() {
        let mut codec = Codec::new(12);
        // Header says 11 more bytes: 13 in all.
        let mut buf = BytesMut::from(&b"\x30\x0b"[..]);
        let e = codec.decode(&mut buf).unwrap_err();
        assert_eq!(e, DecodeError::PacketTooLarge { size: 13, max: 12 });
        assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
        // Exactly the maximum is fine.
        let mut buf = BytesMut::from(&b"\x30\x0a\x00\x03a/bhello"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn packet_type_0_is_malformed() {
        assert_malformed(decode_err(V5, b"\x00\x00"), "section 2.1.2");
    }

    #[test]
    fn auth_is_malformed_before_v5() {
        for version in V3S {
            assert_malformed(decode_err(version, b"\xf0\x00"), "MQTT-3.1.1 section 2.2.1");
        }
    }

    #[test]
    fn reserved_fixed_header_flags_are_checked() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x11\x00", "MQTT-2.1.3-1"),
            (b"\x28\x02\x00\x00", "MQTT-2.1.3-1"),
            (b"\x41\x02\x00\x01", "MQTT-2.1.3-1"),
            (b"\x60\x02\x00\x01", "MQTT-3.6.1-1"),
            (b"\x63\x02\x00\x01", "MQTT-3.6.1-1"),
            (b"\x80\x06\x00\x01\x00\x01a\x00", "MQTT-3.8.1-1"),
            (b"\xa0\x05\x00\x01\x00\x01a", "MQTT-3.10.1-1"),
            (b"\xc2\x00", "MQTT-2.1.3-1"),
            (b"\xd4\x00", "MQTT-2.1.3-1"),
            (b"\xe1\x00", "MQTT-3.14.1-1"),
        ];
        for &(bytes, clause) in cases {
            for version in [V3_1_1, V5] {
                assert_malformed(decode_err(version, bytes), clause);
            }
        }
        assert_malformed(decode_err(V5, b"\xf1\x00"), "MQTT-3.15.1-1");
    }

    #[test]
    fn publish_with_qos_3_is_malformed() {
        assert_malformed(
            decode_err(V3_1_1, b"\x36\x07\x00\x03a/b\x00\x01"),
            "MQTT-3.3.1-4",
        );
    }

    #[test]
    fn publish_with_dup_and_qos_0_is_malformed() {
        assert_malformed(decode_err(V5, b"\x38\x06\x00\x03a/b\x00"), "MQTT-3.3.1-2");
    }

    #[test]
    fn packet_id_0_is_a_protocol_error() {
        let cases: &[&[u8]] = &[
            b"\x32\x07\x00\x03a/b\x00\x00",
            b"\x40\x02\x00\x00",
            b"\x82\x06\x00\x00\x00\x01a\x00",
            b"\xa2\x05\x00\x00\x00\x01a",
            b"\xb0\x02\x00\x00",
        ];
        for bytes in cases {
            assert_protocol(decode_err(V3_1_1, bytes), "MQTT-2.2.1-3");
        }
    }

    #[test]
    fn publish_topic_with_wildcards_is_an_invalid_topic_name() {
        let cases: &[(ProtocolVersion, &[u8])] = &[
            (V3_1_1, b"\x30\x05\x00\x03a/+"),
            (V3_1_1, b"\x30\x05\x00\x03a/#"),
            (V5, b"\x30\x06\x00\x03a/+\x00"),
            (V5, b"\x30\x04\x00\x01#\x00"),
        ];
        for &(version, bytes) in cases {
            let e = decode_err(version, bytes);
            assert!(
                matches!(
                    e,
                    DecodeError::TopicNameInvalid {
                        clause: "MQTT-3.3.2-2",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_NAME_INVALID);
        }
    }

    #[test]
    fn publish_topic_must_be_utf8_without_nul() {
        assert_malformed(
            decode_err(V3_1_1, b"\x30\x05\x00\x03a\xffb"),
            "MQTT-1.5.4-1",
        );
        assert_malformed(
            decode_err(V3_1_1, b"\x30\x05\x00\x03a\x00b"),
            "MQTT-1.5.4-2",
        );
    }

    #[test]
    fn empty_topic_needs_a_topic_alias() {
        for version in V3S {
            assert_protocol(decode_err(version, b"\x30\x03\x00\x00x"), "MQTT-4.7.3-1");
        }
        assert_protocol(decode_err(V5, b"\x30\x04\x00\x00\x00x"), "section 3.3.2.1");
    }

    #[test]
    fn publish_packet_id_missing_is_malformed() {
        // QoS 1 with the remaining length ending inside the packet id.
        assert_malformed(
            decode_err(V3_1_1, b"\x32\x06\x00\x03a/b\x00"),
            "section 2.1.4",
        );
    }

    #[test]
    fn unsupported_protocols_are_reported_with_name_and_level() {
        let cases: &[(&[u8], &str, u8)] = &[
            (b"\x10\x0a\x00\x04MQTT\x03\x02\x00\x00", "MQTT", 3),
            (b"\x10\x0a\x00\x04MQTT\x06\x02\x00\x00", "MQTT", 6),
            (b"\x10\x0c\x00\x06MQIsdp\x04\x02\x00\x00", "MQIsdp", 4),
            (b"\x10\x0a\x00\x04MQTX\x04\x02\x00\x00", "MQTX", 4),
            // Bridges set the top bit of the level (0x84): not supported.
            (b"\x10\x0a\x00\x04MQTT\x84\x02\x00\x00", "MQTT", 0x84),
        ];
        for &(bytes, name, level) in cases {
            let e = decode_err(V3_1_1, bytes);
            assert_eq!(
                e,
                DecodeError::UnsupportedProtocolVersion {
                    name: name.into(),
                    level
                }
            );
            assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
        }
    }

    /// A v3.1.1 CONNECT with client id "c" and the given flags and trailing payload.
    fn connect_311(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = b"\x00\x04MQTT\x04".to_vec();
        body.push(flags);
        body.extend_from_slice(b"\x00\x3c\x00\x01c");
        body.extend_from_slice(payload);
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        packet
    }

    /// A v5 CONNECT with client id "c", no properties, and the given flags and payload.
    fn connect_5(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = b"\x00\x04MQTT\x05".to_vec();
        body.push(flags);
        body.extend_from_slice(b"\x00\x3c\x00\x00\x01c");
        body.extend_from_slice(payload);
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend(body);
        packet
    }

    #[test]
    fn connect_reserved_flag_is_malformed() {
        assert_malformed(decode_err(V5, &connect_311(0x03, b"")), "MQTT-3.1.2-3");
        assert_malformed(decode_err(V5, &connect_5(0x01, b"")), "MQTT-3.1.2-3");
    }

    #[test]
    fn will_qos_without_will_flag_is_malformed() {
        assert_malformed(decode_err(V5, &connect_311(0x0A, b"")), "MQTT-3.1.2-13");
        assert_malformed(decode_err(V5, &connect_5(0x12, b"")), "MQTT-3.1.2-11");
    }

    #[test]
    fn will_retain_without_will_flag_is_malformed() {
        assert_malformed(decode_err(V5, &connect_311(0x22, b"")), "MQTT-3.1.2-15");
        assert_malformed(decode_err(V5, &connect_5(0x22, b"")), "MQTT-3.1.2-13");
    }

    #[test]
    fn will_qos_3_is_malformed() {
        let will = b"\x00\x01w\x00\x00";
        assert_malformed(decode_err(V5, &connect_311(0x1E, will)), "MQTT-3.1.2-14");
        assert_malformed(
            decode_err(V5, &connect_5(0x1E, b"\x00\x00\x01w\x00\x00")),
            "MQTT-3.1.2-12",
        );
    }

    #[test]
    fn v311_password_needs_a_user_name_but_v5_does_not() {
        assert_malformed(
            decode_err(V5, &connect_311(0x42, b"\x00\x01p")),
            "MQTT-3.1.2-22",
        );
        let Packet::Connect(c) = decode(V5, &connect_5(0x42, b"\x00\x01p")).unwrap() else {
            panic!("not a CONNECT");
        };
        assert_eq!(
            (c.username, c.password),
            (None, Some(Bytes::from_static(b"p")))
        );
    }

    #[test]
    fn connect_missing_a_flagged_field_is_malformed() {
        // User name flag set, user name absent.
        assert_malformed(decode_err(V3_1_1, &connect_311(0x82, b"")), "section 2.1.4");
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let cases: &[(ProtocolVersion, &[u8])] = &[
            (V3_1_1, &connect_311(0x02, b"junk")),
            (V5, &connect_5(0x02, b"junk")),
            (V3_1_1, b"\x20\x03\x00\x00\x00"),
            (V5, b"\x20\x04\x00\x00\x00\x00"),
            (V3_1_1, b"\x40\x03\x00\x01\x00"),
            (V3_1_1, b"\x62\x04\x00\x01\x00\x00"),
            (V5, b"\x40\x05\x00\x01\x00\x00\x00"),
            (V3_1_1, b"\xb0\x03\x00\x01\x00"),
            (V3_1_1, b"\xc0\x01\x00"),
            (V5, b"\xd0\x01\x00"),
            (V3_1_1, b"\xe0\x01\x00"),
            (V5, b"\xe0\x03\x00\x00\x00"),
            (V5, b"\xf0\x03\x00\x00\x00"),
        ];
        for &(version, bytes) in cases {
            assert_malformed(decode_err(version, bytes), "section 2.1.4");
        }
    }

    #[test]
    fn connack_reserved_flags_are_malformed() {
        assert_malformed(decode_err(V3_1_1, b"\x20\x02\x02\x00"), "MQTT-3.2.2-1");
        assert_malformed(decode_err(V5, b"\x20\x03\x80\x00\x00"), "MQTT-3.2.2-1");
    }

    #[test]
    fn v31_connack_has_no_session_present_flag() {
        let Packet::ConnAck(ack) = decode(V3_1, b"\x20\x02\x01\x00").unwrap() else {
            panic!("not a CONNACK");
        };
        assert!(!ack.session_present);
    }

    #[test]
    fn v3_connack_return_code_above_5_is_malformed() {
        assert_malformed(
            decode_err(V3_1_1, b"\x20\x02\x00\x06"),
            "MQTT-3.1.1 section 3.2.2.3",
        );
    }

    #[test]
    fn v5_connack_needs_its_property_length() {
        assert_malformed(decode_err(V5, b"\x20\x02\x00\x00"), "section 2.1.4");
    }

    #[test]
    fn subscribe_without_filters_is_a_protocol_error() {
        assert_protocol(decode_err(V3_1_1, b"\x82\x02\x00\x01"), "MQTT-3.8.3-3");
        assert_protocol(decode_err(V5, b"\x82\x03\x00\x01\x00"), "MQTT-3.8.3-2");
    }

    #[test]
    fn subscribe_filter_without_options_is_malformed() {
        assert_malformed(
            decode_err(V3_1_1, b"\x82\x05\x00\x01\x00\x01a"),
            "section 2.1.4",
        );
    }

    #[test]
    fn v3_subscription_options_allow_only_qos() {
        for options in [0x04, 0x08, 0x10, 0x40, 0x80] {
            let bytes = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', options];
            assert_malformed(decode_err(V3_1_1, &bytes), "MQTT-3.8.3-4");
        }
        assert_malformed(
            decode_err(V3_1_1, b"\x82\x06\x00\x01\x00\x01a\x03"),
            "MQTT-3.8.3-4",
        );
    }

    #[test]
    fn v5_subscription_options_reserved_bits_are_malformed() {
        for options in [0x40, 0x80] {
            let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', options];
            assert_malformed(decode_err(V5, &bytes), "MQTT-3.8.3-5");
        }
    }

    #[test]
    fn v5_subscription_qos_3_and_retain_handling_3_are_protocol_errors() {
        // Section 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3"
        // and "It is a Protocol Error to send a Retain Handling value of 3".
        for options in [0x03, 0x30] {
            let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', options];
            assert_protocol(decode_err(V5, &bytes), "section 3.8.3.1");
        }
    }

    #[test]
    fn subscribe_filters_are_not_checked_for_wildcard_syntax() {
        let Packet::Subscribe(s) = decode(V3_1_1, b"\x82\x08\x00\x01\x00\x03a#b\x00").unwrap()
        else {
            panic!("not a SUBSCRIBE");
        };
        assert_eq!(s.filters[0].0, "a#b");
        // An empty filter is left to the broker too.
        assert!(decode(V3_1_1, b"\x82\x05\x00\x01\x00\x00\x00").is_ok());
    }

    #[test]
    fn v3_suback_return_codes_are_checked() {
        assert_malformed(decode_err(V3_1_1, b"\x90\x03\x00\x01\x03"), "MQTT-3.9.3-2");
        assert_malformed(decode_err(V3_1_1, b"\x90\x03\x00\x01\x87"), "MQTT-3.9.3-2");
    }

    #[test]
    fn unsubscribe_without_filters_is_a_protocol_error() {
        assert_protocol(decode_err(V3_1_1, b"\xa2\x02\x00\x01"), "MQTT-3.10.3-2");
        assert_protocol(decode_err(V5, b"\xa2\x03\x00\x01\x00"), "MQTT-3.10.3-2");
    }

    #[test]
    fn auth_with_reason_code_but_no_property_length_is_malformed() {
        assert_malformed(decode_err(V5, b"\xf0\x01\x18"), "section 2.1.4");
    }

    /// A v5 PUBLISH of topic "t", QoS 0, with the given properties and no payload.
    fn publish_with(props: &[u8]) -> Vec<u8> {
        let mut packet = vec![
            0x30,
            4 + props.len() as u8,
            0x00,
            0x01,
            b't',
            props.len() as u8,
        ];
        packet.extend_from_slice(props);
        packet
    }

    #[test]
    fn properties_may_come_in_any_order() {
        let a = decode(V5, &publish_with(b"\x23\x00\x01\x01\x01")).unwrap();
        let b = decode(V5, &publish_with(b"\x01\x01\x23\x00\x01")).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unknown_property_is_malformed() {
        for id in [0x00, 0x04, 0x2B, 0x7F, 0x80] {
            assert_malformed(
                decode_err(V5, &publish_with(&[id, 0x00])),
                "section 2.2.2.2",
            );
        }
    }

    #[test]
    fn property_not_allowed_in_the_packet_is_malformed() {
        // Session expiry interval in PUBLISH; topic alias in CONNECT properties; will delay
        // interval in CONNECT properties rather than will properties; reason string in a will.
        assert_malformed(
            decode_err(V5, &publish_with(b"\x11\x00\x00\x00\x01")),
            "section 2.2.2.2",
        );
        let connect = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x00\x03\x23\x00\x01\x00\x01c";
        assert_malformed(decode_err(V5, connect), "section 2.2.2.2");
        let connect = b"\x10\x12\x00\x04MQTT\x05\x02\x00\x00\x05\x18\x00\x00\x00\x01\x00\x01c";
        assert_malformed(decode_err(V5, connect), "section 2.2.2.2");
        let will = b"\x04\x1f\x00\x01r\x00\x01w\x00\x00";
        assert_malformed(decode_err(V5, &connect_5(0x06, will)), "section 2.2.2.2");
        // User properties are not allowed in PINGREQ-like contexts, but PINGREQ has no
        // properties at all; a SUBACK may carry a reason string.
        assert!(decode(V5, b"\x90\x09\x00\x01\x05\x1f\x00\x02ok\x00").is_ok());
    }

    #[test]
    fn repeated_property_is_a_protocol_error() {
        let e = decode_err(V5, &publish_with(b"\x01\x00\x01\x01"));
        assert_protocol(e, "section 3.3.2.3");
        let connect = b"\x10\x18\x00\x04MQTT\x05\x02\x00\x00\x0a\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02\x00\x01c";
        assert_protocol(decode_err(V5, connect), "section 3.1.2.11");
        // A subscription identifier may repeat in PUBLISH but not in SUBSCRIBE.
        assert!(decode(V5, &publish_with(b"\x0b\x01\x0b\x02")).is_ok());
        let subscribe = b"\x82\x0a\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00";
        assert_protocol(decode_err(V5, subscribe), "section 3.8.2.1");
    }

    #[test]
    fn property_length_beyond_the_packet_is_malformed() {
        let mut bytes = publish_with(b"\x01\x00");
        bytes[5] = 3;
        assert_malformed(decode_err(V5, &bytes), "section 2.2.2.1");
        // A property whose value runs past the property length.
        assert_malformed(
            decode_err(V5, &publish_with(b"\x02\x00\x00")),
            "section 2.1.4",
        );
    }

    #[test]
    fn property_values_are_checked() {
        let publish_cases: &[(&[u8], &str)] = &[
            (b"\x01\x02", "section 3.3.2.3"),
            (b"\x0b\x00", "section 3.3.2.3"),
        ];
        for &(props, clause) in publish_cases {
            assert_protocol(decode_err(V5, &publish_with(props)), clause);
        }
        // Receive maximum 0, maximum packet size 0, request problem information 2 in CONNECT.
        for props in [&b"\x21\x00\x00"[..], b"\x27\x00\x00\x00\x00", b"\x17\x02"] {
            let mut body = b"\x00\x04MQTT\x05\x02\x00\x00".to_vec();
            body.push(props.len() as u8);
            body.extend_from_slice(props);
            body.extend_from_slice(b"\x00\x01c");
            let mut bytes = vec![0x10, body.len() as u8];
            bytes.extend(body);
            assert_protocol(decode_err(V5, &bytes), "section 3.1.2.11");
        }
        // Maximum QoS 2 and retain available 2 in CONNACK.
        for props in [&b"\x24\x02"[..], b"\x25\x02"] {
            let bytes = [&[0x20, 5, 0, 0, 2][..], props].concat();
            assert_protocol(decode_err(V5, &bytes), "section 3.2.2.3");
        }
    }

    #[test]
    fn topic_alias_0_is_an_invalid_topic_alias() {
        for bytes in [
            publish_with(b"\x23\x00\x00"),
            b"\x30\x06\x00\x00\x03\x23\x00\x00".to_vec(),
        ] {
            let e = decode_err(V5, &bytes);
            assert!(
                matches!(
                    e,
                    DecodeError::TopicAliasInvalid {
                        clause: "MQTT-3.3.2-8",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert_eq!(e.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
        }
    }

    #[test]
    fn response_topic_with_a_wildcard_is_a_protocol_error() {
        for topic in [&b"\x00\x03r/+"[..], b"\x00\x01#", b"\x00\x04r/#x"] {
            let props = [&[0x08][..], topic].concat();
            assert_protocol(decode_err(V5, &publish_with(&props)), "MQTT-3.3.2-14");
            // In will properties: will flag, then property length, the property, topic "w"
            // and an empty payload.
            let will = [&[props.len() as u8][..], &props, b"\x00\x01w\x00\x00"].concat();
            assert_protocol(decode_err(V5, &connect_5(0x06, &will)), "MQTT-3.3.2-14");
        }
        let Packet::Publish(p) = decode(V5, &publish_with(b"\x08\x00\x03r/s")).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(p.properties.response_topic.as_deref(), Some("r/s"));
    }

    #[test]
    fn user_property_strings_are_checked() {
        let e = decode_err(V5, &publish_with(b"\x26\x00\x01k\x00\x01\xff"));
        assert_malformed(e, "MQTT-1.5.4-1");
    }
}
