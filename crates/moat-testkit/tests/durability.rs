//! Restarts on the same durable store: every persisted item comes back.

use std::path::Path;

use bytes::Bytes;
use moat_codec::{
    LastWill, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use moat_server::{Durability, ServerConfig, StoreConfig};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn config(dir: &Path) -> ServerConfig {
    let mut c = TestBroker::config();
    c.store = Some(StoreConfig {
        dir: dir.to_owned(),
        durability: Durability::GroupCommit,
    });
    c
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn publish(topic: &str, payload: &str, qos: QoS, id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

/// A v5 client with a session that outlives its connection.
async fn persistent(broker: &TestBroker, id: &str, clean: bool) -> (RawClient, bool) {
    let mut c = RawClient::open(broker.addr(), V5).await;
    let mut connect = connect_packet(id, V5, clean);
    connect.properties.session_expiry_interval = Some(3600);
    let ack = c.handshake(connect).await.expect("CONNACK");
    assert!(!ack.reason_code.is_error(), "{ack:?}");
    (c, ack.session_present)
}

async fn next_publish(c: &mut RawClient) -> Publish {
    loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => return p,
            Some(_) => {}
            None => panic!("closed while waiting for PUBLISH"),
        }
    }
}

async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        properties: Properties::from(moat_codec::PropertySet {
            subscription_identifiers: vec![9],
            ..Default::default()
        }),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

#[tokio::test]
async fn sessions_queues_and_retained_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, present) = persistent(&broker, "keeper", true).await;
    assert!(!present);
    subscribe(&mut sub, "d/#", QoS::ExactlyOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(sub.recv().await, None);

    let mut p = RawClient::connect(broker.addr(), V5, "pub", true).await;
    p.send(&publish("r/1", "kept", QoS::AtLeastOnce, 1, true))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    p.send(&publish("d/1", "q1", QoS::AtLeastOnce, 2, false))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    p.send(&publish("d/2", "q2", QoS::ExactlyOnce, 3, false))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    broker.stop().await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, present) = persistent(&broker, "keeper", false).await;
    assert!(present, "the session is back");
    let a = next_publish(&mut sub).await;
    let b = next_publish(&mut sub).await;
    assert_eq!((&a.payload[..], a.qos), (&b"q1"[..], QoS::AtLeastOnce));
    assert_eq!((&b.payload[..], b.qos), (&b"q2"[..], QoS::ExactlyOnce));
    assert_eq!(a.properties.subscription_identifiers, vec![9]);
    sub.send(&Packet::PubAck(PubAck::new(a.packet_id.unwrap())))
        .await;
    sub.send(&Packet::PubRec(PubAck::new(b.packet_id.unwrap())))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(_))));
    sub.send(&Packet::PubComp(PubAck::new(b.packet_id.unwrap())))
        .await;
    // The subscription is back: a new message arrives.
    let mut p = RawClient::connect(broker.addr(), V5, "pub", true).await;
    p.send(&publish("d/3", "live", QoS::AtMostOnce, 0, false))
        .await;
    assert_eq!(&next_publish(&mut sub).await.payload[..], b"live");
    // The retained message is back.
    let mut r = RawClient::connect(broker.addr(), V5, "reader", true).await;
    subscribe(&mut r, "r/#", QoS::AtMostOnce).await;
    let m = next_publish(&mut r).await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"kept");
    broker.stop().await;

    // Acknowledged messages are gone for good after another restart.
    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, present) = persistent(&broker, "keeper", false).await;
    assert!(present);
    sub.send(&Packet::PingReq).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PingResp),
        "nothing redelivered"
    );
    broker.stop().await;
}

#[tokio::test]
async fn unacknowledged_delivery_is_resent_with_dup_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, _) = persistent(&broker, "slow", true).await;
    subscribe(&mut sub, "x", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(broker.addr(), V5, "pub", true).await;
    p.send(&publish("x", "once", QoS::AtLeastOnce, 1, false))
        .await;
    let first = next_publish(&mut sub).await;
    broker.stop().await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut sub, present) = persistent(&broker, "slow", false).await;
    assert!(present);
    let again = next_publish(&mut sub).await;
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(&again.payload[..], b"once");
    broker.stop().await;
}

#[tokio::test]
async fn incoming_qos2_is_not_delivered_twice_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut watcher, _) = persistent(&broker, "watcher", true).await;
    subscribe(&mut watcher, "q2", QoS::AtLeastOnce).await;
    let (mut p, _) = persistent(&broker, "q2-pub", true).await;
    p.send(&publish("q2", "exactly once", QoS::ExactlyOnce, 7, false))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    let got = next_publish(&mut watcher).await;
    watcher
        .send(&Packet::PubAck(PubAck::new(got.packet_id.unwrap())))
        .await;
    watcher.send(&Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Some(Packet::PingResp));
    broker.stop().await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let (mut watcher, _) = persistent(&broker, "watcher", false).await;
    let (mut p, present) = persistent(&broker, "q2-pub", false).await;
    assert!(present);
    // The publisher never saw our PUBREC survive: it resends, then releases.
    let mut again = publish("q2", "exactly once", QoS::ExactlyOnce, 7, false);
    if let Packet::Publish(ref mut pp) = again {
        pp.dup = true;
    }
    p.send(&again).await;
    assert!(matches!(p.recv().await, Some(Packet::PubRec(_))));
    p.send(&Packet::PubRel(PubAck::new(pid(7)))).await;
    match p.recv().await {
        Some(Packet::PubComp(c)) => assert!(!c.reason_code.is_error(), "{c:?}"),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    watcher.send(&Packet::PingReq).await;
    assert_eq!(
        watcher.recv().await,
        Some(Packet::PingResp),
        "delivered twice"
    );
    broker.stop().await;
}

#[tokio::test]
async fn delayed_will_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut c = RawClient::open(broker.addr(), V5).await;
    let mut connect = connect_packet("mortal", V5, true);
    connect.properties.session_expiry_interval = Some(3600);
    connect.will = Some(LastWill {
        topic: "wills/mortal".into(),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::from(moat_codec::PropertySet {
            will_delay_interval: Some(2),
            ..Default::default()
        }),
    });
    assert!(c.handshake(connect).await.is_some());
    // DISCONNECT 0x04 keeps the will; the broker closing the connection shows it processed it.
    c.send(&Packet::Disconnect(moat_codec::Disconnect {
        reason_code: moat_codec::ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(c.recv().await, None);
    broker.stop().await;

    let broker = TestBroker::start_with(config(dir.path())).await;
    let mut w = RawClient::connect(broker.addr(), V5, "w", true).await;
    subscribe(&mut w, "wills/#", QoS::AtLeastOnce).await;
    let will = tokio::time::timeout(TIMEOUT, next_publish(&mut w))
        .await
        .expect("will in time");
    assert_eq!(&will.payload[..], b"late");
    broker.stop().await;
}
