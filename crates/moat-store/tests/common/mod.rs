//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use moat_codec::{LastWill, Properties, QoS, RetainHandling, SubscriptionOptions};
use moat_core::store::{StoreOp, StoredMessage, StoredState};

pub fn msg(topic: &str, payload: &[u8]) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expires_at_ms: None,
        subscription_ids: Vec::new(),
    }
}

pub fn rich_msg(topic: &str) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::from_static(b"\x00\xffpayload"),
        qos: QoS::ExactlyOnce,
        retain: true,
        properties: Properties::from(moat_codec::PropertySet {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(120),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/to/me".into()),
            correlation_data: Some(Bytes::from_static(b"corr")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            ..Default::default()
        }),
        expires_at_ms: Some(1_800_000_000_000),
        subscription_ids: vec![7, 268_435_455],
    }
}

pub fn will(topic: &str) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::from(moat_codec::PropertySet {
            will_delay_interval: Some(30),
            content_type: Some("text/plain".into()),
            ..Default::default()
        }),
    }
}

pub fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
    }
}

pub fn upsert(client: &str, expiry: u32) -> StoreOp {
    StoreOp::SessionUpsert {
        client_id: client.into(),
        expiry_interval: expiry,
    }
}

pub fn put(client: &str, seq: u64, m: StoredMessage) -> StoreOp {
    StoreOp::MessagePut {
        client_id: client.into(),
        seq,
        message: m,
        state: StoredState::Queued,
    }
}

/// A store with a bit of everything in it.
pub fn populate(store: &mut moat_store::DiskStore) {
    use moat_core::store::Store;
    let mut ops = vec![
        upsert("alice", 3600),
        upsert("bob/with/slashes", u32::MAX),
        StoreOp::SubscriptionSet {
            client_id: "alice".into(),
            filter: "a/#".into(),
            options: opts(QoS::ExactlyOnce),
            id: Some(3),
        },
        StoreOp::SubscriptionSet {
            client_id: "bob/with/slashes".into(),
            filter: "$share/g/x/+".into(),
            options: opts(QoS::AtLeastOnce),
            id: None,
        },
        StoreOp::IncomingQos2Add {
            client_id: "alice".into(),
            packet_id: 42,
        },
        StoreOp::WillSet {
            client_id: "alice".into(),
            will: will("alice/status"),
            at_ms: 1_700_000_030_000,
        },
        StoreOp::RetainedSet {
            message: rich_msg("retained/one"),
        },
    ];
    for seq in 1..=50 {
        ops.push(put("alice", seq, msg("a/b", &seq.to_le_bytes())));
        ops.push(put("bob/with/slashes", seq, rich_msg("x/y")));
    }
    store.apply(&ops).unwrap();
}
