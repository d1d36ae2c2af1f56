//! Bytes -> operations on a [`moat_core::Broker`] from several clients with a virtual clock,
//! with cheap invariants checked after every step (a violation panics).
//!
//! One interpreter serves the libFuzzer target (`fuzz/fuzz_targets/core.rs` includes this file
//! with `#[path]`) and the stable tests in `crates/moat-core/tests/fuzz_core.rs` (replay of
//! `fuzz/corpus/core/`, seeded pseudo-random inputs). It uses only moat-core, moat-codec and
//! bytes, so that both can compile it.
//!
//! # Input format
//! Byte 0 picks the broker configuration ([`config`]). Then operations follow until the input
//! ends; each starts with a byte whose value modulo [`op::COUNT`] names it, and reads its
//! arguments from the bytes after it (missing bytes read as 0). `slot` arguments name one of
//! [`SLOTS`] clients: the first four have fixed client ids, the last sends an empty one. Topics
//! and filters are read by [`Input::topic`]: a table entry, a few levels from a table, a deep
//! chain of up to 65,535 levels, or raw bytes. [`Script`] writes inputs in this format (the
//! seed corpus is made with it).
//!
//! # What is checked
//! - no `Send` to a connection after its `Close`, after the server reported it lost, or to a
//!   connection the broker never saw; CONNACK is the first packet of every connection, and a
//!   refused CONNECT is followed by `Close`; no connection is closed twice;
//! - every packet sent encodes for the connection's protocol version and fits the client's
//!   Maximum Packet Size (but a successful CONNACK), and a PUBLISH carries a packet id exactly
//!   when its QoS is above 0 and no QoS above the broker's maximum;
//! - the answer to `Input::Connect` is one `Output::Connected`, after the CONNACK; store ops
//!   (`Output::Persist`) only with persistence on; `WantRoom` only for an open connection;
//! - after `handle_timeout(now)`, `poll_timeout()` is later than `now`;
//! - keep-alive is the broker's: `handle_timeout` runs at every keep-alive deadline (1.5 times
//!   the keep-alive the broker returned after the client's last packet), and at each it closes
//!   exactly the connections whose deadline it is, v5 ones after DISCONNECT 0x8D, v3 ones
//!   without DISCONNECT; it closes nothing else (no connection is closed early or late);
//! - the topic limits (`max_topic_levels`, `max_topic_length`): a SUBSCRIBE filter beyond them
//!   is refused (0x8F, or 0x97 when the session is full; v3 0x80), an UNSUBSCRIBE one gets 0x8F
//!   (v5); a PUBLISH beyond them is refused (v5 PUBACK/PUBREC 0x90, unless a QoS 2 resend)
//!   and, at QoS 0 or 1, the connection stays; a will beyond them refuses the CONNECT (v5
//!   0x90); no PUBLISH the broker sends has a topic beyond them;
//! - once every connection is gone, no client is counted as connected; `shutdown` closes every
//!   open connection.
//!
//! After `shutdown` the server stops, as the router does: `Input::Lost` is not given for the
//! connections it closed. (If it were, their wills would be published and delivered to
//! connections already closed: `shutdown` closes connections without forgetting them.)
//!
//! The server's part is played here: it gives `Input::Lost` for every `Close` (as the
//! connection task does when it ends) and for decode errors, and answers `WantRoom` with
//! `Input::Writable` at once (an outbox that always has room).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use moat_codec::{
    encode, encoded_len, Codec, Connect, Disconnect, LastWill, Packet, PacketId, Properties,
    ProtocolVersion, PubAck, Publish, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscriptionOptions, Unsubscribe,
};
use moat_core::{
    Broker, BrokerConfig, ClientInfo, ConnId, ConnectOutcome, Input as CoreInput, Output,
};

/// Clients an input can drive.
pub(crate) const SLOTS: usize = 5;

/// The client id of each slot (the last one asks the broker to assign one).
const CLIENT_IDS: [&str; SLOTS] = ["c0", "c1", "c2", "c3", ""];

/// Operation codes: the first byte of an operation, modulo [`op::COUNT`].
pub(crate) mod op {
    /// slot, version, flags, expiry, keep-alive, properties, [will topic, will payload length].
    pub(crate) const CONNECT: u8 = 0;
    /// slot, flags, [alias], [expiry], topic, payload length.
    pub(crate) const PUBLISH: u8 = 1;
    /// slot, count, count x (filter, options), subscription id.
    pub(crate) const SUBSCRIBE: u8 = 2;
    /// slot, count, count x filter.
    pub(crate) const UNSUBSCRIBE: u8 = 3;
    /// slot, kind (PUBACK, PUBREC, PUBREL, PUBCOMP), packet id, reason.
    pub(crate) const ACK: u8 = 4;
    /// slot: the client answers everything it was sent (a few rounds).
    pub(crate) const ANSWER: u8 = 5;
    /// slot, reason, session expiry.
    pub(crate) const DISCONNECT: u8 = 6;
    /// slot: the connection drops.
    pub(crate) const LOSE: u8 = 7;
    /// how long (an index into a table of durations).
    pub(crate) const ADVANCE: u8 = 8;
    /// slot, length (modulo 64; 0: a two-byte length follows), bytes decoded by the slot's
    /// codec.
    pub(crate) const RAW: u8 = 9;
    /// slot: PINGREQ.
    pub(crate) const PING: u8 = 10;
    /// The broker shuts down; the rest of the input is not read.
    pub(crate) const SHUTDOWN: u8 = 11;
    /// slot: PINGREQ and a PUBLISH on the slot's last connection, even if it is gone.
    pub(crate) const STALE: u8 = 12;
    /// The number of operations.
    pub(crate) const COUNT: u8 = 13;
}

/// Topics and filters, valid and not, picked by [`Input::topic`].
pub(crate) const TOPICS: [&str; 24] = [
    "a",
    "a/b",
    "a/c",
    "b",
    "a/b/c",
    "b/x",
    "/",
    "a//b",
    "$SYS/x",
    "$share/g/a/+",
    "$share/g/#",
    "+",
    "#",
    "a/+",
    "a/#",
    "+/b",
    "+/+",
    "",
    "$x/y",
    "sport/tennis/player1",
    "é/ü",
    "$share/g",
    "a/#/b",
    "a+",
];

/// Levels that [`Input::topic`] joins with '/'.
pub(crate) const LEVELS: [&str; 8] = ["a", "b", "", "+", "#", "x y", "$share", "\u{0}"];

/// Topic kinds: the first byte of a topic.
pub(crate) mod topic {
    /// Below this: `TOPICS[byte % TOPICS.len()]`.
    pub(crate) const BUILT: u8 = 0xC0;
    /// `BUILT..DEEP`: 1 + (byte & 7) levels follow, each a byte indexing `LEVELS`.
    pub(crate) const DEEP: u8 = 0xE0;
    /// `DEEP..RAW`: a depth (two bytes, big-endian) and a pattern byte: 0 "a/a/..", 1
    /// "+/+/..", 2 "a/../a/#", 3 "a/b/a/b/..".
    pub(crate) const RAW: u8 = 0xF0;
    // RAW..: a length byte (modulo 32) and that many bytes, read as lossy UTF-8.
}

pub(crate) const EXPIRIES: [u32; 6] = [0, 1, 5, 60, 3600, u32::MAX];
pub(crate) const KEEP_ALIVES: [u16; 6] = [0, 1, 10, 60, 120, u16::MAX];
pub(crate) const ADVANCES_MS: [u64; 12] = [
    0,
    1,
    500,
    1_000,
    1_500,
    5_000,
    10_000,
    30_000,
    61_000,
    100_000,
    3_600_000,
    400_000_000,
];

/// The broker configuration chosen by the first input byte:
/// bit 0 small queues and windows and small limits (4 topic levels, 16 bytes, 4 subscriptions
/// per session), bit 1 persistence, bit 2 `$SYS` every 10 s, bit 3 QoS 1 at most, bits 4-5 the
/// maximum keep-alive, bit 6 sessions expire after 100 s at most, bit 7 a Receive Maximum of
/// 2, at most 2 retained messages, sent to a new subscription one at a time.
pub(crate) fn config(byte: u8) -> BrokerConfig {
    let mut c = BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    };
    if byte & 1 != 0 {
        c.max_inflight = 2;
        c.max_queued_messages = 4;
        c.max_queued_bytes = 64;
        c.flow_control_queued = 3;
        c.topic_alias_maximum = 2;
        c.max_topic_levels = 4;
        c.max_topic_length = 16;
        c.max_subscriptions_per_client = 4;
    }
    if byte & 4 != 0 {
        c.sys_interval = Some(Duration::from_secs(10));
    }
    if byte & 8 != 0 {
        c.max_qos = 1;
    }
    c.max_keep_alive = [60, 1, 30, u16::MAX][usize::from(byte >> 4) & 3];
    if byte & 0x40 != 0 {
        c.max_session_expiry = 100;
    }
    if byte & 0x80 != 0 {
        c.receive_maximum = 2;
        c.max_retained_messages = 2;
        c.retained_batch = 1;
    }
    c
}

/// Reads arguments; past the end every byte is 0.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[usize::from(self.byte()) % table.len()]
    }

    fn slot(&mut self) -> usize {
        usize::from(self.byte()) % SLOTS
    }

    /// A topic name or filter (see [`topic`]).
    fn topic(&mut self) -> String {
        let kind = self.byte();
        if kind < topic::BUILT {
            return TOPICS[usize::from(kind) % TOPICS.len()].to_owned();
        }
        if kind < topic::DEEP {
            let n = 1 + usize::from(kind & 7);
            let levels: Vec<&str> = (0..n).map(|_| self.pick(&LEVELS)).collect();
            return levels.join("/");
        }
        if kind < topic::RAW {
            let depth = usize::from(u16::from_be_bytes([self.byte(), self.byte()])).max(1);
            return deep_topic(depth, self.byte());
        }
        let n = usize::from(self.byte() % 32);
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
}

/// A chain of `depth` levels in one of four patterns (see [`topic::DEEP`]).
pub(crate) fn deep_topic(depth: usize, pattern: u8) -> String {
    let level = |i: usize| match pattern % 4 {
        0 | 2 => "a",
        1 => "+",
        _ => ["a", "b"][i % 2],
    };
    let mut s = String::with_capacity(depth * 2);
    for i in 0..depth {
        if i > 0 {
            s.push('/');
        }
        if pattern % 4 == 2 && i + 1 == depth {
            s.push('#');
        } else {
            s.push_str(level(i));
        }
    }
    s
}

/// One client as the server and the client see it.
struct Slot {
    /// The slot's latest connection (it may be gone).
    conn: Option<ConnId>,
    version: ProtocolVersion,
    /// Decodes the raw bytes this client sends.
    codec: Codec,
    /// Answers the client owes the broker: PUBACK/PUBREC for QoS 1/2 deliveries, PUBCOMP for
    /// PUBREL, PUBREL for PUBREC.
    owed: Vec<Packet>,
    next_packet_id: u16,
}

/// What the server knows about a connection.
struct ConnState {
    version: ProtocolVersion,
    max_packet_size: u32,
    connacked: bool,
    /// The keep-alive the broker returned (0: none).
    keep_alive: u16,
    /// When the client last sent a packet on it (or CONNECT).
    last_seen: Instant,
    /// The reason code of the DISCONNECT the broker sent on it, if any.
    disconnect: Option<ReasonCode>,
}

impl ConnState {
    /// When the broker must close the connection if nothing comes: 1.5 times the keep-alive
    /// after the last packet [MQTT-3.1.2-22].
    fn keep_alive_deadline(&self) -> Option<Instant> {
        (self.keep_alive > 0)
            .then(|| self.last_seen + Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }
}

/// What the broker must answer to the input being handled, for the topic limits.
#[derive(Debug, Clone)]
enum Expect {
    /// SUBSCRIBE: for each filter, whether it is beyond the limits (then refused).
    Suback(ConnId, Vec<bool>),
    /// UNSUBSCRIBE: the same (v5: 0x8F).
    Unsuback(ConnId, Vec<bool>),
    /// A PUBLISH whose topic is beyond the limits (a valid name, no alias, a QoS the broker
    /// grants): a v5 PUBACK for it says 0x90, and at QoS 0 or 1 the connection stays.
    Refused {
        conn: ConnId,
        qos: QoS,
        packet_id: Option<PacketId>,
    },
}

/// What a run did, so that tests can tell that their inputs reach the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(dead_code)] // read by the stable tests, not by the fuzz target
pub(crate) struct Report {
    /// Operations run.
    pub(crate) steps: usize,
    /// Connections accepted.
    pub(crate) accepted: usize,
    /// Packets sent by the broker.
    pub(crate) sent: usize,
    /// PUBLISH packets among them.
    pub(crate) delivered: usize,
    /// Topics and filters beyond the broker's limits that reached it (SUBSCRIBE, UNSUBSCRIBE,
    /// PUBLISH, will).
    pub(crate) over_limits: usize,
    /// Connections the broker closed for their keep-alive.
    pub(crate) keep_alive_closes: usize,
}

/// Runs `data` against a fresh broker; panics on a broken invariant.
pub(crate) fn run(data: &[u8]) -> Report {
    let Some((&config_byte, ops)) = data.split_first() else {
        return Report::default();
    };
    let config = config(config_byte);
    let persist = config_byte & 2 != 0;
    let now = Instant::now();
    let mut broker = Broker::new(config.clone(), now);
    if persist {
        broker.enable_persistence(now, 1_700_000_000_000);
    }
    let mut run = Run {
        broker,
        config,
        now,
        next_conn: 1,
        slots: std::array::from_fn(|_| Slot {
            conn: None,
            version: ProtocolVersion::V3_1_1,
            codec: Codec::new(0),
            owed: Vec::new(),
            next_packet_id: 1,
        }),
        conns: BTreeMap::new(),
        closed: BTreeSet::new(),
        last_connack: None,
        outcome: None,
        expect: None,
        last_ack: None,
        persist,
        stopped: false,
        report: Report::default(),
    };
    let mut input = Input { data: ops };
    while !input.data.is_empty() {
        run.report.steps += 1;
        if !run.op(&mut input) {
            return run.report;
        }
    }
    run.finish();
    run.report
}

struct Run {
    broker: Broker,
    config: BrokerConfig,
    now: Instant,
    next_conn: u64,
    slots: [Slot; SLOTS],
    /// Connections the broker was given and that are not closed or lost.
    conns: BTreeMap<ConnId, ConnState>,
    /// Connections closed by the broker or lost.
    closed: BTreeSet<ConnId>,
    /// The connection that got the latest CONNACK, and its reason code.
    last_connack: Option<(ConnId, ReasonCode)>,
    /// The latest `Output::Connected`, not taken yet.
    outcome: Option<(ConnId, ConnectOutcome)>,
    /// What the input being handled must be answered with.
    expect: Option<Expect>,
    /// The last PUBACK (false) or PUBREC (true) sent for the PUBLISH being handled, when it is
    /// `Expect::Refused`.
    last_ack: Option<(PacketId, bool, ReasonCode)>,
    /// Persistence is on (store ops are expected).
    persist: bool,
    /// Set by `shutdown`: the server no longer calls the broker.
    stopped: bool,
    report: Report,
}

impl Run {
    /// Runs one operation; false once the broker has shut down.
    fn op(&mut self, input: &mut Input<'_>) -> bool {
        let code = input.byte() % op::COUNT;
        match code {
            op::CONNECT => {
                let slot = input.slot();
                let connect = self.read_connect(slot, input);
                self.connect(slot, connect);
            }
            op::PUBLISH => {
                let slot = input.slot();
                let publish = self.read_publish(slot, input);
                self.send(slot, Packet::Publish(publish));
            }
            op::SUBSCRIBE => {
                let slot = input.slot();
                let v5 = self.slots[slot].version.is_v5();
                let n = 1 + usize::from(input.byte() % 3);
                let filters = (0..n)
                    .map(|_| {
                        let filter = input.topic();
                        let o = input.byte();
                        let mut options = SubscriptionOptions {
                            qos: qos(o),
                            ..Default::default()
                        };
                        if v5 {
                            options.no_local = o & 4 != 0;
                            options.retain_as_published = o & 8 != 0;
                            options.retain_handling = match (o >> 4) % 3 {
                                0 => RetainHandling::SendAtSubscribe,
                                1 => RetainHandling::SendAtSubscribeIfNew,
                                _ => RetainHandling::DoNotSend,
                            };
                        }
                        (filter, options)
                    })
                    .collect();
                let mut properties = Properties::default();
                let id = input.byte();
                if v5 && id != 0 {
                    properties.subscription_identifiers.push(u32::from(id));
                }
                let packet_id = self.packet_id(slot);
                let subscribe = Subscribe {
                    packet_id,
                    properties,
                    filters,
                };
                self.send(slot, Packet::Subscribe(subscribe));
            }
            op::UNSUBSCRIBE => {
                let slot = input.slot();
                let n = 1 + usize::from(input.byte() % 3);
                let filters = (0..n).map(|_| input.topic()).collect();
                let packet_id = self.packet_id(slot);
                let unsubscribe = Unsubscribe {
                    packet_id,
                    properties: Properties::default(),
                    filters,
                };
                self.send(slot, Packet::Unsubscribe(unsubscribe));
            }
            op::ACK => {
                let slot = input.slot();
                let kind = input.byte();
                let id = PacketId::new(u16::from(input.byte())).unwrap_or(PacketId::MIN);
                let reason = input.byte();
                let mut ack = PubAck::new(id);
                if reason >= 0x80 && self.slots[slot].version.is_v5() {
                    ack.reason_code = ReasonCode(reason);
                }
                let packet = match kind % 4 {
                    0 => Packet::PubAck(ack),
                    1 => Packet::PubRec(ack),
                    2 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                };
                self.send(slot, packet);
            }
            op::ANSWER => {
                let slot = input.slot();
                // Each answer may earn another (PUBREC -> PUBREL -> PUBCOMP): a few rounds.
                for _ in 0..4 {
                    let owed = std::mem::take(&mut self.slots[slot].owed);
                    if owed.is_empty() {
                        break;
                    }
                    for packet in owed {
                        self.send(slot, packet);
                    }
                }
            }
            op::DISCONNECT => {
                let slot = input.slot();
                let reason = input.pick(&[0x00, 0x04, 0x80, 0x8E]);
                let expiry = input.byte();
                let mut disconnect = Disconnect::default();
                if self.slots[slot].version.is_v5() {
                    disconnect.reason_code = ReasonCode(reason);
                    if expiry != 0 {
                        let e = EXPIRIES[usize::from(expiry) % EXPIRIES.len()];
                        disconnect.properties.session_expiry_interval = Some(e);
                    }
                }
                self.send(slot, Packet::Disconnect(disconnect));
            }
            op::LOSE => {
                let slot = input.slot();
                if let Some(conn) = self.slots[slot].conn {
                    self.lose(conn);
                }
            }
            op::ADVANCE => {
                let ms = input.pick(&ADVANCES_MS);
                self.advance(Duration::from_millis(ms));
            }
            op::RAW => {
                let slot = input.slot();
                let mut len = usize::from(input.byte() % 64);
                if len == 0 {
                    len = usize::from(u16::from_be_bytes([input.byte(), input.byte()]));
                }
                let raw = input.bytes(len);
                self.raw(slot, raw);
            }
            op::PING => {
                let slot = input.slot();
                self.send(slot, Packet::PingReq);
            }
            op::SHUTDOWN => {
                self.shutdown();
                return false;
            }
            op::STALE => {
                // The broker must ignore packets for connections it no longer has.
                let slot = input.slot();
                let conn = self.slots[slot].conn.unwrap_or(ConnId(u64::MAX));
                if !self.conns.contains_key(&conn) {
                    let p = Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        topic: "stale".into(),
                        packet_id: PacketId::new(1),
                        properties: Properties::default(),
                        payload: Bytes::from_static(b"stale"),
                    };
                    for packet in [Packet::PingReq, Packet::Publish(p)] {
                        self.broker
                            .handle(CoreInput::Packet { conn, packet }, self.now);
                    }
                    self.drain();
                }
            }
            _ => unreachable!("operation codes are below op::COUNT"),
        }
        true
    }

    fn read_connect(&self, slot: usize, input: &mut Input<'_>) -> Connect {
        let protocol = input.pick(&[
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ]);
        let v5 = protocol.is_v5();
        let flags = input.byte();
        let expiry = input.pick(&EXPIRIES);
        let keep_alive = input.pick(&KEEP_ALIVES);
        let props = input.byte();
        let mut properties = Properties::default();
        if v5 {
            if flags & 0x40 != 0 {
                properties.session_expiry_interval = Some(expiry);
            }
            properties.receive_maximum =
                [None, Some(1), Some(2), Some(u16::MAX)][usize::from(props & 3)];
            properties.maximum_packet_size =
                [None, Some(16), Some(64), Some(1000)][usize::from((props >> 2) & 3)];
            properties.topic_alias_maximum =
                [None, Some(0), Some(1), Some(4)][usize::from((props >> 4) & 3)];
            if props & 0x40 != 0 {
                properties.request_problem_information = Some(0);
            }
            if props & 0x80 != 0 {
                properties.authentication_method = Some("SCRAM-SHA-1".into());
            }
        }
        let will = (flags & 2 != 0).then(|| {
            let topic = input.topic();
            let payload = Bytes::from(vec![b'w'; usize::from(input.byte() % 8)]);
            let mut properties = Properties::default();
            if v5 && flags & 0x80 != 0 {
                properties.will_delay_interval = Some(expiry.min(100));
            }
            LastWill {
                topic,
                payload,
                qos: qos(flags >> 3),
                retain: flags & 4 != 0,
                properties,
            }
        });
        Connect {
            protocol,
            clean_start: flags & 1 != 0,
            keep_alive,
            client_id: CLIENT_IDS[slot].into(),
            will,
            username: None,
            password: None,
            properties,
        }
    }

    fn read_publish(&mut self, slot: usize, input: &mut Input<'_>) -> Publish {
        let v5 = self.slots[slot].version.is_v5();
        let flags = input.byte();
        let qos = qos(flags);
        let mut properties = Properties::default();
        let mut empty_topic = false;
        if flags & 0x10 != 0 {
            let alias = input.byte();
            if v5 {
                properties.topic_alias = Some([1, 2, 0, 65][usize::from(alias % 4)]);
                empty_topic = alias & 0x80 != 0;
            }
        }
        if flags & 0x20 != 0 {
            let expiry = input.pick(&[0, 1, 5, u32::MAX]);
            if v5 {
                properties.message_expiry_interval = Some(expiry);
            }
        }
        let mut topic = input.topic();
        if empty_topic {
            topic.clear();
        }
        let len = usize::from(input.byte() % 16);
        let payload = if v5 && flags & 0x40 != 0 {
            // Payload Format Indicator "UTF-8" on bytes that are not.
            properties.payload_format_indicator = Some(1);
            vec![0xFF; len]
        } else {
            vec![b'p'; len]
        };
        let packet_id = match qos {
            QoS::AtMostOnce => None,
            _ if flags & 0x80 != 0 => PacketId::new(1),
            _ => Some(self.packet_id(slot)),
        };
        Publish {
            dup: flags & 8 != 0 && qos != QoS::AtMostOnce,
            qos,
            retain: flags & 4 != 0,
            topic,
            packet_id,
            properties,
            payload: Bytes::from(payload),
        }
    }

    fn packet_id(&mut self, slot: usize) -> PacketId {
        let s = &mut self.slots[slot];
        let id = PacketId::new(s.next_packet_id).unwrap_or(PacketId::MIN);
        s.next_packet_id = id.next().get();
        id
    }

    /// Whether a topic name or filter is beyond the broker's limits (more levels or bytes than
    /// `max_topic_levels` / `max_topic_length`): the broker must refuse it.
    fn over_limits(&self, topic: &str) -> bool {
        topic.len() > self.config.max_topic_length
            || topic.split('/').count() > self.config.max_topic_levels
    }

    /// Hands CONNECT to the broker on a new connection, as the server does; the answer comes in
    /// the output (`Output::Connected`, after the CONNACK).
    fn connect(&mut self, slot: usize, connect: Connect) {
        let step = self.report.steps;
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let version = connect.protocol;
        // A will topic beyond the limits is refused with 0x90, unless an earlier check refuses
        // the CONNECT (authentication method, empty client id).
        let will_over = connect
            .will
            .as_ref()
            .is_some_and(|w| valid_topic_name(&w.topic) && self.over_limits(&w.topic));
        let empty_id_refused = connect.client_id.is_empty()
            && match version {
                ProtocolVersion::V3_1 => true,
                ProtocolVersion::V3_1_1 => !connect.clean_start,
                ProtocolVersion::V5 => false,
            };
        let refused_earlier =
            connect.properties.authentication_method.is_some() || empty_id_refused;
        let will_refused = will_over && !refused_earlier;
        self.report.over_limits += usize::from(will_over);
        let state = ConnState {
            version,
            max_packet_size: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            connacked: false,
            keep_alive: 0,
            last_seen: self.now,
            disconnect: None,
        };
        self.conns.insert(conn, state);
        // The slot's client speaks on the new connection from now on (resent messages that
        // follow CONNACK are owed answers there).
        let previous = self.slots[slot].conn.replace(conn);
        self.slots[slot].owed.clear();
        let input = CoreInput::Connect {
            conn,
            connect: Box::new(connect),
            info: ClientInfo::default(),
        };
        self.broker.handle(input, self.now);
        self.drain();
        let connack = self.last_connack.filter(|(c, _)| *c == conn);
        assert!(connack.is_some(), "step {step}: no CONNACK on {conn:?}");
        let Some((c, outcome)) = self.outcome.take() else {
            panic!("step {step}: no Output::Connected for {conn:?}");
        };
        assert_eq!(
            c, conn,
            "step {step}: Output::Connected for another connection"
        );
        if will_refused {
            assert!(
                !outcome.accepted,
                "step {step}: a will topic beyond the limits was accepted"
            );
            if version.is_v5() {
                assert_eq!(
                    connack.map(|(_, code)| code),
                    Some(ReasonCode::TOPIC_NAME_INVALID),
                    "step {step}: CONNACK for a will topic beyond the limits"
                );
            }
        }
        if outcome.accepted {
            self.report.accepted += 1;
            let s = &mut self.slots[slot];
            s.version = version;
            s.codec = Codec::new(self.config.max_packet_size);
            s.codec.set_version(version);
            if let Some(state) = self.conns.get_mut(&conn) {
                state.keep_alive = outcome.keep_alive;
            }
        } else {
            assert!(
                self.closed.contains(&conn),
                "step {step}: refused {conn:?} not closed"
            );
            self.slots[slot].conn = previous;
        }
    }

    /// What the broker must answer to `packet` on `conn`, for the topic limits.
    fn expectation(&mut self, conn: ConnId, packet: &Packet) -> Option<Expect> {
        let expect = match packet {
            Packet::Subscribe(s) => {
                let over: Vec<bool> = s.filters.iter().map(|(f, _)| self.over_limits(f)).collect();
                self.report.over_limits += over.iter().filter(|o| **o).count();
                Expect::Suback(conn, over)
            }
            Packet::Unsubscribe(u) => {
                let over: Vec<bool> = u.filters.iter().map(|f| self.over_limits(f)).collect();
                self.report.over_limits += over.iter().filter(|o| **o).count();
                Expect::Unsuback(conn, over)
            }
            // Earlier checks (an alias, an invalid name, a QoS above the maximum) close the
            // connection first.
            Packet::Publish(p)
                if p.properties.topic_alias.is_none()
                    && valid_topic_name(&p.topic)
                    && p.qos as u8 <= self.config.max_qos
                    && self.over_limits(&p.topic) =>
            {
                self.report.over_limits += 1;
                Expect::Refused {
                    conn,
                    qos: p.qos,
                    packet_id: p.packet_id,
                }
            }
            _ => return None,
        };
        Some(expect)
    }

    /// The slot's client sends a packet on its connection (if it has one).
    fn send(&mut self, slot: usize, packet: Packet) {
        let Some(conn) = self.slots[slot].conn else {
            return;
        };
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.last_seen = self.now;
        self.expect = self.expectation(conn, &packet);
        self.last_ack = None;
        self.broker
            .handle(CoreInput::Packet { conn, packet }, self.now);
        self.drain();
        let step = self.report.steps;
        if let Some(Expect::Refused {
            conn,
            qos,
            packet_id,
        }) = self.expect.take()
        {
            // Valid MQTT beyond this broker's limits: refused, the connection stays (at QoS 2
            // a PUBLISH beyond the Receive Maximum closes it first).
            if qos != QoS::ExactlyOnce {
                assert!(
                    self.conns.contains_key(&conn),
                    "step {step}: a PUBLISH beyond the topic limits closed {conn:?}"
                );
            }
            // Its acknowledgement is the last one sent (they go out in order). A QoS 2 packet
            // id the broker already holds is a resend, acknowledged with success.
            let v5 = self.conns.get(&conn).is_some_and(|s| s.version.is_v5());
            if let (true, Some(id), Some((ack_id, rec, reason))) = (v5, packet_id, self.last_ack) {
                if ack_id == id {
                    assert_eq!(rec, qos == QoS::ExactlyOnce, "step {step}: wrong ack kind");
                    let resend = qos == QoS::ExactlyOnce && reason == ReasonCode::SUCCESS;
                    assert!(
                        reason == ReasonCode::TOPIC_NAME_INVALID || resend,
                        "step {step}: PUBLISH beyond the topic limits acknowledged with {reason:?}"
                    );
                }
            }
        }
    }

    /// Bytes from the slot's client, decoded as the server does: CONNECT first, then packets
    /// for the broker; a decode error ends the connection.
    fn raw(&mut self, slot: usize, raw: &[u8]) {
        let mut buf = BytesMut::from(raw);
        let connected = |this: &Self| {
            this.slots[slot]
                .conn
                .is_some_and(|c| this.conns.contains_key(&c))
        };
        if !connected(self) {
            self.slots[slot].codec = Codec::new(self.config.max_packet_size);
        }
        for _ in 0..64 {
            let decoded = self.slots[slot].codec.decode(&mut buf);
            match decoded {
                Ok(Some(Packet::Connect(c))) if !connected(self) => self.connect(slot, *c),
                Ok(Some(packet)) if connected(self) => self.send(slot, packet),
                // Not connected and not a CONNECT: the server closes the socket.
                Ok(Some(_)) | Ok(None) => return,
                Err(_) => {
                    if let Some(conn) = self.slots[slot].conn {
                        self.lose(conn);
                    }
                    return;
                }
            }
        }
    }

    /// The server reports the connection gone.
    fn lose(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.closed.insert(conn);
        }
        self.broker.handle(CoreInput::Lost { conn }, self.now);
        self.drain();
    }

    /// Virtual time passes: the broker's timers run at each deadline it gives, and at each
    /// keep-alive deadline (where the broker must close the connection itself).
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        // Bounded: $SYS alone is due every 10 s. Keep-alive deadlines are always visited (each
        // closes a connection).
        let mut broker_steps = 0;
        loop {
            let keep_alive = self.next_keep_alive().filter(|at| *at <= until);
            let broker = self
                .broker
                .poll_timeout()
                .filter(|at| *at <= until && broker_steps < 32);
            let at = match (keep_alive, broker) {
                (Some(k), Some(b)) if b < k => {
                    broker_steps += 1;
                    b
                }
                (Some(k), _) => k,
                (None, Some(b)) => {
                    broker_steps += 1;
                    b
                }
                (None, None) => break,
            };
            self.now = self.now.max(at);
            self.tick();
        }
        self.now = until;
        self.tick();
    }

    /// The earliest keep-alive deadline of an open connection.
    fn next_keep_alive(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(ConnState::keep_alive_deadline)
            .min()
    }

    /// The broker's timers run at `now`. It closes exactly the connections whose keep-alive
    /// deadline is now (a v5 client first gets DISCONNECT 0x8D), and nothing else: a
    /// connection is closed neither before its deadline nor after it.
    fn tick(&mut self) {
        let step = self.report.steps;
        self.broker.handle_timeout(self.now);
        let closed = self.drain();
        if let Some(at) = self.broker.poll_timeout() {
            assert!(
                at > self.now,
                "step {step}: poll_timeout {:?} not after handle_timeout",
                at - self.now
            );
        }
        for (conn, state) in closed {
            let deadline = state.keep_alive_deadline();
            assert_eq!(
                deadline,
                Some(self.now),
                "step {step}: {conn:?} closed by a timer at {:?}, not at its keep-alive deadline",
                self.now
            );
            let expected = state
                .version
                .is_v5()
                .then_some(ReasonCode::KEEP_ALIVE_TIMEOUT);
            assert_eq!(
                state.disconnect, expected,
                "step {step}: keep-alive close of {conn:?} without the right DISCONNECT"
            );
            self.report.keep_alive_closes += 1;
        }
        for (conn, state) in &self.conns {
            if let Some(at) = state.keep_alive_deadline() {
                assert!(
                    at > self.now,
                    "step {step}: {conn:?} still open {:?} after its keep-alive deadline",
                    self.now - at
                );
            }
        }
    }

    /// The server shuts down: it applies the broker's last outputs and stops (it reports no
    /// connection lost after this, so the broker is not called again).
    fn shutdown(&mut self) {
        let open: Vec<ConnId> = self.conns.keys().copied().collect();
        self.broker.shutdown();
        self.stopped = true;
        self.drain();
        for conn in open {
            assert!(
                self.closed.contains(&conn),
                "step {}: {conn:?} not closed by shutdown",
                self.report.steps
            );
        }
    }

    /// Every connection goes; then a long time passes.
    fn finish(&mut self) {
        let open: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in open {
            self.lose(conn);
        }
        assert_eq!(self.broker.stats().clients_connected, 0, "after every loss");
        self.now += Duration::from_secs(u64::from(u32::MAX) + 1);
        self.tick();
    }

    /// Takes the broker's output and checks it; plays the server's part for `Close` (reported
    /// lost) and `WantRoom` (an outbox with room: reported writable at once). Returns the
    /// connections the broker closed, as they were.
    fn drain(&mut self) -> Vec<(ConnId, ConnState)> {
        let step = self.report.steps;
        let mut outputs = Vec::new();
        let mut closed = Vec::new();
        // Bounded: an `Input::Lost` for a closed connection may publish a will, whose delivery
        // closes nothing; a writable outbox takes one more batch of retained messages.
        for _ in 0..64 {
            self.broker.drain_outputs_into(&mut outputs);
            if outputs.is_empty() {
                return closed;
            }
            let mut closed_now = Vec::new();
            let mut writable = Vec::new();
            for output in outputs.drain(..) {
                match output {
                    Output::Send(conn, packet) => self.check_send(conn, &packet),
                    Output::Close(conn) => {
                        assert!(
                            !self.closed.contains(&conn),
                            "step {step}: {conn:?} closed twice"
                        );
                        let Some(state) = self.conns.remove(&conn) else {
                            panic!("step {step}: Close for unknown {conn:?}");
                        };
                        self.closed.insert(conn);
                        closed_now.push(conn);
                        closed.push((conn, state));
                    }
                    Output::WantRoom(conn) => {
                        assert!(
                            self.conns.contains_key(&conn),
                            "step {step}: WantRoom for closed or unknown {conn:?}"
                        );
                        writable.push(conn);
                    }
                    Output::Persist(op) => {
                        assert!(self.persist, "step {step}: {op:?} without persistence");
                    }
                    Output::Connected { conn, outcome } => {
                        assert!(
                            self.last_connack.is_some_and(|(c, _)| c == conn),
                            "step {step}: Output::Connected before the CONNACK of {conn:?}"
                        );
                        assert!(
                            self.outcome.replace((conn, outcome)).is_none(),
                            "step {step}: two Output::Connected for one CONNECT"
                        );
                    }
                    Output::Accepted(_) | Output::Interest { .. } | Output::Reply { .. } => {}
                }
            }
            if self.stopped {
                return closed;
            }
            for conn in closed_now {
                self.broker.handle(CoreInput::Lost { conn }, self.now);
            }
            for conn in writable {
                if self.conns.contains_key(&conn) {
                    self.broker.handle(CoreInput::Writable { conn }, self.now);
                }
            }
        }
        panic!("step {step}: output did not settle");
    }

    fn check_send(&mut self, conn: ConnId, packet: &Packet) {
        let step = self.report.steps;
        self.report.sent += 1;
        assert!(
            !self.closed.contains(&conn),
            "step {step}: Send after Close or loss of {conn:?}: {packet:?}"
        );
        let Some(state) = self.conns.get(&conn) else {
            panic!("step {step}: Send to unknown {conn:?}: {packet:?}");
        };
        let v5 = state.version.is_v5();
        // The topic limits (see `Expect`).
        match (packet, &self.expect) {
            (Packet::SubAck(a), Some(Expect::Suback(c, over))) if *c == conn => {
                assert_eq!(a.reason_codes.len(), over.len(), "step {step}: {a:?}");
                for (code, over) in a.reason_codes.iter().zip(over) {
                    // 0x97 if the session holds `max_subscriptions_per_client` already.
                    let refused = if v5 {
                        [ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::QUOTA_EXCEEDED]
                            .contains(code)
                    } else {
                        *code == ReasonCode(0x80)
                    };
                    assert!(
                        !over || refused,
                        "step {step}: a filter beyond the limits got {code:?}"
                    );
                }
            }
            (Packet::UnsubAck(a), Some(Expect::Unsuback(c, over))) if *c == conn && v5 => {
                assert_eq!(a.reason_codes.len(), over.len(), "step {step}: {a:?}");
                for (code, over) in a.reason_codes.iter().zip(over) {
                    assert!(
                        !over || *code == ReasonCode::TOPIC_FILTER_INVALID,
                        "step {step}: a filter beyond the limits got {code:?} in UNSUBACK"
                    );
                }
            }
            (Packet::PubAck(a), Some(Expect::Refused { conn: c, .. })) if *c == conn => {
                self.last_ack = Some((a.packet_id, false, a.reason_code));
            }
            (Packet::PubRec(a), Some(Expect::Refused { conn: c, .. })) if *c == conn => {
                self.last_ack = Some((a.packet_id, true, a.reason_code));
            }
            _ => {}
        }
        if let Packet::Publish(p) = packet {
            // Nothing beyond the limits is ever routed or retained (an empty topic is an
            // alias).
            assert!(
                p.topic.is_empty() || !self.over_limits(&p.topic),
                "step {step}: PUBLISH on a topic beyond the limits: {} bytes",
                p.topic.len()
            );
        }
        let Some(state) = self.conns.get_mut(&conn) else {
            unreachable!("checked above");
        };
        if !state.connacked {
            let Packet::ConnAck(ack) = packet else {
                panic!("step {step}: first packet to {conn:?} is not CONNACK: {packet:?}");
            };
            state.connacked = true;
            self.last_connack = Some((conn, ack.reason_code));
        }
        if let Packet::Disconnect(d) = packet {
            state.disconnect = Some(d.reason_code);
        }
        let mut buf = BytesMut::new();
        if let Err(e) = encode(packet, state.version, &mut buf) {
            panic!("step {step}: {packet:?} to {conn:?} does not encode: {e}");
        }
        // Every packet fits the client's Maximum Packet Size [MQTT-3.1.2-24]; reason strings are
        // left out where they would not [MQTT-3.2.2-19], [MQTT-3.14.2-3]. (A successful CONNACK
        // carries no optional property and is not checked: a limit below its size is absurd.)
        let success = matches!(packet, Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS);
        if !success {
            let len = encoded_len(packet, state.version);
            assert!(
                len <= state.max_packet_size as usize,
                "step {step}: {len}-byte packet over the client's maximum {}: {packet:?}",
                state.max_packet_size
            );
        }
        if let Packet::Publish(p) = packet {
            self.report.delivered += 1;
            assert_eq!(
                p.packet_id.is_some(),
                p.qos != QoS::AtMostOnce,
                "step {step}: packet id and QoS disagree: {p:?}"
            );
            assert!(
                p.qos as u8 <= self.config.max_qos,
                "step {step}: QoS above the maximum: {p:?}"
            );
        }
        // What the client will owe for it.
        let owed = match packet {
            Packet::Publish(p) => match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(PubAck::new(id))),
                (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(PubAck::new(id))),
                _ => None,
            },
            Packet::PubRec(a) => Some(Packet::PubRel(PubAck::new(a.packet_id))),
            Packet::PubRel(a) => Some(Packet::PubComp(PubAck::new(a.packet_id))),
            _ => None,
        };
        if let Some(owed) = owed {
            if let Some(s) = self.slots.iter_mut().find(|s| s.conn == Some(conn)) {
                s.owed.push(owed);
            }
        }
    }
}

/// A valid topic name (not checked against the limits): not empty, no wildcard, no NUL.
fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// QoS from the low two bits (3 reads as 2).
fn qos(bits: u8) -> QoS {
    match bits & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Writes inputs in the interpreter's format (the stable tests make the seed corpus with it).
#[allow(dead_code)] // the fuzz target only reads inputs
pub(crate) struct Script(Vec<u8>);

#[allow(dead_code)]
impl Script {
    /// An input for the configuration byte `config` (see [`config`]).
    pub(crate) fn new(config: u8) -> Self {
        Self(vec![config])
    }

    /// The bytes.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Any operation, its arguments written as they are.
    pub(crate) fn op(mut self, code: u8, args: &[u8]) -> Self {
        self.0.push(code);
        self.0.extend_from_slice(args);
        self
    }

    /// CONNECT: `version` 0 (3.1), 1 (3.1.1) or 2 (5.0), clean start, session expiry (index into
    /// `EXPIRIES`, v5 only); no keep-alive, no will, no properties.
    pub(crate) fn connect(self, slot: u8, version: u8, clean: bool, expiry: u8) -> Self {
        let flags = u8::from(clean) | if expiry == 0 { 0 } else { 0x40 };
        self.op(op::CONNECT, &[slot, version, flags, expiry, 0, 0])
    }

    /// PUBLISH of `len` bytes to the topic written by `topic` with QoS `qos` and RETAIN.
    pub(crate) fn publish(self, slot: u8, qos: u8, retain: bool, topic: &[u8], len: u8) -> Self {
        let flags = qos | if retain { 4 } else { 0 };
        let mut args = vec![slot, flags];
        args.extend_from_slice(topic);
        args.push(len);
        self.op(op::PUBLISH, &args)
    }

    /// SUBSCRIBE to one filter with the options byte `options` (bits 0-1 QoS).
    pub(crate) fn subscribe(self, slot: u8, filter: &[u8], options: u8) -> Self {
        let mut args = vec![slot, 0];
        args.extend_from_slice(filter);
        args.extend_from_slice(&[options, 0]);
        self.op(op::SUBSCRIBE, &args)
    }

    /// UNSUBSCRIBE from one filter.
    pub(crate) fn unsubscribe(self, slot: u8, filter: &[u8]) -> Self {
        let mut args = vec![slot, 0];
        args.extend_from_slice(filter);
        self.op(op::UNSUBSCRIBE, &args)
    }

    /// The client answers what it was sent.
    pub(crate) fn answer(self, slot: u8) -> Self {
        self.op(op::ANSWER, &[slot])
    }

    /// Time passes (`index` into `ADVANCES_MS`).
    pub(crate) fn advance(self, index: u8) -> Self {
        self.op(op::ADVANCE, &[index])
    }

    /// Raw bytes from the slot's client.
    pub(crate) fn raw(self, slot: u8, bytes: &[u8]) -> Self {
        let len = u16::try_from(bytes.len()).expect("a raw operation holds at most 65,535 bytes");
        let mut args = vec![slot, 0];
        args.extend_from_slice(&len.to_be_bytes());
        args.extend_from_slice(bytes);
        self.op(op::RAW, &args)
    }
}

/// Topic argument bytes: `TOPICS[index]`.
#[allow(dead_code)]
pub(crate) fn table_topic(name: &str) -> Vec<u8> {
    let i = TOPICS
        .iter()
        .position(|t| *t == name)
        .unwrap_or_else(|| panic!("{name:?} is not in TOPICS"));
    vec![u8::try_from(i).expect("a small table")]
}

/// Topic argument bytes: a deep chain of `depth` levels in `pattern` (see [`topic::DEEP`]).
#[allow(dead_code)]
pub(crate) fn deep_topic_arg(depth: u16, pattern: u8) -> Vec<u8> {
    let [hi, lo] = depth.to_be_bytes();
    vec![topic::DEEP, hi, lo, pattern]
}

/// Topic argument bytes: these bytes as they are.
#[allow(dead_code)]
pub(crate) fn raw_topic_arg(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 32, "raw topics are shorter than 32 bytes");
    let mut v = vec![topic::RAW, u8::try_from(bytes.len()).unwrap_or(0)];
    v.extend_from_slice(bytes);
    v
}
