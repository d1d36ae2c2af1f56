//! The client's Maximum Packet Size bounds what the broker sends: the reason string of a
//! CONNACK or DISCONNECT is left out where it would not fit [MQTT-3.2.2-19], [MQTT-3.14.2-3].
//! Found by the core fuzz interpreter (`tests/support/interp.rs`).

use std::time::Instant;

use bytes::Bytes;
use moat_codec::{
    encoded_len, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
};
use moat_core::{Broker, BrokerConfig, ClientInfo, ConnId, ConnectOutcome, Input, Output};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn connect(max_packet_size: u32) -> Connect {
    Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "small".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::from(moat_codec::PropertySet {
            maximum_packet_size: Some(max_packet_size),
            ..Default::default()
        }),
    }
}

fn outputs(broker: &mut Broker) -> Vec<Output> {
    let mut out = Vec::new();
    broker.drain_outputs_into(&mut out);
    out
}

fn sent(broker: &mut Broker, conn: ConnId) -> Vec<Packet> {
    outputs(broker)
        .into_iter()
        .filter_map(|a| match a {
            Output::Send(c, p) if c == conn => Some(p),
            _ => None,
        })
        .collect()
}

/// Hands CONNECT to the broker; returns its answer and the packets sent to `conn`.
fn connect_to(
    broker: &mut Broker,
    conn: ConnId,
    c: Connect,
    now: Instant,
) -> (ConnectOutcome, Vec<Packet>) {
    let input = Input::Connect {
        conn,
        connect: Box::new(c),
        info: ClientInfo::default(),
    };
    broker.handle(input, now);
    let mut outcome = None;
    let mut packets = Vec::new();
    for o in outputs(broker) {
        match o {
            Output::Send(c, p) if c == conn => packets.push(p),
            Output::Connected {
                conn: c,
                outcome: o,
            } if c == conn => outcome = Some(o),
            _ => {}
        }
    }
    (outcome.expect("an Output::Connected"), packets)
}

/// The DISCONNECT for an invalid topic name, to a client whose limit is `max_packet_size`.
fn disconnect_for_bad_topic(max_packet_size: u32) -> Packet {
    let now = Instant::now();
    let mut broker = Broker::new(BrokerConfig::default(), now);
    let conn = ConnId(1);
    connect_to(&mut broker, conn, connect(max_packet_size), now);
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/+".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    let packet = Packet::Publish(publish);
    broker.handle(Input::Packet { conn, packet }, now);
    let out = sent(&mut broker, conn);
    assert_eq!(out.len(), 1, "{out:?}");
    out.into_iter().next().expect("one packet")
}

#[test]
fn disconnect_reason_string_only_where_it_fits() {
    let roomy = disconnect_for_bad_topic(1000);
    let Packet::Disconnect(d) = &roomy else {
        panic!("{roomy:?}")
    };
    assert_eq!(d.reason_code, ReasonCode::TOPIC_NAME_INVALID);
    assert!(d.properties.reason_string.is_some());

    let small = disconnect_for_bad_topic(16);
    assert!(encoded_len(&small, V5) <= 16, "{small:?}");
    let Packet::Disconnect(d) = &small else {
        panic!("{small:?}")
    };
    assert_eq!(d.reason_code, ReasonCode::TOPIC_NAME_INVALID);
    assert_eq!(d.properties.reason_string, None);
}

#[test]
fn refused_connack_reason_string_only_where_it_fits() {
    let now = Instant::now();
    let mut broker = Broker::new(BrokerConfig::default(), now);
    let mut c = connect(16);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let conn = ConnId(1);
    let (outcome, out) = connect_to(&mut broker, conn, c, now);
    assert!(!outcome.accepted);
    let Some(connack @ Packet::ConnAck(ack)) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert_eq!(ack.properties.reason_string, None);
    assert!(encoded_len(connack, V5) <= 16, "{connack:?}");
}
