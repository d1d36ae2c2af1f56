//! MQTT 5 refusals carry the most specific reason code the specification gives, in the
//! DISCONNECT that ends a connection over a bad packet and in the CONNACK that refuses a bad
//! CONNECT; MQTT 3.1.1, which has no such codes, closes the connection without a word. Raw
//! packets over real sockets, each checked for its exact code and for the close after it.

use moat_codec::{ConnAck, Packet, ProtocolVersion, ReasonCode};
use moat_testkit::{RawClient, TestBroker};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A Variable Byte Integer.
fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A packet: the first byte, the remaining length, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    [&[first][..], &vbi(body.len()), body].concat()
}

/// A UTF-8 string field (or any bytes, for invalid ones): two-byte length, then the bytes.
fn string(s: &[u8]) -> Vec<u8> {
    let len = u16::try_from(s.len()).expect("short").to_be_bytes();
    [&len[..], s].concat()
}

/// Properties: their length, then `props` as given.
fn properties(props: &[u8]) -> Vec<u8> {
    [vbi(props.len()), props.to_vec()].concat()
}

/// A v5 QoS 0 PUBLISH of `topic` with the raw `props` and payload "x".
fn publish_v5(topic: &[u8], props: &[u8]) -> Vec<u8> {
    packet(
        0x30,
        &[string(topic), properties(props), b"x".to_vec()].concat(),
    )
}

/// A v5 CONNECT (clean start, keep-alive 60, client id `id`) with the raw `props`, and a will
/// to topic `w` with the raw `will_props` when given.
fn connect_v5(id: &[u8], props: &[u8], will_props: Option<&[u8]>) -> Vec<u8> {
    let flags: u8 = if will_props.is_some() { 0x06 } else { 0x02 };
    let mut body = [&string(b"MQTT")[..], &[5, flags, 0, 60]].concat();
    body.extend(properties(props));
    body.extend(string(id));
    if let Some(will) = will_props {
        body.extend(properties(will));
        body.extend(string(b"w"));
        body.extend(string(b"bye"));
    }
    packet(0x10, &body)
}

/// Sends `bytes` on a connected v5 client and expects a DISCONNECT with `code`, then the close.
async fn expect_disconnect(c: &mut RawClient, bytes: &[u8], code: ReasonCode, what: &str) {
    c.send_raw(bytes).await;
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, code, "{what}"),
        other => panic!("{what}: expected DISCONNECT {code:?}, got {other:?}"),
    }
    assert_eq!(c.recv().await, None, "{what}: the connection closes");
}

/// Sends `connect` as the first packet and expects a CONNACK with `code`, then the close.
async fn expect_connack(broker: &TestBroker, connect: &[u8], code: ReasonCode, what: &str) {
    let mut c = RawClient::open(broker.addr(), V5).await;
    c.send_raw(connect).await;
    match c.recv().await {
        Some(Packet::ConnAck(ConnAck {
            reason_code,
            session_present,
            ..
        })) => {
            assert_eq!(reason_code, code, "{what}");
            assert!(!session_present, "{what}");
        }
        other => panic!("{what}: expected CONNACK {code:?}, got {other:?}"),
    }
    assert_eq!(c.recv().await, None, "{what}: the connection closes");
}

#[tokio::test]
async fn invalid_v5_publishes_get_the_most_specific_disconnect() {
    let broker = TestBroker::start().await;
    let cases: &[(&str, Vec<u8>, ReasonCode)] = &[
        // [MQTT-3.3.2-8]; 0x94 is the code for an alias the receiver refuses.
        (
            "topic alias 0",
            publish_v5(b"t", b"\x23\x00\x00"),
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        (
            "topic alias 0 with an empty topic",
            publish_v5(b"", b"\x23\x00\x00"),
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        // Above the Topic Alias Maximum of the CONNACK (64 by default) [MQTT-3.3.2-9].
        (
            "topic alias above the maximum",
            publish_v5(b"t", b"\x23\x00\x41"),
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        // [MQTT-3.3.2-2]
        (
            "'+' in the topic name",
            publish_v5(b"a/+", b""),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        (
            "'#' as the topic name",
            publish_v5(b"#", b""),
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        // [MQTT-3.3.2-14]: well formed, against the protocol.
        (
            "'+' in the response topic",
            publish_v5(b"t", b"\x08\x00\x03r/+"),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "'#' in the response topic",
            publish_v5(b"t", b"\x08\x00\x03r/#"),
            ReasonCode::PROTOCOL_ERROR,
        ),
    ];
    for (i, (what, bytes, code)) in cases.iter().enumerate() {
        let mut c = RawClient::connect(broker.addr(), V5, &format!("pub{i}"), true).await;
        expect_disconnect(&mut c, bytes, *code, what).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_valid_response_topic_is_accepted() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr(), V5, "resp", true).await;
    c.send_raw(&publish_v5(b"t", b"\x08\x00\x03r/s")).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    broker.stop().await;
}

#[tokio::test]
async fn v3_publish_with_a_wildcard_closes_without_a_word() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr(), V3, "v3pub", true).await;
    c.send_raw(&packet(0x30, &[string(b"a/#"), b"x".to_vec()].concat()))
        .await;
    assert_eq!(c.recv().await, None);
    broker.stop().await;
}

#[tokio::test]
async fn invalid_v5_connects_get_a_connack_with_the_reason() {
    let broker = TestBroker::start().await;
    let cases: &[(&str, Vec<u8>, ReasonCode)] = &[
        // Section 2.2.2.2: an identifier not valid for the packet makes it malformed.
        (
            "topic alias in CONNECT properties",
            connect_v5(b"c", b"\x23\x00\x01", None),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "will delay interval in CONNECT properties",
            connect_v5(b"c", b"\x18\x00\x00\x00\x01", None),
            ReasonCode::MALFORMED_PACKET,
        ),
        (
            "unknown property identifier",
            connect_v5(b"c", b"\x7f\x00", None),
            ReasonCode::MALFORMED_PACKET,
        ),
        // [MQTT-1.5.4-1]
        (
            "client id not UTF-8",
            connect_v5(b"\xff", b"", None),
            ReasonCode::MALFORMED_PACKET,
        ),
        // Section 3.1.2.11: each of these is a Protocol Error.
        (
            "session expiry interval twice",
            connect_v5(b"c", b"\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02", None),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "receive maximum 0",
            connect_v5(b"c", b"\x21\x00\x00", None),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "maximum packet size 0",
            connect_v5(b"c", b"\x27\x00\x00\x00\x00", None),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "request problem information 2",
            connect_v5(b"c", b"\x17\x02", None),
            ReasonCode::PROTOCOL_ERROR,
        ),
        // [MQTT-3.3.2-14] in the will properties.
        (
            "wildcard in the will's response topic",
            connect_v5(b"c", b"", Some(b"\x08\x00\x03r/#")),
            ReasonCode::PROTOCOL_ERROR,
        ),
        (
            "will property not allowed in a will (reason string)",
            connect_v5(b"c", b"", Some(b"\x1f\x00\x01r")),
            ReasonCode::MALFORMED_PACKET,
        ),
    ];
    for (what, bytes, code) in cases {
        expect_connack(&broker, bytes, *code, what).await;
    }
    // The broker still serves others.
    let _ok = RawClient::connect(broker.addr(), V5, "fine", true).await;
    broker.stop().await;
}

#[tokio::test]
async fn oversized_v5_connect_gets_packet_too_large() {
    let mut config = TestBroker::config();
    config.broker.max_packet_size = 128;
    let broker = TestBroker::start_with(config).await;
    let connect = connect_v5(&[b'c'; 200], b"", None);
    expect_connack(
        &broker,
        &connect,
        ReasonCode::PACKET_TOO_LARGE,
        "200-byte id",
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn invalid_v3_connect_closes_without_connack() {
    let broker = TestBroker::start().await;
    // Reserved CONNECT flag set [MQTT-3.1.2-3]; client id not UTF-8 [MQTT-1.5.4-1].
    for (flags, id) in [(0x03, &b"c"[..]), (0x02, b"\xff")] {
        let body = [&string(b"MQTT")[..], &[4, flags, 0, 60], &string(id)].concat();
        let mut c = RawClient::open(broker.addr(), V3).await;
        c.send_raw(&packet(0x10, &body)).await;
        assert_eq!(c.recv().await, None, "flags {flags:#04x}, id {id:02X?}");
    }
    broker.stop().await;
}
