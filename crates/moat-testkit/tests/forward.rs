//! Forwarding through the spool, with a sink in this process (the real PostgreSQL and
//! JetStream sinks have their own tests): matching messages arrive in order with who sent
//! them; a sink that is down keeps them spooled and gets them when it is back; a full spool
//! holds the publisher's acknowledgements instead of dropping; a restart resumes the spool
//! and never reuses a key.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moat_codec::{Packet, PacketId, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use moat_server::{
    Durability, ForwardRule, Record, Server, ServerConfig, Sink, SinkError, StoreConfig,
};
use moat_testkit::{connect_packet, RawClient, TestBroker, TIMEOUT};
use tokio::sync::Notify;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// What the test sink got, and whether it works.
#[derive(Default)]
struct Backend {
    records: Mutex<Vec<Record>>,
    down: Mutex<bool>,
    changed: Notify,
}

impl Backend {
    fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }

    fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until the sink has `n` records.
    async fn wait_for(&self, n: usize) -> Vec<Record> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let changed = self.changed.notified();
                let got = self.records();
                if got.len() >= n {
                    return got;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the sink got {} of {n} records", self.records().len()))
    }
}

struct TestSink(Arc<Backend>);

impl Sink for TestSink {
    fn describe(&self) -> String {
        "test sink".into()
    }

    fn write<'a>(
        &'a mut self,
        batch: &'a [Record],
    ) -> Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            if *self.0.down.lock().unwrap() {
                self.0.changed.notify_waiters();
                return Err(SinkError::Unavailable {
                    target: "test sink".into(),
                    source: "the test says so".into(),
                });
            }
            // Idempotent by key, as the real sinks are.
            let mut records = self.0.records.lock().unwrap();
            for r in batch {
                if !records.iter().any(|x| x.key == r.key) {
                    records.push(r.clone());
                }
            }
            drop(records);
            self.0.changed.notify_waiters();
            Ok(())
        })
    }
}

fn config(store: &std::path::Path, max_messages: u64) -> ServerConfig {
    let mut c = TestBroker::config();
    c.store = Some(StoreConfig {
        dir: store.to_owned(),
        durability: Durability::GroupCommit,
    });
    c.forward.rules = vec![ForwardRule {
        name: "telemetry".into(),
        filters: vec!["devices/+/telemetry".into(), "alarms/#".into()],
    }];
    c.forward.spool_max_messages = max_messages;
    c
}

async fn start(store: &std::path::Path, max_messages: u64, backend: &Arc<Backend>) -> TestBroker {
    let mut server = Server::bind(config(store, max_messages)).await.unwrap();
    server
        .attach_sink("telemetry", Box::new(TestSink(Arc::clone(backend))))
        .unwrap();
    TestBroker::start_server(server)
}

fn publish(topic: &str, payload: &str, qos: QoS, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

async fn client(broker: &TestBroker, id: &str) -> RawClient {
    let mut c = RawClient::open(broker.addr(), V5).await;
    let mut connect = connect_packet(id, V5, true);
    connect.username = Some("ann".into());
    let ack = c.handshake(connect).await.expect("CONNACK");
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    c
}

/// Sends a QoS 1 PUBLISH and waits for its PUBACK.
async fn publish_acked(c: &mut RawClient, topic: &str, payload: &str, id: u16) {
    c.send(&publish(topic, payload, QoS::AtLeastOnce, id)).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id.get(), id),
        other => panic!("expected PUBACK {id}, got {other:?}"),
    }
}

#[tokio::test]
async fn matching_messages_reach_the_sink_in_order_with_who_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Backend::default());
    let broker = start(dir.path(), 1000, &backend).await;
    let mut c = client(&broker, "dev-1").await;
    let mut p = publish("devices/d1/telemetry", "{\"t\":21.5}", QoS::AtLeastOnce, 1);
    if let Packet::Publish(p) = &mut p {
        p.properties.content_type = Some("application/json".into());
        p.properties.user_properties = vec![("site".into(), "north".into())];
    }
    c.send(&p).await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    // Not matching: not forwarded.
    publish_acked(&mut c, "devices/d1/status", "up", 2).await;
    c.send(&publish("alarms/fire/3", "qos0", QoS::AtMostOnce, 0))
        .await;
    publish_acked(&mut c, "devices/d2/telemetry", "second", 3).await;

    let got = backend.wait_for(3).await;
    let payloads: Vec<&[u8]> = got.iter().map(|r| r.payload.as_ref()).collect();
    assert_eq!(
        payloads,
        [b"{\"t\":21.5}".as_slice(), b"qos0", b"second"],
        "in publish order"
    );
    let first = &got[0];
    assert_eq!(first.topic, "devices/d1/telemetry");
    assert_eq!((first.qos, first.retain), (1, false));
    assert_eq!(first.client_id, "dev-1");
    // An anonymous listener authenticates no user name: none is claimed for it.
    assert_eq!(first.username, None);
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        first.user_properties,
        [("site".to_owned(), "north".to_owned())]
    );
    assert_eq!(got[1].qos, 0);
    assert!(got.windows(2).all(|w| w[0].key < w[1].key), "keys increase");

    // Confirmed records leave the spool.
    let metrics = tokio::time::timeout(TIMEOUT, async {
        loop {
            let m = broker.handle().metrics_text().await;
            if m.contains("moat_forward_spooled_messages{rule=\"telemetry\"} 0")
                && m.contains("moat_forward_messages_total{rule=\"telemetry\"} 3")
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("spool emptied and 3 counted");
    assert!(
        metrics.contains("moat_forward_sink_up{rule=\"telemetry\"} 1"),
        "{metrics}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_sink_that_is_down_gets_everything_when_it_is_back_and_a_full_spool_holds_acks() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Backend::default());
    backend.set_down(true);
    let broker = start(dir.path(), 5, &backend).await;
    let mut c = client(&broker, "dev-1").await;
    let mut other = client(&broker, "dev-2").await;
    // Five fill the spool; each is acknowledged once it is spooled.
    for i in 1..=5 {
        publish_acked(&mut c, "devices/d1/telemetry", &format!("m{i}"), i).await;
    }
    // The sixth is spooled but its acknowledgement is held: the publisher is slowed.
    c.send(&publish("devices/d1/telemetry", "m6", QoS::AtLeastOnce, 6))
        .await;
    assert!(
        c.try_recv(Duration::from_millis(300)).await.is_none(),
        "no PUBACK while the spool is full"
    );
    // A matching QoS 0 message is dropped at the bound (counted); others are served.
    other
        .send(&publish("alarms/x", "dropped", QoS::AtMostOnce, 0))
        .await;
    publish_acked(&mut other, "devices/d2/status", "unrelated", 1).await;
    let m = broker.handle().metrics_text().await;
    assert!(
        m.contains("moat_forward_spool_full{rule=\"telemetry\"} 1"),
        "{m}"
    );
    assert!(m.contains("moat_forward_held_publishers 1"), "{m}");
    assert!(
        m.contains("moat_forward_sink_up{rule=\"telemetry\"} 0"),
        "{m}"
    );

    // While the sink stays down the oldest spooled message keeps ageing (the retries say so,
    // not only the read that took the batch).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = broker.handle().forwarding();
        if status[0].oldest_age_seconds >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the oldest age stays at {} s while the sink is down",
            status[0].oldest_age_seconds
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The sink is back: everything arrives in order, the held PUBACK is released.
    backend.set_down(false);
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.packet_id.get(), 6),
        other => panic!("expected the held PUBACK, got {other:?}"),
    }
    let got = backend.wait_for(6).await;
    let payloads: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["m1", "m2", "m3", "m4", "m5", "m6"]);
    let m = broker.handle().metrics_text().await;
    assert!(
        m.contains("moat_forward_dropped_qos0_total{rule=\"telemetry\"} 1"),
        "{m}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_the_spool_and_never_reuses_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(Backend::default());
    down.set_down(true);
    let broker = start(dir.path(), 1000, &down).await;
    let mut c = client(&broker, "dev-1").await;
    for i in 1..=3 {
        publish_acked(&mut c, "devices/d1/telemetry", &format!("m{i}"), i).await;
    }
    drop(c);
    broker.stop().await;
    assert!(down.records().is_empty());

    let backend = Arc::new(Backend::default());
    let broker = start(dir.path(), 1000, &backend).await;
    let got = backend.wait_for(3).await;
    let keys: Vec<u64> = got.iter().map(|r| r.key).collect();
    assert_eq!(keys, [0, 1, 2]);
    let mut c = client(&broker, "dev-1").await;
    publish_acked(&mut c, "devices/d1/telemetry", "m4", 4).await;
    let got = backend.wait_for(4).await;
    assert_eq!(got[3].key, 3, "the next key follows the store's counter");
    assert_eq!(got[3].payload.as_ref(), b"m4");
    broker.stop().await;
}

#[tokio::test]
async fn forwarding_without_the_store_is_refused() {
    let mut c = TestBroker::config();
    c.forward.rules = vec![ForwardRule {
        name: "r".into(),
        filters: vec!["#".into()],
    }];
    let e = Server::bind(c).await.unwrap_err();
    assert!(e.to_string().contains("[store] enabled = true"), "{e}");
}
