//! Property tests: generated packets survive encode/decode, decode is indifferent to how the
//! input is split, and no input makes the decoder panic.

mod common;

use bytes::{Bytes, BytesMut};
use moat_codec::{
    encode, encoded_len, Auth, Codec, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId,
    PacketType, Properties, PropertyContext, PropertyId, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Union;

use common::{assert_roundtrip, decode_all, VERSIONS};

// ---- strategies ----

/// Any UTF-8 string a decoder accepts: no U+0000.
fn string() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

/// A string without wildcards, as topic names and response topics are [MQTT-3.3.2-2],
/// [MQTT-3.3.2-14].
fn topic_name() -> impl Strategy<Value = String> {
    "[^\u{0}+#]{0,12}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|v| PacketId::new(v).expect("non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn reason_code() -> impl Strategy<Value = ReasonCode> {
    any::<u8>().prop_map(ReasonCode)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0..=1u8)
}

fn non_zero_u16() -> impl Strategy<Value = Option<u16>> {
    option::of(1..=u16::MAX)
}

/// Every property with a valid value; [`restrict`] then keeps those allowed in a context.
fn any_properties() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(binary()),
        vec(1..=268_435_455u32, 0..3),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(any::<u16>()),
    );
    let b = (
        option::of(string()),
        option::of(binary()),
        flag(),
        option::of(any::<u32>()),
        flag(),
        option::of(string()),
        option::of(string()),
        option::of(string()),
        non_zero_u16(),
    );
    let c = (
        option::of(any::<u16>()),
        non_zero_u16(),
        flag(),
        flag(),
        vec((string(), string()), 0..3),
        option::of(1..=u32::MAX),
        flag(),
        flag(),
        flag(),
    );
    (a, b, c).prop_map(|(a, b, c)| {
        Properties::from(moat_codec::PropertySet {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifier_available: c.7,
            shared_subscription_available: c.8,
        })
    })
}

/// Clears every property not allowed in `ctx` (per [`PropertyId::allowed_in`]), and keeps at
/// most one subscription identifier outside PUBLISH.
fn restrict(mut p: Properties, ctx: PropertyContext) -> Properties {
    use PropertyId as P;
    let ok = |id: PropertyId| id.allowed_in(ctx);
    macro_rules! keep {
        ($($id:ident => $field:ident),* $(,)?) => {
            $(if !ok(P::$id) { p.$field = Default::default(); })*
        };
    }
    keep! {
        PayloadFormatIndicator => payload_format_indicator,
        MessageExpiryInterval => message_expiry_interval,
        ContentType => content_type,
        ResponseTopic => response_topic,
        CorrelationData => correlation_data,
        SubscriptionIdentifier => subscription_identifiers,
        SessionExpiryInterval => session_expiry_interval,
        AssignedClientIdentifier => assigned_client_identifier,
        ServerKeepAlive => server_keep_alive,
        AuthenticationMethod => authentication_method,
        AuthenticationData => authentication_data,
        RequestProblemInformation => request_problem_information,
        WillDelayInterval => will_delay_interval,
        RequestResponseInformation => request_response_information,
        ResponseInformation => response_information,
        ServerReference => server_reference,
        ReasonString => reason_string,
        ReceiveMaximum => receive_maximum,
        TopicAliasMaximum => topic_alias_maximum,
        TopicAlias => topic_alias,
        MaximumQoS => maximum_qos,
        RetainAvailable => retain_available,
        UserProperty => user_properties,
        MaximumPacketSize => maximum_packet_size,
        WildcardSubscriptionAvailable => wildcard_subscription_available,
        SubscriptionIdentifierAvailable => subscription_identifier_available,
        SharedSubscriptionAvailable => shared_subscription_available,
    }
    if ctx != PropertyContext::Packet(PacketType::Publish) {
        p.subscription_identifiers.truncate(1);
    }
    p
}

/// Properties for `ctx`: none at all before v5.
fn properties(version: ProtocolVersion, ctx: PropertyContext) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        any_properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn packet_properties(version: ProtocolVersion, kind: PacketType) -> BoxedStrategy<Properties> {
    properties(version, PropertyContext::Packet(kind))
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    let will = (
        string(),
        binary(),
        qos(),
        any::<bool>(),
        properties(version, PropertyContext::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will),
        option::of(string()),
        option::of(binary()),
        packet_properties(version, PacketType::Connect),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before v5 a password needs a user name [MQTT-3.1.2-22].
                let username = match (&username, &password) {
                    (None, Some(_)) if !version.is_v5() => Some(String::new()),
                    _ => username,
                };
                Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<ConnAck> {
    match version {
        ProtocolVersion::V5 => (
            any::<bool>(),
            reason_code(),
            packet_properties(version, PacketType::ConnAck),
        )
            .prop_map(|(session_present, reason_code, properties)| ConnAck {
                session_present,
                reason_code,
                properties,
            })
            .boxed(),
        ProtocolVersion::V3_1 | ProtocolVersion::V3_1_1 => (any::<bool>(), 0..=5u8)
            .prop_map(move |(session_present, code)| ConnAck {
                // 3.1 has no session present flag.
                session_present: session_present && version == ProtocolVersion::V3_1_1,
                reason_code: ReasonCode::from_v3_connack(code).expect("0..=5"),
                properties: Properties::default(),
            })
            .boxed(),
    }
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        packet_properties(version, PacketType::Publish),
        binary(),
    )
        .prop_map(
            move |(dup, qos, retain, mut topic, id, mut properties, payload)| {
                if topic.is_empty() {
                    if version.is_v5() {
                        properties.topic_alias.get_or_insert(1);
                    } else {
                        topic.push('t');
                    }
                }
                let at_most_once = qos == QoS::AtMostOnce;
                Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { None } else { Some(id) },
                    properties,
                    payload,
                }
            },
        )
}

fn puback(version: ProtocolVersion, kind: PacketType) -> BoxedStrategy<PubAck> {
    if version.is_v5() {
        (packet_id(), reason_code(), packet_properties(version, kind))
            .prop_map(|(packet_id, reason_code, properties)| PubAck {
                packet_id,
                reason_code,
                properties,
            })
            .boxed()
    } else {
        packet_id().prop_map(PubAck::new).boxed()
    }
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if version.is_v5() {
        let retain_handling = select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendAtSubscribeIfNew,
            RetainHandling::DoNotSend,
        ]);
        (qos(), any::<bool>(), any::<bool>(), retain_handling)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed()
    }
}

/// SUBACK codes: anything in v5; granted QoS or 0x80 in 3.x.
fn suback_code(version: ProtocolVersion) -> BoxedStrategy<ReasonCode> {
    if version.is_v5() {
        reason_code().boxed()
    } else {
        select(vec![0x00, 0x01, 0x02, 0x80])
            .prop_map(ReasonCode)
            .boxed()
    }
}

fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let mut variants = vec![
        connect(version)
            .prop_map(|c| Packet::Connect(Box::new(c)))
            .boxed(),
        connack(version).prop_map(Packet::ConnAck).boxed(),
        publish(version).prop_map(Packet::Publish).boxed(),
        puback(version, PacketType::PubAck)
            .prop_map(Packet::PubAck)
            .boxed(),
        puback(version, PacketType::PubRec)
            .prop_map(Packet::PubRec)
            .boxed(),
        puback(version, PacketType::PubRel)
            .prop_map(Packet::PubRel)
            .boxed(),
        puback(version, PacketType::PubComp)
            .prop_map(Packet::PubComp)
            .boxed(),
        (
            packet_id(),
            packet_properties(version, PacketType::Subscribe),
            vec((string(), subscription_options(version)), 1..4),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            packet_id(),
            packet_properties(version, PacketType::SubAck),
            vec(suback_code(version), 0..4),
        )
            .prop_map(|(packet_id, properties, reason_codes)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties,
                    reason_codes,
                })
            })
            .boxed(),
        (
            packet_id(),
            packet_properties(version, PacketType::Unsubscribe),
            vec(string(), 1..4),
        )
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties,
                    filters,
                })
            })
            .boxed(),
        (
            packet_id(),
            packet_properties(version, PacketType::UnsubAck),
            vec(reason_code(), 0..4),
        )
            .prop_map(move |(packet_id, properties, codes)| {
                // 3.x UNSUBACK carries no reason codes.
                let reason_codes = if v5 { codes } else { Vec::new() };
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties,
                    reason_codes,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        variants.push(
            (
                reason_code(),
                packet_properties(version, PacketType::Disconnect),
            )
                .prop_map(|(reason_code, properties)| {
                    Packet::Disconnect(Disconnect {
                        reason_code,
                        properties,
                    })
                })
                .boxed(),
        );
        variants.push(
            (reason_code(), packet_properties(version, PacketType::Auth))
                .prop_map(|(reason_code, properties)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties,
                    })
                })
                .boxed(),
        );
    } else {
        variants.push(Just(Packet::Disconnect(Disconnect::default())).boxed());
    }
    Union::new(variants).boxed()
}

fn versioned_packets(max: usize) -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    select(VERSIONS.to_vec()).prop_flat_map(move |v| (Just(v), vec(packet(v), 1..=max)))
}

fn encode_all(packets: &[Packet], version: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    for p in packets {
        encode(p, version, &mut buf).expect("generated packets are valid");
    }
    buf
}

// ---- properties ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) decode(encode(p)) == p, and encoded_len is the number of bytes written.
    #[test]
    fn encode_then_decode_is_identity((version, packets) in versioned_packets(1)) {
        for p in &packets {
            assert_roundtrip(p, version);
        }
    }

    /// (b) The same packets come out however the byte stream is cut into chunks, and decode
    /// returns `None` (leaving the buffer alone) until a packet is complete.
    #[test]
    fn chunking_does_not_matter(
        (version, packets) in versioned_packets(5),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let stream = encode_all(&packets, version);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut codec = Codec::new(u32::MAX);
        codec.set_version(version);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[fed..cut]);
            fed = cut;
            loop {
                let before = buf.clone();
                match codec.decode(&mut buf) {
                    Ok(Some(p)) => decoded.push(p),
                    Ok(None) => {
                        prop_assert_eq!(&buf, &before);
                        break;
                    }
                    Err(e) => panic!("valid stream failed to decode: {e}"),
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    /// encoded_len agrees with encode for a batch in one buffer too.
    #[test]
    fn encoded_len_sums((version, packets) in versioned_packets(4)) {
        let total: usize = packets.iter().map(|p| encoded_len(p, version)).sum();
        prop_assert_eq!(encode_all(&packets, version).len(), total);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// (c) Arbitrary bytes never panic, for every version and small maximum sizes; whatever
    /// decodes re-encodes to itself.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..128),
        max in prop_oneof![0..48u32, Just(1 << 20)],
    ) {
        for version in VERSIONS {
            let out = decode_all(&bytes, version, max);
            if let Some(moat_codec::DecodeError::PacketTooLarge { size, max: m }) = out.error {
                prop_assert!(size > m);
            }
        }
    }

    /// (c) Valid encodings with a few bytes changed, inserted or cut never panic either. These
    /// reach far deeper into the decoder than random bytes do.
    #[test]
    fn mutated_encodings_never_panic(
        (version, packets) in versioned_packets(2),
        edits in vec((any::<Index>(), any::<u8>(), 0..3u8), 1..4),
        truncate in option::of(any::<Index>()),
        max in prop_oneof![0..48u32, Just(1 << 20)],
    ) {
        let mut bytes = encode_all(&packets, version).to_vec();
        for (at, byte, kind) in edits {
            let i = at.index(bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = byte,
                1 if i < bytes.len() => bytes[i] ^= 1 << (byte % 8),
                _ => bytes.insert(i, byte),
            }
        }
        if let Some(at) = truncate {
            bytes.truncate(at.index(bytes.len() + 1));
        }
        for decode_as in VERSIONS {
            decode_all(&bytes, decode_as, max);
        }
    }
}
