//! Regressions for hostile and careless clients (issue 14): deep topics, retained floods.
//! Real sockets on 127.0.0.1, bounded in count and time.

use bytes::{Bytes, BytesMut};
use moat_codec::{
    Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode, Subscribe,
    SubscriptionOptions, Unsubscribe,
};
use moat_testkit::{RawClient, TestBroker};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn publish(topic: &str, payload: &[u8], qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn subscribe(id: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        properties: Properties::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
    })
}

/// The next packet that is not a PUBLISH.
async fn next_control(c: &mut RawClient) -> Packet {
    for _ in 0..100_000 {
        match c.recv().await {
            Some(Packet::Publish(_)) => {}
            Some(p) => return p,
            None => panic!("connection closed"),
        }
    }
    panic!("no control packet")
}

/// A QoS 1 round trip on a fresh client: the broker is alive and routing.
async fn alive(broker: &TestBroker) {
    let mut c = RawClient::connect(broker.addr(), V5, "alive-check", true).await;
    c.send(&subscribe(1, "alive/x", QoS::AtLeastOnce)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
    c.send(&publish("alive/x", b"ok", QoS::AtLeastOnce, 2, false))
        .await;
    let mut got = (false, false);
    for _ in 0..10 {
        match c.recv().await {
            Some(Packet::PubAck(_)) => got.0 = true,
            Some(Packet::Publish(p)) => {
                assert_eq!(p.payload, "ok");
                got.1 = true;
                if let Some(id) = p.packet_id {
                    c.send(&Packet::PubAck(moat_codec::PubAck::new(id))).await;
                }
            }
            other => panic!("{other:?}"),
        }
        if got == (true, true) {
            return;
        }
    }
    panic!("round trip incomplete: {got:?}");
}

/// One SUBSCRIBE with 10,000 levels (about 20 KB) used to overflow the stack and abort the
/// process on publish, unsubscribe or disconnect; a retained message read with `#` at 20,000.
#[tokio::test]
async fn deep_topics_are_refused_and_the_broker_stays_up() {
    let broker = TestBroker::start().await;
    let deep = vec!["a"; 10_000].join("/");
    let deeper = vec!["a"; 20_000].join("/");
    for version in [V3, V5] {
        let mut c = RawClient::connect(broker.addr(), version, "deep", true).await;
        c.send(&subscribe(1, &deep, QoS::AtLeastOnce)).await;
        let Some(Packet::SubAck(ack)) = c.recv().await else {
            panic!("no SUBACK")
        };
        let want = if version == V5 {
            ReasonCode::TOPIC_FILTER_INVALID
        } else {
            ReasonCode(0x80)
        };
        assert_eq!(ack.reason_codes, vec![want]);
        c.send(&publish(&deep, b"x", QoS::AtMostOnce, 0, false))
            .await;
        c.send(&publish(&deeper, b"x", QoS::AtLeastOnce, 2, true))
            .await;
        let Packet::PubAck(ack) = next_control(&mut c).await else {
            panic!("no PUBACK")
        };
        if version == V5 {
            assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID);
        }
        c.send(&subscribe(3, "#", QoS::AtMostOnce)).await;
        assert!(matches!(next_control(&mut c).await, Packet::SubAck(_)));
        c.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(4),
            properties: Properties::default(),
            filters: vec![deep.clone()],
        }))
        .await;
        assert!(matches!(next_control(&mut c).await, Packet::UnsubAck(_)));
        c.abort();
        alive(&broker).await;
    }
    broker.stop().await;
}

/// 20,000 retained QoS 0 messages used to reach a new `#` subscriber as 999: the rest were
/// dropped at its outbox, uncounted. Now they are paced by the subscriber, all of them.
#[tokio::test]
async fn retained_flood_reaches_a_new_subscriber_whole() {
    let broker = TestBroker::start().await;
    const N: usize = 20_000;
    let mut p = RawClient::connect(broker.addr(), V3, "flood-pub", true).await;
    let mut buf = BytesMut::new();
    for i in 0..N {
        let m = publish(&format!("r/{i:05}"), b"payload", QoS::AtMostOnce, 0, true);
        moat_codec::encode(&m, V3, &mut buf).unwrap();
    }
    p.send_raw(&buf).await;
    // PUBACK of a later QoS 1 PUBLISH: everything before it was handled.
    p.send(&publish("r/zz-last", b"x", QoS::AtLeastOnce, 1, true))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));

    for version in [V3, V5] {
        let mut s = RawClient::connect(broker.addr(), version, "flood-sub", true).await;
        s.send(&subscribe(1, "r/#", QoS::AtMostOnce)).await;
        assert!(matches!(s.recv().await, Some(Packet::SubAck(_))));
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < N + 1 {
            match s.recv().await {
                Some(Packet::Publish(m)) => {
                    assert!(m.retain);
                    assert!(seen.insert(m.topic), "a retained message came twice");
                }
                other => panic!("after {} retained: {other:?}", seen.len()),
            }
        }
        // Nothing more, and the subscriber is still served live messages.
        p.send(&publish("r/live", b"live", QoS::AtLeastOnce, 2, false))
            .await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
        match s.recv().await {
            Some(Packet::Publish(m)) => assert_eq!(m.topic, "r/live"),
            other => panic!("{other:?}"),
        }
        s.abort();
    }
    broker.stop().await;
}
