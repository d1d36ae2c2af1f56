//! Restarts with a durable store: the broker's store ops go to an in-memory store, and a new
//! broker loads its snapshot, as the server does at start-up.

#[path = "support/mem_store.rs"]
mod mem_store;

use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_codec::{
    Connect, Packet, PacketId, Properties, ProtocolVersion, PubAck, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use moat_core::{Broker, BrokerConfig, ClientInfo, ConnId, ConnectOutcome, Input, Output};

use mem_store::MemStore;

const UNIX_MS_AT_START: u64 = 1_700_000_000_000;

/// A broker with persistence on, its store, and a virtual clock.
struct Node {
    broker: Broker,
    store: MemStore,
    started: Instant,
    now: Instant,
    next_conn: u64,
    /// Outputs not taken yet (store ops excepted: they go to the store).
    pending: Vec<Output>,
}

impl Node {
    fn new() -> Self {
        let now = Instant::now();
        let mut broker = Broker::new(Self::config(), now);
        broker.enable_persistence(now, UNIX_MS_AT_START);
        Self {
            broker,
            store: MemStore::default(),
            started: now,
            now,
            next_conn: 1,
            pending: Vec::new(),
        }
    }

    fn config() -> BrokerConfig {
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        }
    }

    /// Moves the broker's output to `pending`, and its store ops to the store. A server whose
    /// outboxes always have room: `WantRoom` is answered at once.
    fn collect(&mut self) {
        let mut out = Vec::new();
        loop {
            self.broker.drain_outputs_into(&mut out);
            if out.is_empty() {
                return;
            }
            for o in out.drain(..) {
                match o {
                    Output::Persist(op) => self.store.apply(op),
                    Output::WantRoom(conn) => {
                        self.broker.handle(Input::Writable { conn }, self.now);
                    }
                    other => self.pending.push(other),
                }
            }
        }
    }

    /// The broker's answer to the CONNECT on `conn`, taken from the output.
    fn outcome(&mut self, conn: ConnId) -> ConnectOutcome {
        self.collect();
        let i = self
            .pending
            .iter()
            .position(|o| matches!(o, Output::Connected { conn: c, .. } if *c == conn))
            .expect("an Output::Connected");
        match self.pending.remove(i) {
            Output::Connected { outcome, .. } => outcome,
            _ => unreachable!(),
        }
    }

    /// The server reports the connection gone.
    fn lose(&mut self, conn: ConnId) {
        self.broker.handle(Input::Lost { conn }, self.now);
    }

    /// Connects; returns the connection, Session Present and the packets after CONNACK.
    fn connect(
        &mut self,
        id: &str,
        v5: bool,
        clean: bool,
        expiry: u32,
    ) -> (ConnId, bool, Vec<Packet>) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let mut properties = Properties::default();
        if v5 {
            properties.session_expiry_interval = Some(expiry);
        }
        let connect = Connect {
            protocol: if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            },
            clean_start: clean,
            keep_alive: 0,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties,
        };
        let input = Input::Connect {
            conn,
            connect: Box::new(connect),
            info: ClientInfo::default(),
        };
        self.broker.handle(input, self.now);
        assert!(self.outcome(conn).accepted);
        let mut packets = self.packets_for(conn);
        let Some(Packet::ConnAck(ack)) = packets.first().cloned() else {
            panic!("no CONNACK: {packets:?}");
        };
        packets.remove(0);
        (conn, ack.session_present, packets)
    }

    /// The packets sent to `conn` so far; the other actions stay pending.
    fn packets_for(&mut self, conn: ConnId) -> Vec<Packet> {
        self.collect();
        let mut mine = Vec::new();
        for action in std::mem::take(&mut self.pending) {
            match action {
                Output::Send(c, p) if c == conn => mine.push(p),
                other => self.pending.push(other),
            }
        }
        mine
    }

    fn send(&mut self, conn: ConnId, packet: Packet) -> Vec<Packet> {
        self.broker.handle(Input::Packet { conn, packet }, self.now);
        self.packets_for(conn)
    }

    /// The server stops and starts again: connections vanish, the store is loaded.
    fn restart(&mut self) {
        self.collect();
        self.pending.clear();
        self.now += Duration::from_secs(1);
        let elapsed = u64::try_from((self.now - self.started).as_millis()).expect("ms");
        let mut broker = Broker::new(Self::config(), self.now);
        broker.enable_persistence(self.now, UNIX_MS_AT_START + elapsed);
        broker.restore(self.store.snapshot(), self.now);
        self.broker = broker;
    }
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: PacketId::MIN,
        properties: Properties::default(),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
    })
}

fn publish(topic: &str, payload: &'static str, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: PacketId::new(id),
        properties: Properties::default(),
        payload: Bytes::from_static(payload.as_bytes()),
    })
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn persistent_session_and_its_messages_survive_a_restart() {
    let mut node = Node::new();
    let (s, _, _) = node.connect("s", false, false, 0);
    node.send(s, subscribe("t"));
    node.lose(s);
    let (p, _, _) = node.connect("p", true, true, 0);
    let acks = node.send(p, publish("t", "queued", 1));
    assert!(matches!(acks.as_slice(), [Packet::PubAck(_)]), "{acks:?}");
    node.restart();
    let (s, present, queued) = node.connect("s", false, false, 0);
    assert!(present);
    assert_eq!(publishes(&queued)[0].payload, "queued");
    // The subscription came back too.
    let (p, _, _) = node.connect("p", true, true, 0);
    node.send(p, publish("t", "live", 2));
    assert_eq!(publishes(&node.packets_for(s))[0].payload, "live");
}

/// A persistent session resumed with session expiry 0 leaves the store (`SessionRemove`);
/// resumed again with an expiry it is stored again, and so must be what it holds. Before the
/// fix only the session row was written: after a restart the message in flight to it was gone
/// (acknowledged to its publisher, never delivered) and so was its subscription.
#[test]
fn session_stored_again_after_expiry_zero_keeps_its_state_across_a_restart() {
    let mut node = Node::new();
    let (s, _, _) = node.connect("s", false, false, 0);
    node.send(s, subscribe("t"));
    let (p, _, _) = node.connect("p", true, true, 0);
    node.send(p, publish("t", "in flight", 1));
    let sent = publishes(&node.packets_for(s))
        .first()
        .and_then(|m| m.packet_id)
        .expect("delivered");
    // Resumed without expiry (out of the store), then with one (back in it).
    let (_, present, _) = node.connect("s", true, false, 0);
    assert!(present);
    let (_, present, resent) = node.connect("s", false, false, 0);
    assert!(present);
    assert_eq!(publishes(&resent).len(), 1);
    node.restart();
    let (s, present, resent) = node.connect("s", false, false, 0);
    assert!(present);
    let resent = publishes(&resent);
    assert_eq!(resent.len(), 1, "the message in flight is resent");
    assert!(resent[0].dup);
    assert_eq!(resent[0].packet_id, Some(sent));
    assert_eq!(resent[0].payload, "in flight");
    assert!(node.send(s, Packet::PubAck(PubAck::new(sent))).is_empty());
    let (p, _, _) = node.connect("p", true, true, 0);
    node.send(p, publish("t", "after", 2));
    assert_eq!(publishes(&node.packets_for(s))[0].payload, "after");
}

/// A session made with expiry 0 (never stored), then resumed by a CONNECT with an expiry, is
/// stored with its subscription; before the fix the subscription was lost at a restart.
#[test]
fn session_stored_on_resume_keeps_its_subscription_across_a_restart() {
    let mut node = Node::new();
    let (s, _, _) = node.connect("s", true, true, 0);
    node.send(s, subscribe("t"));
    let (_, present, _) = node.connect("s", true, false, 60);
    assert!(present);
    node.restart();
    let (p, _, _) = node.connect("p", true, true, 0);
    node.send(p, publish("t", "kept", 1));
    let (_, present, queued) = node.connect("s", true, false, 60);
    assert!(present);
    assert_eq!(publishes(&queued)[0].payload, "kept");
}
