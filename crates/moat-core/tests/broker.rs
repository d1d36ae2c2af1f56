//! The broker core driven by scripted clients and a virtual clock: no sockets, no sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_codec::{
    Connect, Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish,
    QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};
use moat_core::{Broker, BrokerConfig, ClientInfo, ConnId, Input, Output};

const V3: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

struct Harness {
    broker: Broker,
    now: Instant,
    next_conn: u64,
    pending: Vec<Output>,
}

/// Every output produced so far.
fn drain(broker: &mut Broker) -> Vec<Output> {
    let mut out = Vec::new();
    broker.drain_outputs_into(&mut out);
    out
}

fn pid(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn connect_packet(client_id: &str, version: ProtocolVersion, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &str, payload: &str, qos: QoS, id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn sub(filter: &str, qos: QoS) -> (String, SubscriptionOptions) {
    (
        filter.into(),
        SubscriptionOptions {
            qos,
            ..Default::default()
        },
    )
}

impl Harness {
    fn new() -> Self {
        let config = BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        };
        Self::with_config(config)
    }

    fn with_config(config: BrokerConfig) -> Self {
        let now = Instant::now();
        Self {
            broker: Broker::new(config, now),
            now,
            next_conn: 1,
            pending: Vec::new(),
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.broker.handle_timeout(self.now);
    }

    /// Connects and returns (conn, CONNACK, other packets sent to it).
    fn connect_with(&mut self, c: Connect) -> (ConnId, moat_codec::ConnAck, Vec<Packet>) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let info = ClientInfo::default();
        let connect = Box::new(c);
        self.broker.handle(
            Input::Connect {
                conn,
                connect,
                info,
            },
            self.now,
        );
        let mut out = self.take(conn);
        assert!(!out.is_empty(), "no CONNACK");
        let Packet::ConnAck(ack) = out.remove(0) else {
            panic!("first packet not CONNACK")
        };
        (conn, ack, out)
    }

    fn connect(&mut self, id: &str, version: ProtocolVersion, clean: bool) -> ConnId {
        let (conn, ack, _) = self.connect_with(connect_packet(id, version, clean));
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        conn
    }

    fn send(&mut self, conn: ConnId, p: Packet) {
        self.broker
            .handle(Input::Packet { conn, packet: p }, self.now);
    }

    /// Packets queued for `conn`; the other connections' actions stay pending.
    /// A server whose outboxes always have room: `WantRoom` is answered at once.
    fn take(&mut self, conn: ConnId) -> Vec<Packet> {
        let mut actions = std::mem::take(&mut self.pending);
        actions.extend(drain(&mut self.broker));
        let mut mine = Vec::new();
        while !actions.is_empty() {
            let mut writable = Vec::new();
            for a in actions {
                match a {
                    Output::Send(c, p) if c == conn => mine.push(p),
                    Output::WantRoom(c) => writable.push(c),
                    Output::Connected { .. } | Output::Persist(_) => {}
                    other => self.pending.push(other),
                }
            }
            for c in writable {
                self.broker.handle(Input::Writable { conn: c }, self.now);
            }
            actions = drain(&mut self.broker);
        }
        mine
    }

    fn all_for(&mut self, conn: ConnId) -> Vec<Packet> {
        self.take(conn)
    }

    /// Whether the broker asked to close `conn` (packets for it are discarded).
    fn closed(&mut self, conn: ConnId) -> bool {
        let mut actions = std::mem::take(&mut self.pending);
        actions.extend(drain(&mut self.broker));
        let closed = actions.iter().any(|a| *a == Output::Close(conn));
        self.pending.extend(actions.into_iter().filter(|a| match a {
            Output::Close(c) | Output::Send(c, _) | Output::WantRoom(c) => *c != conn,
            _ => false,
        }));
        closed
    }

    fn subscribe(
        &mut self,
        conn: ConnId,
        filters: Vec<(String, SubscriptionOptions)>,
    ) -> Vec<ReasonCode> {
        self.subscribe_props(conn, filters, Properties::default())
    }

    fn subscribe_props(
        &mut self,
        conn: ConnId,
        filters: Vec<(String, SubscriptionOptions)>,
        properties: Properties,
    ) -> Vec<ReasonCode> {
        self.send(
            conn,
            Packet::Subscribe(Subscribe {
                packet_id: pid(1),
                properties,
                filters,
            }),
        );
        let out = self.take(conn);
        match out.first() {
            Some(Packet::SubAck(a)) => a.reason_codes.clone(),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| {
            if let Packet::Publish(p) = p {
                Some(p)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn qos0_pubsub_and_dollar_topics() {
    let mut h = Harness::new();
    let a = h.connect("a", V3, true);
    assert_eq!(
        h.subscribe(a, vec![sub("#", QoS::AtMostOnce)]),
        vec![ReasonCode::GRANTED_QOS_0]
    );
    let b = h.connect("b", V3, true);
    h.send(
        b,
        Packet::Publish(publish("TopicA/B", "x", QoS::AtMostOnce, 0)),
    );
    h.send(
        b,
        Packet::Publish(publish("$TopicA/B", "y", QoS::AtMostOnce, 0)),
    );
    let got = h.all_for(a);
    let p = publishes(&got);
    assert_eq!(p.len(), 1, "{got:?}");
    assert_eq!(p[0].topic, "TopicA/B");
    assert_eq!(p[0].payload, "x");
}

#[test]
fn qos1_and_qos2_inbound_flows() {
    let mut h = Harness::new();
    let a = h.connect("a", V5, true);
    h.send(a, Packet::Publish(publish("t", "1", QoS::AtLeastOnce, 7)));
    let out = h.take(a);
    let Packet::PubAck(ack) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(ack.packet_id, pid(7));
    assert_eq!(ack.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS);

    h.subscribe(a, vec![sub("t", QoS::ExactlyOnce)]);
    h.send(a, Packet::Publish(publish("t", "2", QoS::ExactlyOnce, 8)));
    let out = h.take(a);
    assert!(
        out.iter()
            .any(|p| matches!(p, Packet::PubRec(r) if r.packet_id == pid(8))),
        "{out:?}"
    );
    assert_eq!(publishes(&out).len(), 1);
    // The same packet id again before PUBREL: acknowledged, not delivered twice.
    let mut dup = publish("t", "2", QoS::ExactlyOnce, 8);
    dup.dup = true;
    h.send(a, Packet::Publish(dup));
    let out = h.take(a);
    assert!(matches!(&out[0], Packet::PubRec(_)));
    assert_eq!(publishes(&out).len(), 0, "QoS 2 delivered twice: {out:?}");
    h.send(a, Packet::PubRel(PubAck::new(pid(8))));
    let out = h.take(a);
    assert!(matches!(&out[0], Packet::PubComp(c) if c.reason_code == ReasonCode::SUCCESS));
    // PUBREL for an unknown id: v5 PUBCOMP with 0x92.
    h.send(a, Packet::PubRel(PubAck::new(pid(9))));
    let out = h.take(a);
    assert!(
        matches!(&out[0], Packet::PubComp(c) if c.reason_code == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
    );
}

#[test]
fn outbound_qos2_flow_and_redelivery_after_reconnect() {
    let mut h = Harness::new();
    let s = h.connect("sub", V3, false);
    h.subscribe(s, vec![sub("t/#", QoS::ExactlyOnce)]);
    let p = h.connect("pub", V3, true);
    h.send(
        p,
        Packet::Publish(publish("t/1", "q1", QoS::AtLeastOnce, 1)),
    );
    h.send(
        p,
        Packet::Publish(publish("t/2", "q2", QoS::ExactlyOnce, 2)),
    );
    let got = h.all_for(s);
    let ps = publishes(&got);
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[0].qos, QoS::AtLeastOnce);
    assert_eq!(ps[1].qos, QoS::ExactlyOnce);
    let (id1, id2) = (ps[0].packet_id.unwrap(), ps[1].packet_id.unwrap());
    // PUBREC for the QoS 2 message, then the connection drops before PUBCOMP.
    h.send(s, Packet::PubRec(PubAck::new(id2)));
    assert!(matches!(&h.all_for(s)[0], Packet::PubRel(r) if r.packet_id == id2));
    h.broker.handle(Input::Lost { conn: s }, h.now);

    let (s2, ack, resent) = h.connect_with(connect_packet("sub", V3, false));
    assert!(ack.session_present);
    // QoS 1 resent with DUP, then PUBREL for the QoS 2 one [MQTT-4.4.0-1].
    assert_eq!(resent.len(), 2, "{resent:?}");
    assert!(matches!(&resent[0], Packet::Publish(p) if p.dup && p.packet_id == Some(id1)));
    assert!(matches!(&resent[1], Packet::PubRel(r) if r.packet_id == id2));
    h.send(s2, Packet::PubAck(PubAck::new(id1)));
    h.send(s2, Packet::PubComp(PubAck::new(id2)));
    assert!(h.take(s2).is_empty());
}

#[test]
fn offline_queue_for_persistent_session_not_for_clean() {
    let mut h = Harness::new();
    let s = h.connect("sub", V3, false);
    h.subscribe(s, vec![sub("q", QoS::AtLeastOnce)]);
    h.send(s, Packet::Disconnect(Disconnect::default()));
    assert!(h.closed(s));
    let p = h.connect("pub", V3, true);
    h.send(p, Packet::Publish(publish("q", "0", QoS::AtMostOnce, 0)));
    h.send(p, Packet::Publish(publish("q", "1", QoS::AtLeastOnce, 1)));
    h.send(p, Packet::Publish(publish("q", "2", QoS::ExactlyOnce, 2)));
    let (_, ack, queued) = h.connect_with(connect_packet("sub", V3, false));
    assert!(ack.session_present);
    let ps = publishes(&queued);
    assert_eq!(
        ps.iter().map(|p| &p.payload[..]).collect::<Vec<_>>(),
        vec![b"1", b"2"]
    );
    // QoS 2 message downgraded to the granted QoS 1.
    assert!(ps.iter().all(|p| p.qos == QoS::AtLeastOnce));

    // Clean session: nothing kept.
    let (c, ack, _) = h.connect_with(connect_packet("sub", V3, true));
    assert!(!ack.session_present);
    h.broker.handle(Input::Lost { conn: c }, h.now);
    let (_, ack, _) = h.connect_with(connect_packet("sub", V3, false));
    assert!(!ack.session_present);
}

#[test]
fn retained_messages_set_replace_clear() {
    let mut h = Harness::new();
    let p = h.connect("pub", V3, true);
    let mut m = publish("r/a", "one", QoS::AtLeastOnce, 1);
    m.retain = true;
    h.send(p, Packet::Publish(m.clone()));
    m.payload = Bytes::from_static(b"two");
    h.send(p, Packet::Publish(m.clone()));
    let mut m2 = publish("r/b", "b", QoS::AtMostOnce, 0);
    m2.retain = true;
    h.send(p, Packet::Publish(m2));
    h.take(p);
    assert_eq!(h.broker.retained_count(), 2);

    let s = h.connect("s", V3, true);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(3),
            properties: Properties::default(),
            filters: vec![sub("r/+", QoS::ExactlyOnce)],
        }),
    );
    let out = h.take(s);
    assert!(
        matches!(&out[0], Packet::SubAck(_)),
        "SUBACK first: {out:?}"
    );
    let ps = publishes(&out);
    assert_eq!(ps.len(), 2);
    assert!(ps.iter().all(|p| p.retain));
    let a = ps.iter().find(|p| p.topic == "r/a").unwrap();
    assert_eq!(a.payload, "two");
    assert_eq!(a.qos, QoS::AtLeastOnce);

    // A live message to an existing subscription has RETAIN cleared (v3) [MQTT-3.3.1-9].
    let mut live = publish("r/a", "three", QoS::AtMostOnce, 0);
    live.retain = true;
    h.send(p, Packet::Publish(live));
    let got = h.all_for(s);
    assert!(!publishes(&got)[0].retain);

    // Empty payload clears.
    let mut clear = publish("r/a", "", QoS::AtMostOnce, 0);
    clear.retain = true;
    h.send(p, Packet::Publish(clear));
    assert_eq!(h.broker.retained_count(), 1);
}

#[test]
fn will_published_on_loss_not_on_disconnect() {
    let mut h = Harness::new();
    let s = h.connect("s", V3, true);
    h.subscribe(s, vec![sub("will/#", QoS::AtLeastOnce)]);
    let mut c = connect_packet("w", V3, true);
    c.will = Some(LastWill {
        topic: "will/w".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (w, _, _) = h.connect_with(c.clone());
    h.send(w, Packet::Disconnect(Disconnect::default()));
    assert!(publishes(&h.all_for(s)).is_empty());

    let (w, _, _) = h.connect_with(c);
    h.broker.handle(Input::Lost { conn: w }, h.now);
    let got = h.all_for(s);
    assert_eq!(publishes(&got)[0].payload, "gone");
}

#[test]
fn will_delay_and_cancel_on_reconnect() {
    let mut h = Harness::new();
    let s = h.connect("s", V5, true);
    h.subscribe(s, vec![sub("will", QoS::AtMostOnce)]);
    let mut c = connect_packet("w", V5, false);
    c.properties.session_expiry_interval = Some(100);
    c.will = Some(LastWill {
        topic: "will".into(),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::from(moat_codec::PropertySet {
            will_delay_interval: Some(10),
            ..Default::default()
        }),
    });
    let (w, _, _) = h.connect_with(c.clone());
    h.broker.handle(Input::Lost { conn: w }, h.now);
    h.advance(5);
    assert!(publishes(&h.all_for(s)).is_empty());
    // Reconnecting within the delay cancels the will.
    let (w, _, _) = h.connect_with(c.clone());
    h.advance(20);
    assert!(publishes(&h.all_for(s)).is_empty());
    // Lost again: sent after 10 s.
    h.broker.handle(Input::Lost { conn: w }, h.now);
    h.advance(9);
    assert!(publishes(&h.all_for(s)).is_empty());
    h.advance(1);
    assert_eq!(publishes(&h.all_for(s)).len(), 1);
}

#[test]
fn session_expiry_v5() {
    let mut h = Harness::new();
    let mut c = connect_packet("e", V5, true);
    c.properties.session_expiry_interval = Some(5);
    let (conn, _, _) = h.connect_with(c.clone());
    h.subscribe(conn, vec![sub("x", QoS::AtLeastOnce)]);
    h.send(conn, Packet::Disconnect(Disconnect::default()));
    h.advance(2);
    c.clean_start = false;
    let (conn, ack, _) = h.connect_with(c.clone());
    assert!(ack.session_present);
    h.send(conn, Packet::Disconnect(Disconnect::default()));
    h.advance(6);
    let (conn, ack, _) = h.connect_with(c.clone());
    assert!(!ack.session_present, "session should have expired");
    // DISCONNECT may change the interval; 0 in CONNECT cannot be raised.
    h.send(
        conn,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::from(moat_codec::PropertySet {
                session_expiry_interval: Some(0),
                ..Default::default()
            }),
        }),
    );
    let (conn, ack, _) = h.connect_with(c.clone());
    assert!(!ack.session_present);
    let mut zero = c.clone();
    zero.properties.session_expiry_interval = None;
    h.broker.handle(Input::Lost { conn }, h.now);
    let (conn, _, _) = h.connect_with(zero);
    h.send(
        conn,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::from(moat_codec::PropertySet {
                session_expiry_interval: Some(10),
                ..Default::default()
            }),
        }),
    );
    let out = h.all_for(conn);
    assert!(
        matches!(&out[0], Packet::Disconnect(d) if d.reason_code == ReasonCode::PROTOCOL_ERROR),
        "{out:?}"
    );
}

#[test]
fn takeover_disconnects_old_connection() {
    let mut h = Harness::new();
    let old = h.connect("dup", V5, true);
    let new = h.connect("dup", V5, true);
    let out = h.all_for(old);
    assert!(
        matches!(&out[0], Packet::Disconnect(d) if d.reason_code == ReasonCode::SESSION_TAKEN_OVER)
    );
    assert!(h.closed(old));
    // The new connection works.
    h.send(new, Packet::PingReq);
    assert_eq!(h.take(new), vec![Packet::PingResp]);
}

#[test]
fn empty_client_id_rules() {
    let mut h = Harness::new();
    let (_, ack, _) = h.connect_with(connect_packet("", V3, false));
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let (_, ack, _) = h.connect_with(connect_packet("", V3, true));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_, ack, _) = h.connect_with(connect_packet("", V5, false));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(ack.properties.assigned_client_identifier.is_some());
}

#[test]
fn overlapping_subscriptions_deliver_once_with_max_qos_and_all_ids() {
    let mut h = Harness::new();
    let a = h.connect("a", V5, true);
    h.subscribe_props(
        a,
        vec![sub("TopicA/#", QoS::ExactlyOnce)],
        Properties::from(moat_codec::PropertySet {
            subscription_identifiers: vec![1],
            ..Default::default()
        }),
    );
    h.subscribe_props(
        a,
        vec![sub("TopicA/+", QoS::AtLeastOnce)],
        Properties::from(moat_codec::PropertySet {
            subscription_identifiers: vec![2],
            ..Default::default()
        }),
    );
    h.send(
        a,
        Packet::Publish(publish("TopicA/C", "o", QoS::ExactlyOnce, 5)),
    );
    let out = h.take(a);
    let ps = publishes(&out);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].qos, QoS::ExactlyOnce);
    let mut ids = ps[0].properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn no_local_retain_as_published_and_retain_handling() {
    let mut h = Harness::new();
    let a = h.connect("a", V5, true);
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..Default::default()
    };
    h.subscribe(a, vec![("nl".into(), opts)]);
    h.send(a, Packet::Publish(publish("nl", "x", QoS::AtMostOnce, 0)));
    assert!(publishes(&h.take(a)).is_empty());

    let rap = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_as_published: true,
        ..Default::default()
    };
    h.subscribe(a, vec![("rap".into(), rap)]);
    let mut m = publish("rap", "r", QoS::AtMostOnce, 0);
    m.retain = true;
    h.send(a, Packet::Publish(m));
    assert!(publishes(&h.take(a))[0].retain);

    // retain handling 1: only for a new subscription; 2: never.
    let rh1 = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
        ..Default::default()
    };
    h.send(
        a,
        Packet::Subscribe(Subscribe {
            packet_id: pid(2),
            properties: Default::default(),
            filters: vec![("rap/#".into(), rh1)],
        }),
    );
    assert_eq!(publishes(&h.take(a)).len(), 1);
    h.send(
        a,
        Packet::Subscribe(Subscribe {
            packet_id: pid(3),
            properties: Default::default(),
            filters: vec![("rap/#".into(), rh1)],
        }),
    );
    assert_eq!(publishes(&h.take(a)).len(), 0);
    let rh2 = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..Default::default()
    };
    h.send(
        a,
        Packet::Subscribe(Subscribe {
            packet_id: pid(4),
            properties: Default::default(),
            filters: vec![("r+".into(), rh2), ("rap".into(), rh2)],
        }),
    );
    let out = h.take(a);
    assert!(
        matches!(&out[0], Packet::SubAck(s) if s.reason_codes == vec![ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::GRANTED_QOS_0])
    );
    assert_eq!(publishes(&out).len(), 0);
}

/// Within one routing batch a member takes up to 8 messages in a row (one write for them);
/// the next batch starts with the next member, and a disconnected member is passed over.
#[test]
fn shared_subscriptions_take_runs_within_a_batch() {
    let mut h = Harness::new();
    let a = h.connect("a", V5, true);
    let b = h.connect("b", V5, true);
    h.subscribe(a, vec![sub("$share/g/s/+", QoS::AtMostOnce)]);
    h.subscribe(b, vec![sub("$share/g/s/+", QoS::AtMostOnce)]);
    let p = h.connect("p", V5, true);
    let batch = |h: &mut Harness, n: usize| {
        h.broker.begin_batch();
        for i in 0..n {
            let m = publish("s/x", &i.to_string(), QoS::AtMostOnce, 0);
            h.send(p, Packet::Publish(m));
        }
        h.broker.end_batch();
        (
            publishes(&h.all_for(a)).len(),
            publishes(&h.all_for(b)).len(),
        )
    };
    assert_eq!(batch(&mut h, 10), (8, 2));
    // The next batch starts a new run with the next member.
    assert_eq!(batch(&mut h, 3), (3, 0));
    assert_eq!(batch(&mut h, 3), (0, 3));
    // Outside a batch: one message each in turn.
    for i in 0..4 {
        let m = publish("s/x", &i.to_string(), QoS::AtMostOnce, 0);
        h.send(p, Packet::Publish(m));
    }
    assert_eq!(
        (
            publishes(&h.all_for(a)).len(),
            publishes(&h.all_for(b)).len()
        ),
        (2, 2)
    );
}

#[test]
fn shared_subscriptions_round_robin() {
    let mut h = Harness::new();
    let a = h.connect("a", V5, true);
    let b = h.connect("b", V5, true);
    h.subscribe(a, vec![sub("$share/g/s/+", QoS::AtMostOnce)]);
    h.subscribe(b, vec![sub("$share/g/s/+", QoS::AtMostOnce)]);
    let p = h.connect("p", V5, true);
    for i in 0..10 {
        h.send(
            p,
            Packet::Publish(publish("s/x", &i.to_string(), QoS::AtMostOnce, 0)),
        );
    }
    let na = publishes(&h.all_for(a)).len();
    let nb = publishes(&h.all_for(b)).len();
    assert_eq!((na, nb), (5, 5));
    // No Local on a shared subscription is a protocol error.
    let bad = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    h.send(
        a,
        Packet::Subscribe(Subscribe {
            packet_id: pid(9),
            properties: Default::default(),
            filters: vec![("$share/g/z".into(), bad)],
        }),
    );
    assert!(h.closed(a));
}

#[test]
fn topic_aliases_both_ways() {
    let mut h = Harness::new();
    let mut c = connect_packet("al", V5, true);
    c.properties.topic_alias_maximum = Some(2);
    let (a, ack, _) = h.connect_with(c);
    assert_eq!(ack.properties.topic_alias_maximum, Some(64));
    h.subscribe(a, vec![sub("al/#", QoS::AtMostOnce)]);
    let mut p = publish("al/1", "a", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    h.send(a, Packet::Publish(p));
    let mut p = publish("", "b", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    h.send(a, Packet::Publish(p));
    let out = h.take(a);
    let ps = publishes(&out);
    assert_eq!(ps.len(), 2);
    // First delivery sets the outbound alias, second uses it with an empty topic.
    assert_eq!(
        (ps[0].topic.as_str(), ps[0].properties.topic_alias),
        ("al/1", Some(1))
    );
    assert_eq!(
        (ps[1].topic.as_str(), ps[1].properties.topic_alias),
        ("", Some(1))
    );
    // Alias above the maximum: DISCONNECT 0x94.
    let mut p = publish("al/2", "c", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(65);
    h.send(a, Packet::Publish(p));
    let out = h.all_for(a);
    assert!(
        matches!(out.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::TOPIC_ALIAS_INVALID)
    );
}

#[test]
fn receive_maximum_limits_inflight_and_queue_drains() {
    let mut h = Harness::new();
    let mut c = connect_packet("rm", V5, true);
    c.properties.receive_maximum = Some(2);
    let (s, _, _) = h.connect_with(c);
    h.subscribe(s, vec![sub("f", QoS::AtLeastOnce)]);
    let p = h.connect("p", V5, true);
    for i in 1..=5 {
        h.send(
            p,
            Packet::Publish(publish("f", &i.to_string(), QoS::AtLeastOnce, i)),
        );
    }
    let got = h.all_for(s);
    let ps: Vec<Publish> = publishes(&got).into_iter().cloned().collect();
    assert_eq!(ps.len(), 2, "window of 2");
    h.send(s, Packet::PubAck(PubAck::new(ps[0].packet_id.unwrap())));
    let more = h.all_for(s);
    assert_eq!(publishes(&more).len(), 1);
    assert_eq!(publishes(&more)[0].payload, "3");
}

#[test]
fn maximum_packet_size_drops_oversize_deliveries() {
    let mut h = Harness::new();
    let mut c = connect_packet("mps", V5, true);
    c.properties.maximum_packet_size = Some(64);
    let (s, _, _) = h.connect_with(c);
    h.subscribe(s, vec![sub("big", QoS::AtLeastOnce)]);
    let p = h.connect("p", V5, true);
    h.send(
        p,
        Packet::Publish(publish("big", &"x".repeat(100), QoS::AtLeastOnce, 1)),
    );
    h.send(
        p,
        Packet::Publish(publish("big", "small", QoS::AtLeastOnce, 2)),
    );
    let got = h.all_for(s);
    let ps = publishes(&got);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].payload, "small");
}

#[test]
fn a_delivery_past_the_protocols_limit_is_dropped_and_counted() {
    // A 3.1.1 PUBLISH of exactly the largest Remaining Length (256 MiB - 1): to a 5.0
    // subscriber it gains a property length byte and can no longer be encoded at all.
    let mut h = Harness::new();
    let s = h.connect("v5-sub", V5, true);
    h.subscribe(s, vec![sub("huge", QoS::AtLeastOnce)]);
    let p = h.connect("v3-pub", V3, true);
    let mut big = publish("huge", "", QoS::AtLeastOnce, 1);
    big.payload = Bytes::from(vec![0u8; moat_codec::MAX_REMAINING_LENGTH - 2 - 2 - 4]);
    h.send(p, Packet::Publish(big));
    h.send(
        p,
        Packet::Publish(publish("huge", "small", QoS::AtLeastOnce, 2)),
    );
    let got = h.all_for(s);
    let ps = publishes(&got);
    assert_eq!(ps.len(), 1, "only the small one is sent");
    assert_eq!(ps[0].payload, "small");
    assert_eq!(h.broker.stats().dropped_too_large, 1);
}

#[test]
fn message_expiry_counts_down_and_drops() {
    let mut h = Harness::new();
    let mut c = connect_packet("exp", V5, false);
    c.properties.session_expiry_interval = Some(100);
    let (s, _, _) = h.connect_with(c.clone());
    h.subscribe(s, vec![sub("e", QoS::AtLeastOnce)]);
    h.broker.handle(Input::Lost { conn: s }, h.now);
    let p = h.connect("p", V5, true);
    let mut m = publish("e", "short", QoS::AtLeastOnce, 1);
    m.properties.message_expiry_interval = Some(1);
    h.send(p, Packet::Publish(m));
    let mut m = publish("e", "long", QoS::AtLeastOnce, 2);
    m.properties.message_expiry_interval = Some(6);
    h.send(p, Packet::Publish(m));
    h.advance(3);
    let (_, _, queued) = h.connect_with(c);
    let ps = publishes(&queued);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].payload, "long");
    assert_eq!(ps[0].properties.message_expiry_interval, Some(3));
}

#[test]
fn unsubscribe_reason_codes() {
    let mut h = Harness::new();
    let a = h.connect("u", V5, true);
    h.subscribe(a, vec![sub("a/b", QoS::AtMostOnce)]);
    h.send(
        a,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(2),
            properties: Default::default(),
            filters: vec!["a/b".into(), "c".into()],
        }),
    );
    let out = h.take(a);
    let Packet::UnsubAck(u) = &out[0] else {
        panic!()
    };
    assert_eq!(
        u.reason_codes,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    h.send(a, Packet::Publish(publish("a/b", "x", QoS::AtMostOnce, 0)));
    assert!(publishes(&h.take(a)).is_empty());
}

#[test]
fn server_keep_alive_and_second_connect() {
    let config = BrokerConfig {
        max_keep_alive: 30,
        sys_interval: None,
        ..Default::default()
    };
    let mut h = Harness::with_config(config);
    let mut c = connect_packet("k", V5, true);
    c.keep_alive = 120;
    let (conn, ack, _) = h.connect_with(c.clone());
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    h.send(conn, Packet::Connect(Box::new(c)));
    let out = h.all_for(conn);
    assert!(
        matches!(&out[0], Packet::Disconnect(d) if d.reason_code == ReasonCode::PROTOCOL_ERROR)
    );
}

#[test]
fn sys_topics_published() {
    let config = BrokerConfig {
        sys_interval: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let mut h = Harness::with_config(config);
    let a = h.connect("sys", V3, true);
    h.subscribe(a, vec![sub("$SYS/broker/#", QoS::AtMostOnce)]);
    h.advance(10);
    let got = h.all_for(a);
    let topics: Vec<&str> = publishes(&got).iter().map(|p| p.topic.as_str()).collect();
    assert!(
        topics.contains(&"$SYS/broker/clients/connected"),
        "{topics:?}"
    );
    // '#' alone does not see $SYS.
    let b = h.connect("all", V3, true);
    h.subscribe(b, vec![sub("#", QoS::AtMostOnce)]);
    h.advance(10);
    assert!(publishes(&h.all_for(b)).is_empty());
}

#[test]
fn queue_limit_drops_and_counts() {
    let config = BrokerConfig {
        max_queued_messages: 3,
        sys_interval: None,
        ..Default::default()
    };
    let mut h = Harness::with_config(config);
    let s = h.connect("q", V3, false);
    h.subscribe(s, vec![sub("q", QoS::AtLeastOnce)]);
    h.broker.handle(Input::Lost { conn: s }, h.now);
    let p = h.connect("p", V3, true);
    for i in 1..=5 {
        h.send(
            p,
            Packet::Publish(publish("q", &i.to_string(), QoS::AtLeastOnce, i)),
        );
    }
    // The publisher is acknowledged every time.
    let acks = h
        .all_for(p)
        .iter()
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count();
    assert_eq!(acks, 5);
    assert_eq!(h.broker.stats().messages_dropped, 2);
    let (_, _, queued) = h.connect_with(connect_packet("q", V3, false));
    assert_eq!(publishes(&queued).len(), 3);
}

#[test]
fn unsupported_authentication_method_is_refused() {
    let mut h = Harness::new();
    let mut c = connect_packet("auth", V5, true);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (_, ack, _) = h.connect_with(c);
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
}

#[test]
fn queue_overflow_tells_v5_publishers_quota_exceeded() {
    let config = BrokerConfig {
        max_queued_messages: 1,
        sys_interval: None,
        ..Default::default()
    };
    let mut h = Harness::with_config(config);
    let s = h.connect("q", V3, false);
    h.subscribe(s, vec![sub("q", QoS::AtLeastOnce)]);
    h.broker.handle(Input::Lost { conn: s }, h.now);
    let p = h.connect("p5", V5, true);
    h.send(p, Packet::Publish(publish("q", "1", QoS::AtLeastOnce, 1)));
    h.send(p, Packet::Publish(publish("q", "2", QoS::AtLeastOnce, 2)));
    let codes: Vec<ReasonCode> = h
        .take(p)
        .into_iter()
        .filter_map(|p| {
            if let Packet::PubAck(a) = p {
                Some(a.reason_code)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(codes, vec![ReasonCode::SUCCESS, ReasonCode::QUOTA_EXCEEDED]);
}

#[test]
fn expired_retained_and_queued_messages_are_swept() {
    let mut h = Harness::new();
    let mut c = connect_packet("sweep", V5, false);
    c.properties.session_expiry_interval = Some(3600);
    let (s, _, _) = h.connect_with(c);
    h.subscribe(s, vec![sub("e/#", QoS::AtLeastOnce)]);
    h.broker.handle(Input::Lost { conn: s }, h.now);
    let p = h.connect("p", V5, true);
    let mut m = publish("e/1", "short-lived", QoS::AtLeastOnce, 1);
    m.retain = true;
    m.properties.message_expiry_interval = Some(5);
    h.send(p, Packet::Publish(m));
    assert_eq!(h.broker.retained_count(), 1);
    let dropped = h.broker.stats().messages_dropped;
    h.advance(40);
    assert_eq!(
        h.broker.retained_count(),
        0,
        "expired retained message swept"
    );
    assert_eq!(
        h.broker.stats().messages_dropped,
        dropped + 1,
        "expired queued message swept"
    );
}

#[test]
fn queue_byte_limit_applies() {
    let config = BrokerConfig {
        max_queued_bytes: 100,
        sys_interval: None,
        ..Default::default()
    };
    let mut h = Harness::with_config(config);
    let s = h.connect("b", V3, false);
    h.subscribe(s, vec![sub("b", QoS::AtLeastOnce)]);
    h.broker.handle(Input::Lost { conn: s }, h.now);
    let p = h.connect("p", V3, true);
    for i in 1..=3 {
        h.send(
            p,
            Packet::Publish(publish("b", &"x".repeat(40), QoS::AtLeastOnce, i)),
        );
    }
    // 41 bytes each (payload and topic): two fit in 100, the third does not.
    let (_, _, queued) = h.connect_with(connect_packet("b", V3, false));
    assert_eq!(publishes(&queued).len(), 2);
}

fn acks_of(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) => Some(a.packet_id.get()),
            _ => None,
        })
        .collect()
}

/// A connected subscriber that falls behind holds back its publishers' acknowledgements
/// (in order, also those for other topics) until its queue is down to half the mark: the
/// publisher waits, nothing acknowledged is dropped. Going offline releases them.
#[test]
fn flow_control_holds_acks_for_a_slow_subscriber() {
    let config = BrokerConfig {
        max_inflight: 2,
        flow_control_queued: 4,
        sys_interval: None,
        ..Default::default()
    };
    let mut h = Harness::with_config(config);
    let slow = h.connect("slow", V3, true);
    h.subscribe(slow, vec![sub("slow", QoS::AtLeastOnce)]);
    let p = h.connect("p", V3, true);
    // 2 in flight, then the queue grows: 1, 2, 3, 4 (the 6th message reaches the mark).
    for i in 1..=5 {
        h.send(
            p,
            Packet::Publish(publish("slow", "m", QoS::AtLeastOnce, i)),
        );
    }
    assert_eq!(acks_of(&h.take(p)), vec![1, 2, 3, 4, 5]);
    h.send(
        p,
        Packet::Publish(publish("slow", "m", QoS::AtLeastOnce, 6)),
    );
    // Behind it: a message nobody waits for, and a QoS 2 one.
    h.send(
        p,
        Packet::Publish(publish("other", "m", QoS::AtLeastOnce, 7)),
    );
    h.send(
        p,
        Packet::Publish(publish("other", "m", QoS::ExactlyOnce, 8)),
    );
    // QoS 0 is never held.
    h.send(p, Packet::Publish(publish("slow", "m", QoS::AtMostOnce, 0)));
    assert_eq!(acks_of(&h.take(p)), Vec::<u16>::new());
    // The subscriber acknowledges: its queue (4) drains by one per PUBACK; at 2 (half the
    // mark) the held acknowledgements go out, in order.
    let sent = publishes(&h.take(slow))
        .iter()
        .filter_map(|m| m.packet_id)
        .collect::<Vec<_>>();
    assert_eq!(sent.len(), 2);
    h.send(slow, Packet::PubAck(PubAck::new(sent[0])));
    assert_eq!(acks_of(&h.take(p)), Vec::<u16>::new(), "queue 3 > 2");
    h.send(slow, Packet::PubAck(PubAck::new(sent[1])));
    assert_eq!(acks_of(&h.take(p)), vec![6, 7, 8]);

    // Congested again; then the subscriber goes away: its publishers are released.
    for i in 9..=14 {
        h.send(
            p,
            Packet::Publish(publish("slow", "m", QoS::AtLeastOnce, i)),
        );
    }
    let held = acks_of(&h.take(p));
    assert!(!held.contains(&14), "{held:?}");
    h.broker.handle(Input::Lost { conn: slow }, h.now);
    let rest = acks_of(&h.take(p));
    let all: Vec<u16> = held.into_iter().chain(rest).collect();
    assert_eq!(all, (9..=14).collect::<Vec<_>>());
    assert_eq!(h.broker.stats().messages_dropped, 0);
}

/// Actions the broker produced, without the harness answering `WantRoom`.
fn raw_actions(h: &mut Harness) -> Vec<Output> {
    let mut actions = std::mem::take(&mut h.pending);
    actions.extend(drain(&mut h.broker));
    actions
}

#[test]
fn retained_messages_are_paced_by_the_subscriber_never_dropped() {
    let mut h = Harness::with_config(BrokerConfig {
        sys_interval: None,
        retained_batch: 100,
        ..BrokerConfig::default()
    });
    let p = h.connect("pub", V5, true);
    for i in 0..1050 {
        let mut m = publish(&format!("r/{i:04}"), "x", QoS::AtMostOnce, 0);
        m.retain = true;
        h.send(p, Packet::Publish(m));
    }
    h.take(p);
    let s = h.connect("s", V5, true);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters: vec![sub("#", QoS::AtMostOnce)],
        }),
    );
    let mut topics = Vec::new();
    let mut rounds = 0;
    loop {
        let actions = raw_actions(&mut h);
        let mut want_room = false;
        for a in actions {
            match a {
                Output::Send(c, Packet::Publish(p)) if c == s && p.retain => topics.push(p.topic),
                Output::WantRoom(c) if c == s => want_room = true,
                _ => {}
            }
        }
        // A batch at a time: the next waits for the server's report of room.
        assert!(topics.len() <= 100 * (rounds + 1));
        if !want_room {
            break;
        }
        rounds += 1;
        assert!(rounds <= 20, "walk did not end");
        // A retained message published meanwhile, after the cursor, arrives too.
        if rounds == 3 {
            let mut m = publish("r/zzzz", "late", QoS::AtMostOnce, 0);
            m.retain = true;
            h.send(p, Packet::Publish(m));
        }
        h.broker.handle(Input::Writable { conn: s }, h.now);
    }
    assert_eq!(rounds, 10);
    assert_eq!(topics.len(), 1051);
    let mut sorted = topics.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 1051, "a retained message was sent twice");
    assert_eq!(h.broker.stats().messages_dropped, 0);
}

#[test]
fn unsubscribe_stops_a_retained_walk() {
    let mut h = Harness::with_config(BrokerConfig {
        sys_interval: None,
        retained_batch: 10,
        ..BrokerConfig::default()
    });
    let p = h.connect("pub", V5, true);
    for i in 0..50 {
        let mut m = publish(&format!("r/{i:02}"), "x", QoS::AtMostOnce, 0);
        m.retain = true;
        h.send(p, Packet::Publish(m));
    }
    h.take(p);
    let s = h.connect("s", V5, true);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters: vec![sub("r/#", QoS::AtMostOnce)],
        }),
    );
    assert_eq!(publishes(&h.all_for(s)).len(), 50); // the harness always has room
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(2),
            properties: Properties::default(),
            filters: vec![sub("r/+", QoS::AtMostOnce)],
        }),
    );
    let first = raw_actions(&mut h);
    assert!(first.contains(&Output::WantRoom(s)));
    h.send(
        s,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(3),
            properties: Properties::default(),
            filters: vec!["r/+".into()],
        }),
    );
    h.broker.handle(Input::Writable { conn: s }, h.now);
    let after = raw_actions(&mut h);
    assert!(
        !after
            .iter()
            .any(|a| matches!(a, Output::Send(c, Packet::Publish(_)) if *c == s)),
        "retained messages after UNSUBACK: {after:?}"
    );
}

#[test]
fn topic_limits_refuse_deep_and_long_topics() {
    let mut h = Harness::new();
    let deep = vec!["a"; 10_000].join("/");
    let at_limit = vec!["a"; 128].join("/");
    let over_limit = vec!["a"; 129].join("/");
    let long = "x".repeat(4097);
    for version in [V3, V5] {
        let id = format!("c{version:?}");
        let c = h.connect(&id, version, true);
        let codes = h.subscribe(
            c,
            vec![
                sub(&deep, QoS::AtLeastOnce),
                sub(&at_limit, QoS::AtLeastOnce),
                sub(&over_limit, QoS::AtLeastOnce),
                sub(&long, QoS::AtLeastOnce),
                sub(&format!("$share/g/{deep}"), QoS::AtLeastOnce),
            ],
        );
        let bad = if version == V5 {
            ReasonCode::TOPIC_FILTER_INVALID
        } else {
            ReasonCode(0x80)
        };
        assert_eq!(
            codes,
            vec![bad, ReasonCode(1), bad, bad, bad],
            "{version:?}"
        );
        // A PUBLISH beyond the limits is refused; the connection stays.
        h.send(c, Packet::Publish(publish(&deep, "x", QoS::AtLeastOnce, 7)));
        let out = h.take(c);
        let Some(Packet::PubAck(ack)) = out.first() else {
            panic!("{out:?}")
        };
        if version == V5 {
            assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID);
        }
        assert!(!h.closed(c));
        h.send(
            c,
            Packet::Publish(publish(&at_limit, "ok", QoS::AtMostOnce, 0)),
        );
        assert_eq!(publishes(&h.take(c)).len(), 1);
        h.send(
            c,
            Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(9),
                properties: Properties::default(),
                filters: vec![deep.clone(), at_limit.clone()],
            }),
        );
        let out = h.take(c);
        if version == V5 {
            let Some(Packet::UnsubAck(u)) = out.first() else {
                panic!("{out:?}")
            };
            assert_eq!(
                u.reason_codes,
                vec![ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::SUCCESS]
            );
        }
        // A will beyond the limits is refused at CONNECT.
        let mut connect = connect_packet(&format!("w{version:?}"), version, true);
        connect.will = Some(LastWill {
            topic: deep.clone(),
            payload: Bytes::from_static(b"w"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        });
        let (w, ack, _) = h.connect_with(connect);
        assert_eq!(ack.reason_code, ReasonCode::TOPIC_NAME_INVALID);
        assert!(h.closed(w));
    }
    let st = h.broker.stats();
    assert_eq!(st.subscriptions_refused, 8);
    assert_eq!(st.publishes_refused_topic, 2);
}

#[test]
fn subscriptions_per_client_and_retained_bytes_are_limited() {
    let mut h = Harness::with_config(BrokerConfig {
        sys_interval: None,
        max_subscriptions_per_client: 3,
        max_retained_bytes: 100,
        ..BrokerConfig::default()
    });
    let c = h.connect("c", V5, true);
    let codes = h.subscribe(
        c,
        vec![
            sub("a", QoS::AtMostOnce),
            sub("b", QoS::AtMostOnce),
            sub("c", QoS::AtMostOnce),
            sub("d", QoS::AtMostOnce),
            sub("a", QoS::AtLeastOnce), // a replacement is not a new subscription
        ],
    );
    assert_eq!(
        codes,
        vec![
            ReasonCode(0),
            ReasonCode(0),
            ReasonCode(0),
            ReasonCode::QUOTA_EXCEEDED,
            ReasonCode(1)
        ]
    );
    let mut m = publish("r/1", &"x".repeat(60), QoS::AtLeastOnce, 1);
    m.retain = true;
    h.send(c, Packet::Publish(m.clone()));
    m.topic = "r/2".into();
    m.packet_id = PacketId::new(2);
    h.send(c, Packet::Publish(m));
    let acks: Vec<ReasonCode> = h
        .take(c)
        .iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.reason_code),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        vec![
            ReasonCode::NO_MATCHING_SUBSCRIBERS,
            ReasonCode::QUOTA_EXCEEDED
        ]
    );
    assert_eq!(h.broker.retained_count(), 1);
    assert_eq!(h.broker.stats().retained_dropped, 1);
    assert_eq!(h.broker.stats().subscriptions_refused, 1);
}

#[test]
fn keep_alive_is_a_core_timer_on_the_virtual_clock() {
    let mut h = Harness::new();
    let mut c = connect_packet("ka", V5, true);
    c.keep_alive = 10;
    c.will = Some(LastWill {
        topic: "will/ka".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (conn, _, _) = h.connect_with(c);
    let watcher = h.connect("watcher", V5, true);
    h.subscribe(watcher, vec![sub("will/#", QoS::AtMostOnce)]);
    // 1.5 x 10 s: a packet at 14 s keeps it alive until 29 s.
    h.advance(14);
    assert!(!h.closed(conn));
    h.send(conn, Packet::PingReq);
    assert_eq!(h.take(conn), vec![Packet::PingResp]);
    h.advance(14);
    assert!(!h.closed(conn));
    assert!(h.broker.poll_timeout().is_some());
    h.advance(2);
    let out = h.take(conn);
    assert!(
        matches!(&out[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
        "{out:?}"
    );
    assert!(h.closed(conn));
    let got = h.take(watcher);
    assert_eq!(publishes(&got)[0].payload, "gone");
}

#[test]
fn the_same_seed_gives_the_same_assigned_client_ids() {
    let ids = |seed: u64| {
        let mut h = Harness::with_config(BrokerConfig {
            sys_interval: None,
            seed,
            ..BrokerConfig::default()
        });
        (0..3)
            .map(|_| {
                let (_, ack, _) = h.connect_with(connect_packet("", V5, true));
                ack.properties.assigned_client_identifier.clone().unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(7), ids(7));
    assert_ne!(ids(7), ids(8));
    let first = ids(7);
    let unique: std::collections::BTreeSet<_> = first.iter().collect();
    assert_eq!(unique.len(), 3);
}

fn admin(h: &mut Harness, request: moat_core::AdminRequest) -> moat_core::AdminReply {
    let id = moat_core::RequestId(42);
    h.broker.handle(Input::Admin { id, request }, h.now);
    let mut reply = None;
    for o in drain(&mut h.broker) {
        match o {
            Output::Reply { id: got, reply: r } if got == id => reply = Some(r),
            other => h.pending.push(other),
        }
    }
    reply.expect("no reply")
}

#[test]
fn admin_requests_list_page_disconnect_and_delete() {
    use moat_core::{AdminReply, AdminRequest, ClientQuery};
    let mut h = Harness::new();
    let conns: Vec<ConnId> = ["dev-c", "dev-a", "other", "dev-b"]
        .iter()
        .map(|id| h.connect(id, V5, true))
        .collect();
    let page = |h: &mut Harness, after: Option<&str>| {
        let q = ClientQuery {
            client_id_prefix: "dev-".into(),
            after: after.map(str::to_owned),
            limit: 2,
            ..ClientQuery::default()
        };
        match admin(h, AdminRequest::Clients(q)) {
            AdminReply::Clients { clients, more, .. } => (
                clients.into_iter().map(|c| c.client_id).collect::<Vec<_>>(),
                more,
            ),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        page(&mut h, None),
        (vec!["dev-a".into(), "dev-b".into()], true)
    );
    assert_eq!(page(&mut h, Some("dev-b")), (vec!["dev-c".into()], false));

    let reply = admin(
        &mut h,
        AdminRequest::Disconnect {
            client_id: "dev-a".into(),
            reason: ReasonCode::ADMINISTRATIVE_ACTION,
        },
    );
    assert_eq!(reply, AdminReply::Disconnected(true));
    let out = h.take(conns[1]);
    assert!(
        matches!(&out[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ADMINISTRATIVE_ACTION)
    );
    assert!(h.closed(conns[1]));
    assert_eq!(
        page(&mut h, None),
        (vec!["dev-b".into(), "dev-c".into()], false)
    );

    for t in ["r/a", "r/b", "q/x"] {
        let mut m = publish(t, "v", QoS::AtMostOnce, 0);
        m.retain = true;
        h.send(conns[2], Packet::Publish(m));
    }
    let listed = |h: &mut Harness, prefix: &str| match admin(
        h,
        AdminRequest::Retained {
            prefix: prefix.into(),
            after: None,
            limit: 10,
        },
    ) {
        AdminReply::Retained { messages, .. } => messages
            .into_iter()
            .map(|m| m.message.topic.clone())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed(&mut h, "r/"), vec!["r/a", "r/b"]);
    assert_eq!(listed(&mut h, ""), vec!["q/x", "r/a", "r/b"]);
    let reply = admin(
        &mut h,
        AdminRequest::DeleteRetained {
            topic: "r/a".into(),
        },
    );
    assert_eq!(reply, AdminReply::RetainedDeleted(true));
    assert_eq!(listed(&mut h, "r"), vec!["r/b"]);
    match admin(&mut h, AdminRequest::Stats) {
        AdminReply::Stats(s) => {
            assert_eq!(s.retained, 2);
            assert_eq!(s.stats.clients_connected, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn accepted_messages_interest_and_remote_messages() {
    use moat_core::{AdminRequest, Message};
    let mut h = Harness::with_config(BrokerConfig {
        sys_interval: None,
        report_interest: true,
        ..BrokerConfig::default()
    });
    let s = h.connect("s", V5, true);
    let t = h.connect("t", V5, true);
    h.send(
        s,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters: vec![sub("a/+", QoS::AtMostOnce)],
        }),
    );
    h.send(
        t,
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            properties: Properties::default(),
            filters: vec![sub("a/+", QoS::AtMostOnce)],
        }),
    );
    let interest: Vec<Output> = drain(&mut h.broker)
        .into_iter()
        .filter(|o| matches!(o, Output::Interest { .. }))
        .collect();
    assert_eq!(
        interest,
        vec![Output::Interest {
            filter: "a/+".into(),
            subscribed: true
        }]
    );
    admin(&mut h, AdminRequest::ReportAccepted(true));
    h.send(s, Packet::Publish(publish("a/1", "hi", QoS::AtMostOnce, 0)));
    let accepted: Vec<_> = drain(&mut h.broker)
        .into_iter()
        .filter_map(|o| match o {
            Output::Accepted(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].client_id, "s");
    assert_eq!(accepted[0].message.topic, "a/1");
    // A message from elsewhere reaches local subscribers like a client's.
    let remote = Message {
        topic: "a/2".into(),
        payload: Bytes::from_static(b"far"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        origin: None,
    };
    h.broker.handle(
        Input::Remote {
            message: std::sync::Arc::new(remote),
        },
        h.now,
    );
    assert_eq!(publishes(&h.take(t))[0].payload, "far");
    h.broker.handle(Input::Lost { conn: s }, h.now);
    h.broker.handle(Input::Lost { conn: t }, h.now);
    let gone: Vec<Output> = drain(&mut h.broker)
        .into_iter()
        .filter(|o| matches!(o, Output::Interest { .. }))
        .collect();
    assert_eq!(
        gone,
        vec![Output::Interest {
            filter: "a/+".into(),
            subscribed: false
        }]
    );
}

/// A publisher that never waits for its acknowledgements, to a subscriber that never reads:
/// the acknowledgements flow control holds back are bounded by `receive_maximum` (they were
/// held without bound), in order, and the overflow is counted.
#[test]
fn held_acknowledgements_are_bounded() {
    let mut h = Harness::with_config(BrokerConfig {
        sys_interval: None,
        flow_control_queued: 10,
        receive_maximum: 50,
        max_queued_messages: 100,
        ..BrokerConfig::default()
    });
    let s = h.connect("slow", V3, true);
    h.subscribe(s, vec![sub("t", QoS::AtLeastOnce)]);
    let p = h.connect("flood", V3, true);
    let mut acked = Vec::new();
    for i in 1..=500u16 {
        h.send(p, Packet::Publish(publish("t", "x", QoS::AtLeastOnce, i)));
        acked.extend(acks_of(&h.take(p)));
        // Never more than receive_maximum acknowledgements outstanding.
        assert!(
            usize::from(i) - acked.len() <= 50,
            "{} held at {i}",
            usize::from(i) - acked.len()
        );
    }
    let want: Vec<u16> = (1..=acked.len() as u16).collect();
    assert_eq!(acked, want, "acknowledgements out of order");
    let st = h.broker.stats();
    assert!(st.flow_control_overruns > 0);
    assert!(st.dropped_queue_full > 0);
}

#[test]
fn a_client_listing_examines_at_most_the_scan_budget_and_says_where_to_go_on() {
    use moat_core::{AdminReply, AdminRequest, ClientQuery, MAX_CLIENT_SCAN};
    let mut h = Harness::with_config(BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    });
    let n = MAX_CLIENT_SCAN + 5;
    for i in 0..n {
        h.connect(&format!("c{i:06}"), V5, true);
    }
    // A filter that matches nobody: the first call stops after the budget.
    let query = |after: Option<String>| ClientQuery {
        cert_identity: Some("nobody".into()),
        after,
        limit: 50,
        ..ClientQuery::default()
    };
    let AdminReply::Clients {
        clients,
        more,
        resume_after,
    } = admin(&mut h, AdminRequest::Clients(query(None)))
    else {
        panic!("not a client list");
    };
    assert!(clients.is_empty() && more);
    assert_eq!(resume_after, Some(format!("c{:06}", MAX_CLIENT_SCAN - 1)));
    let AdminReply::Clients {
        clients,
        more,
        resume_after,
    } = admin(&mut h, AdminRequest::Clients(query(resume_after)))
    else {
        panic!("not a client list");
    };
    assert!(clients.is_empty() && !more && resume_after.is_none());
    // Without a filter, a page is full long before the budget.
    let AdminReply::Clients { clients, more, .. } = admin(
        &mut h,
        AdminRequest::Clients(ClientQuery {
            limit: 3,
            ..ClientQuery::default()
        }),
    ) else {
        panic!("not a client list");
    };
    assert_eq!(clients.len(), 3);
    assert!(more);
}

/// A TLS client's facts on a listener with the given policies.
fn tls_info(
    identity: Option<&str>,
    not_after: Option<i64>,
    on_cert_expiry: moat_core::CertExpiryAction,
    client_id_from: moat_core::ClientIdSource,
) -> ClientInfo {
    ClientInfo {
        listener: "mqtts".into(),
        tls: Some(std::sync::Arc::new(moat_core::TlsInfo {
            version: "TLSv1.3".into(),
            identity: identity.map(str::to_owned),
            subject: identity.map(|i| format!("CN={i}")),
            fingerprint: None,
            serial: None,
            not_after,
            ca_subject: None,
            ca_fingerprint: None,
        })),
        on_cert_expiry,
        client_id_from,
        ..ClientInfo::default()
    }
}

impl Harness {
    /// Connects with `info`; returns (conn, CONNACK).
    fn connect_info(&mut self, c: Connect, info: ClientInfo) -> (ConnId, moat_codec::ConnAck) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let connect = Box::new(c);
        self.broker.handle(
            Input::Connect {
                conn,
                connect,
                info,
            },
            self.now,
        );
        let mut out = self.take(conn);
        let Packet::ConnAck(ack) = out.remove(0) else {
            panic!("first packet not CONNACK")
        };
        (conn, ack)
    }
}

/// Unix seconds at the harness's start, given to the core as its clock.
const T0: u64 = 1_800_000_000;

#[test]
fn a_client_certificate_that_expires_while_connected_disconnects_at_that_instant() {
    use moat_core::{CertExpiryAction, ClientIdSource};
    let mut h = Harness::new();
    h.broker.set_clock(h.now, T0 * 1000);
    let expires = i64::try_from(T0).unwrap() + 50;
    let mut c = connect_packet("dev", V5, true);
    c.keep_alive = 0;
    c.will = Some(LastWill {
        topic: "will/dev".into(),
        payload: Bytes::from_static(b"expired"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let info = tls_info(
        Some("dev"),
        Some(expires),
        CertExpiryAction::Disconnect,
        ClientIdSource::Client,
    );
    let (conn, ack) = h.connect_info(c, info);
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let watcher = h.connect("watcher", V5, true);
    h.subscribe(watcher, vec![sub("will/#", QoS::AtMostOnce)]);
    // The core wants to wake at the expiry, not before it is asked to.
    assert_eq!(
        h.broker.poll_timeout(),
        Some(h.now + Duration::from_secs(30)),
        "the sweep comes first"
    );
    h.advance(49);
    assert!(!h.closed(conn));
    assert_eq!(
        h.broker.poll_timeout(),
        Some(h.now + Duration::from_secs(1))
    );
    h.advance(1);
    let out = h.take(conn);
    assert!(
        matches!(&out[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::NOT_AUTHORIZED
            && d.properties.reason_string.as_deref() == Some("client certificate expired")),
        "{out:?}"
    );
    assert!(h.closed(conn));
    assert_eq!(publishes(&h.take(watcher))[0].payload, "expired");
    assert_eq!(h.broker.stats().disconnected_certificate_expired, 1);
    assert_eq!(h.broker.stats().clients_connected, 1);
}

#[test]
fn a_warn_listener_keeps_a_client_whose_certificate_expired_and_counts_it_once() {
    use moat_core::{CertExpiryAction, ClientIdSource};
    let mut h = Harness::new();
    h.broker.set_clock(h.now, T0 * 1000);
    let expires = i64::try_from(T0).unwrap() + 10;
    let mut c = connect_packet("dev", V3, true);
    c.keep_alive = 0;
    let info = tls_info(
        Some("dev"),
        Some(expires),
        CertExpiryAction::Warn,
        ClientIdSource::Client,
    );
    let (conn, _) = h.connect_info(c, info);
    h.advance(10);
    h.advance(100);
    assert!(!h.closed(conn));
    assert!(h.take(conn).is_empty());
    assert_eq!(h.broker.stats().certificate_expired_warned, 1);
    assert_eq!(h.broker.stats().disconnected_certificate_expired, 0);
    h.send(conn, Packet::PingReq);
    assert_eq!(h.take(conn), vec![Packet::PingResp]);
}

#[test]
fn a_connection_closed_before_its_certificate_expires_leaves_no_timer() {
    use moat_core::{CertExpiryAction, ClientIdSource};
    let mut h = Harness::new();
    h.broker.set_clock(h.now, T0 * 1000);
    let expires = i64::try_from(T0).unwrap() + 5;
    let mut c = connect_packet("dev", V5, true);
    c.keep_alive = 0;
    let info = tls_info(
        Some("dev"),
        Some(expires),
        CertExpiryAction::Disconnect,
        ClientIdSource::Client,
    );
    let (conn, _) = h.connect_info(c, info);
    h.broker.handle(Input::Lost { conn }, h.now);
    assert_eq!(
        h.broker.poll_timeout(),
        Some(h.now + Duration::from_secs(30)),
        "only the sweep is left"
    );
    h.advance(10);
    assert_eq!(h.broker.stats().disconnected_certificate_expired, 0);
}

#[test]
fn the_certificate_identity_is_the_client_id_and_another_id_is_refused() {
    use moat_core::{CertExpiryAction, ClientIdSource};
    let cert = |id: Option<&str>| {
        tls_info(
            id,
            None,
            CertExpiryAction::Disconnect,
            ClientIdSource::Certificate,
        )
    };
    let mut h = Harness::new();
    // dev-a with an empty client id gets its identity, told in v5.
    let (a, ack) = h.connect_info(connect_packet("", V5, false), cert(Some("dev-a")));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        ack.properties.assigned_client_identifier.as_deref(),
        Some("dev-a")
    );
    assert_eq!(h.broker.client_id(a), Some("dev-a"));
    h.subscribe(a, vec![sub("a/#", QoS::AtLeastOnce)]);

    // dev-b asking for dev-a's id is refused; dev-a's connection and session are untouched.
    let (b, ack) = h.connect_info(connect_packet("dev-a", V5, true), cert(Some("dev-b")));
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert!(h.closed(b));
    assert!(!h.closed(a));
    assert!(h.take(a).is_empty(), "no DISCONNECT for dev-a");
    let (_, ack) = h.connect_info(connect_packet("dev-a", V3, true), cert(Some("dev-b")));
    assert_eq!(ack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    let p = h.connect("pub", V5, true);
    h.send(
        p,
        Packet::Publish(publish("a/x", "still here", QoS::AtMostOnce, 0)),
    );
    assert_eq!(publishes(&h.take(a))[0].payload, "still here");

    // The same id is accepted without Assigned Client Identifier; v3 may send it empty even
    // without clean session (the id is known).
    let (b, ack) = h.connect_info(connect_packet("dev-b", V5, true), cert(Some("dev-b")));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.assigned_client_identifier, None);
    assert_eq!(h.broker.client_id(b), Some("dev-b"));
    let (c, ack) = h.connect_info(connect_packet("", V3, false), cert(Some("dev-c")));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(h.broker.client_id(c), Some("dev-c"));

    // No certificate identity: refused.
    let (_, ack) = h.connect_info(connect_packet("dev-a", V5, true), cert(None));
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let mut no_tls = ClientInfo {
        client_id_from: ClientIdSource::Certificate,
        ..ClientInfo::default()
    };
    no_tls.listener = "tcp".into();
    let (_, ack) = h.connect_info(connect_packet("x", V5, true), no_tls);
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);

    let st = h.broker.stats();
    assert_eq!(st.refused_client_id_not_certificate, 2);
    assert_eq!(st.refused_no_certificate_identity, 2);
}
