//! The broker over real loopback sockets, driven by raw-packet clients.

use std::time::Duration;

use bytes::Bytes;
use moat_codec::{
    Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn publish(topic: &str, payload: &[u8], qos: QoS, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(1),
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

async fn subscribed(c: &mut RawClient, filter: &str, qos: QoS) {
    c.send(&subscribe(filter, qos)).await;
    match c.recv().await {
        Some(Packet::SubAck(_)) => {}
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn next_publish(c: &mut RawClient) -> Publish {
    loop {
        match c.recv().await {
            Some(Packet::Publish(p)) => return p,
            Some(_) => continue,
            None => panic!("connection closed while waiting for PUBLISH"),
        }
    }
}

#[tokio::test]
async fn pubsub_v3_and_v5_across_versions() {
    let broker = TestBroker::start().await;
    let mut sub3 = RawClient::connect(broker.addr(), V3, "sub3", true).await;
    let mut sub5 = RawClient::connect(broker.addr(), V5, "sub5", true).await;
    subscribed(&mut sub3, "TopicA/#", QoS::ExactlyOnce).await;
    subscribed(&mut sub5, "TopicA/+", QoS::AtLeastOnce).await;
    let mut pubc = RawClient::connect(broker.addr(), V5, "pub", true).await;
    pubc.send(&publish("TopicA/B", b"hello", QoS::ExactlyOnce, 10))
        .await;
    assert!(matches!(pubc.recv().await, Some(Packet::PubRec(r)) if r.packet_id == pid(10)));
    pubc.send(&Packet::PubRel(PubAck::new(pid(10)))).await;
    assert!(matches!(pubc.recv().await, Some(Packet::PubComp(_))));

    let p3 = next_publish(&mut sub3).await;
    assert_eq!(
        (p3.topic.as_str(), &p3.payload[..], p3.qos),
        ("TopicA/B", &b"hello"[..], QoS::ExactlyOnce)
    );
    let p5 = next_publish(&mut sub5).await;
    assert_eq!(p5.qos, QoS::AtLeastOnce);
    sub5.send(&Packet::PubAck(PubAck::new(p5.packet_id.unwrap())))
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_packets_close_with_reason() {
    let mut config = TestBroker::config();
    config.broker.max_packet_size = 1024;
    let broker = TestBroker::start_with(config).await;

    // Reserved flags on SUBSCRIBE must be 0b0010.
    let mut c = RawClient::connect(broker.addr(), V5, "bad1", true).await;
    c.send_raw(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00])
        .await;
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::MALFORMED_PACKET),
        other => panic!("expected DISCONNECT 0x81, got {other:?}"),
    }
    assert_eq!(c.recv().await, None);

    // A packet announcing more than the maximum is refused before its body arrives.
    let mut c = RawClient::connect(broker.addr(), V5, "bad2", true).await;
    c.send_raw(&[0x30, 0xFF, 0xFF, 0x03]).await;
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::PACKET_TOO_LARGE),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }

    // Garbage before CONNECT: closed without an answer.
    let mut c = RawClient::open(broker.addr(), V3).await;
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.recv().await, None);

    // A packet other than CONNECT first [MQTT-3.1.0-1].
    let mut c = RawClient::open(broker.addr(), V3).await;
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, None);

    // The broker still serves others.
    let _ok = RawClient::connect(broker.addr(), V3, "fine", true).await;
    broker.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::open(broker.addr(), V3).await;
    // CONNECT "MQTT" level 6.
    c.send_raw(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'x',
    ])
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION)
        }
        other => panic!("expected CONNACK 0x01, got {other:?}"),
    }
    assert_eq!(c.recv().await, None);
    broker.stop().await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_connections() {
    let mut config = TestBroker::config();
    config.connect_timeout = Duration::from_secs(1);
    let broker = TestBroker::start_with(config).await;
    let mut c = RawClient::open(broker.addr(), V3).await;
    // Half a CONNECT, then nothing.
    c.send_raw(&[0x10, 0x20, 0x00]).await;
    assert_eq!(c.recv().await, None);
    broker.stop().await;
}

#[tokio::test]
async fn keep_alive_expiry_publishes_the_will() {
    let broker = TestBroker::start().await;
    let mut watcher = RawClient::connect(broker.addr(), V3, "watcher", true).await;
    subscribed(&mut watcher, "wills/#", QoS::AtLeastOnce).await;

    let mut c = RawClient::open(broker.addr(), V5).await;
    let mut connect = connect_packet("sleepy", V5, true);
    connect.keep_alive = 1;
    connect.will = Some(LastWill {
        topic: "wills/sleepy".into(),
        payload: Bytes::from_static(b"keepalive expiry"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    c.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(_))));
    // Send nothing: after 1.5 s the broker gives up on us.
    match c.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::KEEP_ALIVE_TIMEOUT),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    let will = next_publish(&mut watcher).await;
    assert_eq!(&will.payload[..], b"keepalive expiry");
    broker.stop().await;
}

#[tokio::test]
async fn shutdown_sends_0x8b_to_v5_clients() {
    let broker = TestBroker::start().await;
    let mut c5 = RawClient::connect(broker.addr(), V5, "c5", true).await;
    let mut c3 = RawClient::connect(broker.addr(), V3, "c3", true).await;
    broker.stop().await;
    match c5.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    assert_eq!(c5.recv().await, None);
    assert_eq!(c3.recv().await, None);
}

#[tokio::test]
async fn takeover_over_sockets() {
    let broker = TestBroker::start().await;
    let mut old = RawClient::connect(broker.addr(), V5, "same", true).await;
    let mut new = RawClient::connect(broker.addr(), V5, "same", false).await;
    match old.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    new.send(&Packet::PingReq).await;
    assert_eq!(new.recv().await, Some(Packet::PingResp));
    new.send(&Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(new.recv().await, None);
    broker.stop().await;
}

/// A subscriber that never reads cannot stall the publisher or other subscribers; QoS 0 to it
/// is dropped once its outbox is full, and QoS 1 keeps flowing to the others.
#[tokio::test]
async fn slow_subscriber_does_not_stall_others() {
    let mut config = TestBroker::config();
    config.max_outbox_packets = 100;
    config.write_timeout = Duration::from_secs(60);
    let broker = TestBroker::start_with(config).await;
    let mut stuck = RawClient::connect(broker.addr(), V3, "stuck", true).await;
    subscribed(&mut stuck, "load", QoS::AtLeastOnce).await;
    let mut fast = RawClient::connect(broker.addr(), V3, "fast", true).await;
    subscribed(&mut fast, "load", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connect(broker.addr(), V3, "pub", true).await;

    const N: usize = 20_000;
    let payload = vec![b'x'; 512];
    // The fast subscriber reads (and acknowledges) until the QoS 1 marker that ends the run.
    let reader = tokio::spawn(async move {
        let mut qos0 = 0usize;
        loop {
            let p = next_publish(&mut fast).await;
            if let Some(id) = p.packet_id {
                fast.send(&Packet::PubAck(PubAck::new(id))).await;
            }
            if &p.payload[..] == b"end" {
                return qos0;
            }
            qos0 += 1;
        }
    });
    for _ in 0..N {
        publisher
            .send(&publish("load", &payload, QoS::AtMostOnce, 0))
            .await;
    }
    publisher
        .send(&publish("load", b"end", QoS::AtLeastOnce, 1))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    let got = tokio::time::timeout(TIMEOUT, reader)
        .await
        .expect("fast subscriber stalled")
        .unwrap();
    assert!(
        got > 0,
        "the fast subscriber received none of the QoS 0 flood"
    );
    drop(stuck);
    broker.stop().await;
}

#[tokio::test]
async fn qos1_redelivered_with_dup_after_reconnect() {
    let broker = TestBroker::start().await;
    let mut sub = RawClient::connect(broker.addr(), V3, "redeliver", false).await;
    subscribed(&mut sub, "r", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connect(broker.addr(), V3, "p", true).await;
    publisher
        .send(&publish("r", b"once", QoS::AtLeastOnce, 1))
        .await;
    let first = next_publish(&mut sub).await;
    assert!(!first.dup);
    sub.abort(); // no PUBACK
    let mut sub = RawClient::connect(broker.addr(), V3, "redeliver", false).await;
    let again = next_publish(&mut sub).await;
    assert!(again.dup);
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(&again.payload[..], b"once");
    broker.stop().await;
}
