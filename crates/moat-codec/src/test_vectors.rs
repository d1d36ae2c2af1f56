//! Hand-written packets and their bytes, checked both ways by the unit tests: decoding the
//! bytes gives the packet, and (for canonical encodings) encoding the packet gives the bytes.
//! Each encoding was built by hand from the specification's figures, field by field.

use bytes::Bytes;

use crate::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, ProtocolVersion, PubAck,
    Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::properties::Properties;
use crate::reason::ReasonCode;

use ProtocolVersion::{V3_1, V3_1_1, V5};

pub(crate) struct Vector {
    pub(crate) name: &'static str,
    pub(crate) version: ProtocolVersion,
    pub(crate) bytes: &'static [u8],
    pub(crate) packet: Packet,
    /// Whether `encode` produces exactly `bytes` (false for valid but longer encodings).
    pub(crate) canonical: bool,
}

pub(crate) fn pid(v: u16) -> PacketId {
    PacketId::new(v).expect("test packet ids are non-zero")
}

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: packet_id.map(pid),
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

fn ack(id: u16, code: u8, properties: Properties) -> PubAck {
    PubAck {
        packet_id: pid(id),
        reason_code: ReasonCode(code),
        properties,
    }
}

fn v(name: &'static str, version: ProtocolVersion, bytes: &'static [u8], packet: Packet) -> Vector {
    Vector {
        name,
        version,
        bytes,
        packet,
        canonical: true,
    }
}

#[rustfmt::skip]
pub(crate) fn vectors() -> Vec<Vector> {
    let qos1 = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    let qos2 = SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() };
    vec![
        // ---- MQTT 3.1.1 ----
        // What `mosquitto_pub -V mqttv311 -i cli1 -k 60` sends: clean session, no will.
        v("v311 connect", V3_1_1,
            b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04cli1",
            Packet::Connect(Box::new(connect(V3_1_1, "cli1")))),
        // Every flag: user name, password, will retain, will QoS 1, will, clean session.
        v("v311 connect with will and credentials", V3_1_1,
            b"\x10\x1b\x00\x04MQTT\x04\xee\x00\x0a\x00\x01c\x00\x01w\x00\x03bye\x00\x01u\x00\x01p",
            Packet::Connect(Box::new(Connect {
                keep_alive: 10,
                will: Some(LastWill {
                    topic: "w".into(),
                    payload: Bytes::from_static(b"bye"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Properties::default(),
                }),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
                ..connect(V3_1_1, "c")
            }))),
        // Empty client id with clean session 0: decoded, left to the broker to refuse.
        v("v311 connect with empty client id", V3_1_1,
            b"\x10\x0c\x00\x04MQTT\x04\x00\x00\x00\x00\x00",
            Packet::Connect(Box::new(Connect {
                clean_start: false, keep_alive: 0, ..connect(V3_1_1, "")
            }))),
        v("v311 connack", V3_1_1, b"\x20\x02\x00\x00",
            Packet::ConnAck(ConnAck {
                session_present: false, reason_code: ReasonCode::SUCCESS,
                properties: Properties::default(),
            })),
        v("v311 connack session present", V3_1_1, b"\x20\x02\x01\x00",
            Packet::ConnAck(ConnAck {
                session_present: true, reason_code: ReasonCode::SUCCESS,
                properties: Properties::default(),
            })),
        v("v311 connack not authorized", V3_1_1, b"\x20\x02\x00\x05",
            Packet::ConnAck(ConnAck {
                session_present: false, reason_code: ReasonCode::NOT_AUTHORIZED,
                properties: Properties::default(),
            })),
        v("v311 publish qos 0", V3_1_1, b"\x30\x0a\x00\x03a/bhello",
            Packet::Publish(publish("a/b", QoS::AtMostOnce, None, b"hello"))),
        v("v311 publish qos 1 dup retain", V3_1_1, b"\x3b\x08\x00\x03a/b\x00\x0ax",
            Packet::Publish(Publish {
                dup: true, retain: true,
                ..publish("a/b", QoS::AtLeastOnce, Some(10), b"x")
            })),
        v("v311 publish qos 2 empty payload", V3_1_1, b"\x34\x07\x00\x03a/b\xff\xff",
            Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(0xFFFF), b""))),
        v("v311 puback", V3_1_1, b"\x40\x02\x00\x01",
            Packet::PubAck(PubAck::new(pid(1)))),
        v("v311 pubrec", V3_1_1, b"\x50\x02\x00\x02",
            Packet::PubRec(PubAck::new(pid(2)))),
        v("v311 pubrel", V3_1_1, b"\x62\x02\x00\x03",
            Packet::PubRel(PubAck::new(pid(3)))),
        v("v311 pubcomp", V3_1_1, b"\x70\x02\x00\x04",
            Packet::PubComp(PubAck::new(pid(4)))),
        v("v311 subscribe", V3_1_1, b"\x82\x0e\x00\x0a\x00\x03a/b\x01\x00\x03c/#\x02",
            Packet::Subscribe(Subscribe {
                packet_id: pid(10), properties: Properties::default(),
                filters: vec![("a/b".into(), qos1), ("c/#".into(), qos2)],
            })),
        v("v311 suback", V3_1_1, b"\x90\x05\x00\x0a\x00\x01\x80",
            Packet::SubAck(SubAck {
                packet_id: pid(10), properties: Properties::default(),
                reason_codes: vec![
                    ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_1,
                    ReasonCode::UNSPECIFIED_ERROR,
                ],
            })),
        v("v311 unsubscribe", V3_1_1, b"\xa2\x0a\x00\x0b\x00\x03a/b\x00\x01#",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(11), properties: Properties::default(),
                filters: vec!["a/b".into(), "#".into()],
            })),
        v("v311 unsuback", V3_1_1, b"\xb0\x02\x00\x0b",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(11), properties: Properties::default(), reason_codes: vec![],
            })),
        v("v311 pingreq", V3_1_1, b"\xc0\x00", Packet::PingReq),
        v("v311 pingresp", V3_1_1, b"\xd0\x00", Packet::PingResp),
        v("v311 disconnect", V3_1_1, b"\xe0\x00", Packet::Disconnect(Disconnect::default())),

        // ---- MQTT 3.1 ----
        v("v31 connect", V3_1,
            b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x04cli1",
            Packet::Connect(Box::new(connect(V3_1, "cli1")))),
        v("v31 connack refused", V3_1, b"\x20\x02\x00\x02",
            Packet::ConnAck(ConnAck {
                session_present: false, reason_code: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                properties: Properties::default(),
            })),

        // ---- MQTT 5.0 ----
        // `mosquitto_pub -V mqttv5 -i cli1 -k 60 -x 120`: session expiry interval 120.
        v("v5 connect", V5,
            b"\x10\x16\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x78\x00\x04cli1",
            Packet::Connect(Box::new(Connect {
                properties: Properties::from(crate::PropertySet { session_expiry_interval: Some(120), ..Default::default() }),
                ..connect(V5, "cli1")
            }))),
        // Will with properties (content type "t", will delay 5), and a password without a
        // user name, which v5 allows.
        v("v5 connect with will", V5,
            b"\x10\x21\x00\x04MQTT\x05\x4c\x00\x00\x00\x00\x01c\x09\x03\x00\x01t\x18\x00\x00\x00\x05\x00\x01w\x00\x00\x00\x02pw",
            Packet::Connect(Box::new(Connect {
                clean_start: false,
                keep_alive: 0,
                will: Some(LastWill {
                    topic: "w".into(),
                    payload: Bytes::new(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: Properties::from(crate::PropertySet {
                        will_delay_interval: Some(5),
                        content_type: Some("t".into()),
                        ..Default::default()
                    }),
                }),
                password: Some(Bytes::from_static(b"pw")),
                ..connect(V5, "c")
            }))),
        v("v5 connack", V5, b"\x20\x03\x00\x00\x00",
            Packet::ConnAck(ConnAck {
                session_present: false, reason_code: ReasonCode::SUCCESS,
                properties: Properties::default(),
            })),
        v("v5 connack with properties", V5,
            b"\x20\x09\x01\x00\x06\x21\x00\x14\x22\x00\x0a",
            Packet::ConnAck(ConnAck {
                session_present: true, reason_code: ReasonCode::SUCCESS,
                properties: Properties::from(crate::PropertySet {
                    receive_maximum: Some(20), topic_alias_maximum: Some(10),
                    ..Default::default()
                }),
            })),
        v("v5 connack bad credentials", V5, b"\x20\x03\x00\x86\x00",
            Packet::ConnAck(ConnAck {
                session_present: false, reason_code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                properties: Properties::default(),
            })),
        v("v5 publish qos 1", V5, b"\x32\x0c\x00\x03a/b\x00\x01\x02\x01\x01hi",
            Packet::Publish(Publish {
                properties: Properties::from(crate::PropertySet { payload_format_indicator: Some(1), ..Default::default() }),
                ..publish("a/b", QoS::AtLeastOnce, Some(1), b"hi")
            })),
        v("v5 publish with topic alias only", V5, b"\x30\x06\x00\x00\x03\x23\x00\x05",
            Packet::Publish(Publish {
                properties: Properties::from(crate::PropertySet { topic_alias: Some(5), ..Default::default() }),
                ..publish("", QoS::AtMostOnce, None, b"")
            })),
        // Two subscription identifiers and two user properties with the same name.
        v("v5 publish with repeated properties", V5,
            b"\x30\x18\x00\x01t\x13\x0b\x01\x0b\x80\x01\x26\x00\x01k\x00\x01a\x26\x00\x01k\x00\x01bp",
            Packet::Publish(Publish {
                properties: Properties::from(crate::PropertySet {
                    subscription_identifiers: vec![1, 128],
                    user_properties: vec![("k".into(), "a".into()), ("k".into(), "b".into())],
                    ..Default::default()
                }),
                ..publish("t", QoS::AtMostOnce, None, b"p")
            })),
        v("v5 puback success", V5, b"\x40\x02\x00\x01",
            Packet::PubAck(PubAck::new(pid(1)))),
        v("v5 puback no matching subscribers", V5, b"\x40\x03\x00\x01\x10",
            Packet::PubAck(ack(1, 0x10, Properties::default()))),
        Vector {
            canonical: false,
            ..v("v5 puback with empty property length", V5, b"\x40\x04\x00\x01\x10\x00",
                Packet::PubAck(ack(1, 0x10, Properties::default())))
        },
        Vector {
            canonical: false,
            ..v("v5 puback success spelled out", V5, b"\x40\x03\x00\x01\x00",
                Packet::PubAck(PubAck::new(pid(1))))
        },
        v("v5 pubrec with reason string", V5, b"\x50\x0a\x00\x01\x80\x06\x1f\x00\x03bad",
            Packet::PubRec(ack(1, 0x80, Properties::from(crate::PropertySet {
                reason_string: Some("bad".into()), ..Default::default()
            })))),
        v("v5 pubrel not found", V5, b"\x62\x03\x00\x07\x92",
            Packet::PubRel(ack(7, 0x92, Properties::default()))),
        v("v5 pubcomp", V5, b"\x70\x02\x00\x07", Packet::PubComp(PubAck::new(pid(7)))),
        // Subscription identifier 7; options: QoS 1, no local, retain as published, retain
        // handling 2 (0b0010_1101).
        v("v5 subscribe", V5, b"\x82\x0b\x00\x0a\x02\x0b\x07\x00\x03a/b\x2d",
            Packet::Subscribe(Subscribe {
                packet_id: pid(10),
                properties: Properties::from(crate::PropertySet { subscription_identifiers: vec![7], ..Default::default() }),
                filters: vec![("a/b".into(), SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                })],
            })),
        v("v5 suback", V5, b"\x90\x06\x00\x0a\x00\x00\x02\x87",
            Packet::SubAck(SubAck {
                packet_id: pid(10), properties: Properties::default(),
                reason_codes: vec![ReasonCode::GRANTED_QOS_0, ReasonCode::GRANTED_QOS_2,
                                   ReasonCode::NOT_AUTHORIZED],
            })),
        v("v5 unsubscribe", V5, b"\xa2\x08\x00\x0b\x00\x00\x03a/b",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(11), properties: Properties::default(),
                filters: vec!["a/b".into()],
            })),
        v("v5 unsuback", V5, b"\xb0\x05\x00\x0b\x00\x00\x11",
            Packet::UnsubAck(UnsubAck {
                packet_id: pid(11), properties: Properties::default(),
                reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            })),
        v("v5 pingreq", V5, b"\xc0\x00", Packet::PingReq),
        v("v5 disconnect normal", V5, b"\xe0\x00", Packet::Disconnect(Disconnect::default())),
        v("v5 disconnect with will", V5, b"\xe0\x01\x04",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: Properties::default(),
            })),
        v("v5 disconnect shutting down", V5, b"\xe0\x07\x8b\x05\x11\x00\x00\x00\x00",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
                properties: Properties::from(crate::PropertySet { session_expiry_interval: Some(0), ..Default::default() }),
            })),
        v("v5 auth success", V5, b"\xf0\x00", Packet::Auth(Auth::default())),
        v("v5 auth continue", V5,
            b"\xf0\x0f\x18\x0d\x15\x00\x05SCRAM\x16\x00\x02\x01\x02",
            Packet::Auth(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: Properties::from(crate::PropertySet {
                    authentication_method: Some("SCRAM".into()),
                    authentication_data: Some(Bytes::from_static(&[1, 2])),
                    ..Default::default()
                }),
            })),
        Vector {
            canonical: false,
            ..v("v5 auth success spelled out", V5, b"\xf0\x02\x00\x00",
                Packet::Auth(Auth::default()))
        },
        // A remaining length in two bytes: 200 = 0xC8 0x01.
        v("v5 publish with a two-byte remaining length", V5,
            b"\x30\xc8\x01\x00\x01t\x00xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Packet::Publish(publish("t", QoS::AtMostOnce, None, &[b'x'; 196]))),
    ]
}
