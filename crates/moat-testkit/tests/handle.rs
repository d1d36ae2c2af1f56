//! `BrokerHandle` against a running server: clients, disconnect, retained messages,
//! statistics, and the stream of accepted messages (bounded: it slows publishers).

use std::time::Duration;

use bytes::Bytes;
use moat_codec::{Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use moat_core::ClientQuery;
use moat_testkit::{RawClient, TestBroker, TIMEOUT};

const V5: ProtocolVersion = ProtocolVersion::V5;

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

#[tokio::test]
async fn the_handle_lists_disconnects_and_manages_retained() {
    let broker = TestBroker::start().await;
    let h = broker.handle().clone();
    let mut a = RawClient::connect(broker.addr(), V5, "dev-a", true).await;
    let _b = RawClient::connect(broker.addr(), V5, "dev-b", true).await;
    let _o = RawClient::connect(broker.addr(), V5, "other", true).await;

    let page = h
        .clients(ClientQuery {
            client_id_prefix: "dev-".into(),
            limit: 10,
            ..ClientQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = page.items.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["dev-a", "dev-b"]);
    assert_eq!(page.items[0].listener, "test");
    assert_eq!(page.items[0].protocol, V5);
    assert!(page.items[0].peer.unwrap().ip().is_loopback());

    a.send(&publish("r/1", "one", QoS::AtLeastOnce, 1, true))
        .await;
    assert!(matches!(a.recv().await, Some(Packet::PubAck(_))));
    let retained = h.retained("r/", None, 10).await.unwrap();
    assert_eq!(retained.items.len(), 1);
    assert_eq!(retained.items[0].message.payload, "one");
    assert!(h.delete_retained("r/1").await.unwrap());
    assert!(h.retained("r/", None, 10).await.unwrap().items.is_empty());
    assert_eq!(h.stats().await.unwrap().stats.clients_connected, 3);

    assert!(h
        .disconnect("dev-a", ReasonCode::ADMINISTRATIVE_ACTION)
        .await
        .unwrap());
    match a.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ADMINISTRATIVE_ACTION),
        other => panic!("{other:?}"),
    }
    assert!(a.closed_within(TIMEOUT).await);
    assert!(!h
        .disconnect("nobody", ReasonCode::ADMINISTRATIVE_ACTION)
        .await
        .unwrap());
    let detail = h.client("dev-b").await.unwrap().unwrap();
    assert!(detail.connected.is_some());
    broker.stop().await;
}

#[tokio::test]
async fn accepted_messages_reach_a_consumer_in_order_with_back_pressure() {
    let broker = TestBroker::start().await;
    let h = broker.handle().clone();
    let mut rx = h.accepted(4).await.unwrap();
    let mut p = RawClient::connect(broker.addr(), V5, "pub", true).await;
    // More than the channel holds: the publisher's acknowledgements wait for the consumer.
    for i in 1..=20u16 {
        p.send(&publish(
            "data/x",
            &i.to_string(),
            QoS::AtLeastOnce,
            i,
            false,
        ))
        .await;
    }
    // With nobody reading, not every PUBACK can come back.
    let mut acks = 0;
    while let Some(Some(Packet::PubAck(_))) = p.try_recv(Duration::from_millis(300)).await {
        acks += 1;
    }
    assert!(
        acks < 20,
        "the consumer did not hold publishers back ({acks} acks)"
    );
    for i in 1..=20u16 {
        let m = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.client_id, "pub");
        assert_eq!(m.message.payload, i.to_string());
    }
    while acks < 20 {
        match p.recv().await {
            Some(Packet::PubAck(_)) => acks += 1,
            other => panic!("{other:?}"),
        }
    }
    // A consumer that goes away stops the reporting; publishing goes on.
    drop(rx);
    p.send(&publish("data/x", "after", QoS::AtLeastOnce, 21, false))
        .await;
    assert!(matches!(p.recv().await, Some(Packet::PubAck(_))));
    broker.stop().await;
}
