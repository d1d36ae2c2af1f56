//! The broker state machine.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_codec::{
    ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion, PubAck,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

use crate::config::BrokerConfig;
use crate::message::{Delivery, Message, SessionId};
use crate::session::{Inflight, OutState, PendingWill, Session, SubData};
use crate::store::{Snapshot, StoreOp, StoredMessage, StoredState};
use crate::topic::{self, Filter};
use crate::tree::{Match, RetainedTree, SubscriptionTree};

/// Identifies one network connection, assigned by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// What the server knows about a connection when it hands CONNECT to the broker.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The listener's name (shared by its connections).
    pub listener: Arc<str>,
    /// The peer's address, if known.
    pub peer: Option<SocketAddr>,
    /// The authenticated user name (from CONNECT or a certificate identity), if any.
    pub username: Option<String>,
}

/// Decides what a client may publish and subscribe to. The default allows everything.
pub trait Authorizer: Send {
    /// May this client publish to `topic`?
    fn can_publish(&self, client_id: &str, info: &ClientInfo, topic: &str) -> bool {
        let _ = (client_id, info, topic);
        true
    }
    /// May this client subscribe to `filter` (the raw filter, `$share/...` included)?
    fn can_subscribe(&self, client_id: &str, info: &ClientInfo, filter: &str) -> bool {
        let _ = (client_id, info, filter);
        true
    }
    /// May this client receive the retained message on `topic` when it subscribes?
    fn can_receive(&self, client_id: &str, info: &ClientInfo, topic: &str) -> bool {
        let _ = (client_id, info, topic);
        true
    }
}

/// The authorizer that allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {}

/// What the broker asks the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // packets are moved once, into an outbox
pub enum Action {
    /// Send this packet on this connection.
    Send(ConnId, Packet),
    /// Close this connection once what was sent before is flushed.
    Close(ConnId),
}

/// The result of [`Broker::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// True if the connection was accepted (CONNACK success was queued).
    pub accepted: bool,
    /// The client id in use (assigned by the broker if the client sent none).
    pub client_id: String,
    /// The keep-alive to enforce, in seconds (0: none).
    pub keep_alive: u16,
}

/// Counters, published under `$SYS/broker/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections currently open (after CONNACK).
    pub clients_connected: u64,
    /// PUBLISH packets received from clients.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Messages dropped: session queue full, too large for the client, or expired.
    pub messages_dropped: u64,
}

/// What routing a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    NoSubscribers,
    Delivered,
    /// At least one subscriber's queue was full.
    QueueFull,
}

/// Per-connection protocol state.
#[derive(Debug)]
struct Conn {
    session: SessionId,
    protocol: ProtocolVersion,
    info: ClientInfo,
    /// Boxed: most connections have none, and the connection table keeps its entries small.
    will: Option<Box<LastWill>>,
    /// The client's Receive Maximum.
    receive_maximum: u16,
    /// The client's Maximum Packet Size.
    max_packet_size: u32,
    /// Topic aliases the client set: alias -> topic.
    aliases_in: BTreeMap<u16, String>,
    /// Topic aliases the broker set towards the client: topic -> alias.
    aliases_out: BTreeMap<String, u16>,
    /// The client's Topic Alias Maximum.
    alias_max_out: u16,
    /// The client's Request Problem Information.
    problem_info: bool,
    /// Session expiry given in CONNECT was 0 (DISCONNECT may then not raise it).
    connect_expiry_zero: bool,
    /// PUBACK/PUBREC held back (flow control), in the order they must go out, each with the
    /// congested session it waits for (`None`: it only waits for the ones before it).
    held_acks: VecDeque<(Packet, Option<SessionId>)>,
}

/// The broker: all sessions, subscriptions and retained messages, driven by the server.
///
/// Every method takes the current time; output is collected as [`Action`]s and taken with
/// [`Broker::take_actions`].
pub struct Broker {
    config: BrokerConfig,
    authorizer: Box<dyn Authorizer>,
    /// Boxed values: the tables stay small (and grow cheaply) with many idle clients.
    sessions: HashMap<SessionId, Box<Session>>,
    by_client_id: HashMap<String, SessionId>,
    conns: HashMap<ConnId, Box<Conn>>,
    subs: SubscriptionTree<SessionId, SubData>,
    retained: RetainedTree<Arc<Message>>,
    /// (deadline, session): session expiry and will delay timers, checked against the
    /// session's state when they fire.
    timers: BTreeSet<(Instant, SessionId)>,
    actions: Vec<Action>,
    stats: Stats,
    next_session: u64,
    started: Instant,
    next_sys: Option<Instant>,
    hasher: RandomState,
    /// Reused while routing: (session, qos, retain, subscription id).
    scratch: Vec<(SessionId, QoS, bool, Option<u32>)>,
    /// Set while routing: a connected session the message was queued for whose queue is at
    /// `flow_control_queued` (the publisher's acknowledgement then waits for it).
    congested: Option<SessionId>,
    /// Whether durable-store ops are produced.
    persist: bool,
    store_ops: Vec<StoreOp>,
    /// An instant and the wall-clock Unix milliseconds at that instant.
    epoch: (Instant, u64),
    /// Bytes the durable store uses on disk, for `$SYS`.
    store_bytes: Option<u64>,
    /// When expired retained and queued messages are next swept away.
    next_sweep: Option<Instant>,
}

/// How often expired retained and queued messages are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("sessions", &self.sessions.len())
            .field("connections", &self.conns.len())
            .field("subscriptions", &self.subs.len())
            .field("retained", &self.retained.len())
            .field("stats", &self.stats)
            .finish()
    }
}

fn props_with_reason(reason: &str) -> Properties {
    Properties {
        reason_string: Some(reason.to_owned()),
        ..Properties::default()
    }
}

/// Leaves the reason string out of a CONNACK or DISCONNECT that would otherwise exceed the
/// client's Maximum Packet Size [MQTT-3.2.2-19], [MQTT-3.14.2-3].
fn fit_reason(mut packet: Packet, protocol: ProtocolVersion, max_packet_size: u32) -> Packet {
    let max = usize::try_from(max_packet_size).unwrap_or(usize::MAX);
    if moat_codec::encoded_len(&packet, protocol) > max {
        if let Packet::ConnAck(ConnAck { properties, .. })
        | Packet::Disconnect(Disconnect { properties, .. }) = &mut packet
        {
            properties.reason_string = None;
        }
    }
    packet
}

impl Broker {
    /// A broker with no sessions, started at `now`.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let next_sys = config.sys_interval.map(|_| now);
        Self {
            config,
            authorizer: Box::new(AllowAll),
            sessions: HashMap::new(),
            by_client_id: HashMap::new(),
            conns: HashMap::new(),
            subs: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            timers: BTreeSet::new(),
            actions: Vec::new(),
            stats: Stats::default(),
            next_session: 1,
            started: now,
            next_sys,
            hasher: RandomState::new(),
            scratch: Vec::new(),
            congested: None,
            persist: false,
            store_ops: Vec::new(),
            epoch: (now, 0),
            store_bytes: None,
            next_sweep: Some(now + SWEEP_INTERVAL),
        }
    }

    /// Records the durable store's size for `$SYS/broker/store/bytes`.
    pub fn set_store_bytes(&mut self, bytes: u64) {
        self.store_bytes = Some(bytes);
    }

    /// Turns on durable-store ops ([`Broker::drain_store_ops_into`]) for persistent sessions
    /// and retained messages. `now_unix_ms` is the wall clock at `now`.
    pub fn enable_persistence(&mut self, now: Instant, now_unix_ms: u64) {
        self.persist = true;
        self.epoch = (now, now_unix_ms);
    }

    /// Moves the store ops produced so far into `out`. The server makes them durable before it
    /// sends the actions produced with them.
    pub fn drain_store_ops_into(&mut self, out: &mut Vec<StoreOp>) {
        out.append(&mut self.store_ops);
    }

    fn unix_ms(&self, t: Instant) -> u64 {
        let (e, ms) = self.epoch;
        match t.checked_duration_since(e) {
            Some(d) => ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => ms
                .saturating_sub(u64::try_from(e.duration_since(t).as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn instant_at(&self, at: u64) -> Instant {
        let (e, ms) = self.epoch;
        if at >= ms {
            e + Duration::from_millis(at - ms)
        } else {
            e.checked_sub(Duration::from_millis(ms - at)).unwrap_or(e)
        }
    }

    fn op(&mut self, op: StoreOp) {
        if self.persist {
            self.store_ops.push(op);
        }
    }

    fn is_persisted(&self, sid: SessionId) -> bool {
        self.persist && self.sessions.get(&sid).is_some_and(|s| s.persisted)
    }

    fn stored_message(&self, d: &Delivery) -> StoredMessage {
        let m = &d.message;
        StoredMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: d.qos,
            retain: d.retain,
            properties: m.properties.clone(),
            expires_at_ms: m.expires_at.map(|t| self.unix_ms(t)),
            subscription_ids: d.subscription_ids.clone(),
        }
    }

    /// A message loaded from the store.
    fn loaded_message(&self, m: StoredMessage) -> (Arc<Message>, Vec<u32>) {
        let message = Message {
            topic: m.topic,
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: m.properties,
            expires_at: m.expires_at_ms.map(|t| self.instant_at(t)),
            origin: None,
        };
        (Arc::new(message), m.subscription_ids)
    }

    /// Loads what a durable store holds (at start-up, before any connection). Every session
    /// is offline; its expiry runs from when it went offline (or from now, if the broker
    /// stopped while it was connected).
    pub fn restore(&mut self, snapshot: Snapshot, now: Instant) {
        let now_ms = self.unix_ms(now);
        for m in snapshot.retained {
            let (message, _) = self.loaded_message(m);
            if !message.is_expired(now) {
                self.retained.insert(&message.topic.clone(), message);
            }
        }
        for stored in snapshot.sessions {
            let sid = self.new_session(&stored.client_id);
            let offline_ms = stored.offline_since_ms.unwrap_or(now_ms);
            let expires_at = (stored.expiry_interval != u32::MAX).then(|| {
                self.instant_at(offline_ms.saturating_add(u64::from(stored.expiry_interval) * 1000))
            });
            let mut subs = Vec::new();
            for (raw, options, id) in stored.subscriptions {
                if let Ok(filter) = Filter::parse(&raw) {
                    subs.push((raw, filter, SubData { options, id }));
                }
            }
            let mut queue = Vec::new();
            let mut max_seq = 0;
            for (seq, m, state) in stored.messages {
                max_seq = max_seq.max(seq);
                let (message, subscription_ids) = self.loaded_message(m);
                let delivery = Delivery {
                    qos: message.qos,
                    retain: message.retain,
                    message,
                    subscription_ids,
                    seq: Some(seq),
                };
                queue.push((seq, delivery, state));
            }
            let will = stored.will.map(|(will, at)| PendingWill {
                at: self.instant_at(at),
                will,
            });
            for (_, filter, data) in &subs {
                self.subs.insert(filter, sid, data.clone());
            }
            let Some(session) = self.sessions.get_mut(&sid) else {
                continue;
            };
            session.persisted = true;
            session.expiry_interval = stored.expiry_interval;
            session.expires_at = expires_at;
            session.incoming_qos2 = stored.incoming_qos2.into_iter().collect();
            session.next_store_seq = max_seq + 1;
            for (raw, filter, data) in subs {
                session.subscriptions.insert(raw, (filter, data));
            }
            for (seq, delivery, state) in queue {
                let pid = match state {
                    StoredState::Queued => None,
                    StoredState::Sent(p) => PacketId::new(p).map(|p| (p, false)),
                    StoredState::Released(p) => PacketId::new(p).map(|p| (p, true)),
                };
                match pid {
                    Some((pid, released)) if !session.inflight.contains_key(&pid.get()) => {
                        let state = if released {
                            OutState::Released
                        } else if delivery.qos == QoS::ExactlyOnce {
                            OutState::Unreceived
                        } else {
                            OutState::Unacked
                        };
                        session.inflight.insert(
                            pid.get(),
                            Inflight {
                                delivery,
                                state,
                                seq,
                            },
                        );
                        session.next_seq = session.next_seq.max(seq + 1);
                    }
                    _ => {
                        session.queued_bytes +=
                            delivery.message.payload.len() + delivery.message.topic.len();
                        session.queue.push_back(delivery);
                    }
                }
            }
            if let Some(w) = &will {
                self.timers.insert((w.at, sid));
            }
            if let Some(at) = expires_at {
                self.timers.insert((at, sid));
            }
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.pending_will = will.map(Box::new);
            }
        }
    }

    /// Replaces the authorizer.
    pub fn set_authorizer(&mut self, authorizer: Box<dyn Authorizer>) {
        self.authorizer = authorizer;
    }

    /// The settings in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Moves the actions produced so far into `out`.
    pub fn drain_actions_into(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.actions);
    }

    /// The next time [`Broker::tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|(t, _)| *t);
        [timer, self.next_sys, self.next_sweep]
            .into_iter()
            .flatten()
            .min()
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        self.actions.push(Action::Send(conn, packet));
    }

    /// Sends a v5 DISCONNECT (if the client speaks v5) and closes the connection. The will is
    /// published as for a lost connection.
    pub fn disconnect_with(
        &mut self,
        conn_id: ConnId,
        reason: ReasonCode,
        text: &str,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        if conn.protocol.is_v5() {
            let properties = if conn.problem_info {
                props_with_reason(text)
            } else {
                Properties::default()
            };
            let disconnect = Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties,
            });
            let packet = fit_reason(disconnect, conn.protocol, conn.max_packet_size);
            self.send(conn_id, packet);
        }
        self.actions.push(Action::Close(conn_id));
        self.connection_lost(conn_id, now);
    }

    // ---------------------------------------------------------------- CONNECT

    /// Handles CONNECT on a new connection (authentication has already been done by the
    /// server). Queues CONNACK, and on success any queued or in-flight messages.
    pub fn connect(
        &mut self,
        conn_id: ConnId,
        connect: Connect,
        info: ClientInfo,
        now: Instant,
    ) -> ConnectOutcome {
        let v5 = connect.protocol.is_v5();
        let protocol = connect.protocol;
        let client_max = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let refuse = |this: &mut Self, code: ReasonCode, why: &str| {
            let properties = if v5 {
                props_with_reason(why)
            } else {
                Properties::default()
            };
            let connack = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties,
            });
            this.send(conn_id, fit_reason(connack, protocol, client_max));
            this.actions.push(Action::Close(conn_id));
            ConnectOutcome {
                accepted: false,
                client_id: String::new(),
                keep_alive: 0,
            }
        };

        // Enhanced authentication: no method is supported yet [MQTT-4.12.0-1].
        if let Some(method) = &connect.properties.authentication_method {
            let why = format!("authentication method {method:?} is not supported");
            return refuse(self, ReasonCode::BAD_AUTHENTICATION_METHOD, &why);
        }

        // Client identifier.
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            let allowed = match connect.protocol {
                ProtocolVersion::V3_1 => false,
                ProtocolVersion::V3_1_1 => connect.clean_start,
                ProtocolVersion::V5 => true,
            };
            if !allowed {
                return refuse(
                    self,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "an empty client id needs clean session [MQTT-3.1.3-8]",
                );
            }
            let id = format!(
                "moat-{:016x}",
                self.hasher.hash_one((self.next_session, now))
            );
            assigned = Some(id.clone());
            id
        } else {
            connect.client_id.clone()
        };
        if client_id.len() > self.config.max_client_id_len {
            return refuse(
                self,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "client id too long",
            );
        }
        if let Some(w) = &connect.will {
            if topic::validate_topic_name(&w.topic).is_err() {
                return refuse(self, ReasonCode::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if w.qos as u8 > self.config.max_qos {
                return refuse(
                    self,
                    ReasonCode::QOS_NOT_SUPPORTED,
                    "will QoS not supported",
                );
            }
            if !self.authorizer.can_publish(&client_id, &info, &w.topic) {
                return refuse(
                    self,
                    ReasonCode::NOT_AUTHORIZED,
                    "will topic not authorized",
                );
            }
        }

        // Session expiry.
        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(self.config.max_session_expiry);

        // Take over an existing connection with the same client id.
        let existing = self.by_client_id.get(&client_id).copied();
        if let Some(sid) = existing {
            let old_conn = self.sessions.get(&sid).and_then(|s| s.conn);
            if let Some(old) = old_conn {
                self.take_over(old, !connect.clean_start, now);
            }
        }

        // Clean start ends the old session; otherwise resume it.
        let mut session_present = false;
        let sid = match self.by_client_id.get(&client_id).copied() {
            Some(sid) if !connect.clean_start => {
                session_present = true;
                sid
            }
            Some(sid) => {
                self.end_session(sid, now);
                self.new_session(&client_id)
            }
            None => self.new_session(&client_id),
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return refuse(self, ReasonCode::UNSPECIFIED_ERROR, "session lost");
        };
        session.conn = Some(conn_id);
        session.expiry_interval = expiry;
        session.expires_at = None;
        // A will waiting for its delay is not sent when the session is resumed [MQTT-3.1.3-9].
        let had_will = session.pending_will.take().is_some();
        let was_persisted = session.persisted;
        session.persisted = self.persist && expiry > 0;
        let now_persisted = session.persisted;
        if now_persisted {
            self.op(StoreOp::SessionUpsert {
                client_id: client_id.clone(),
                expiry_interval: expiry,
            });
            if !was_persisted {
                // A resumed session the store did not hold (its expiry was 0).
                self.store_session_state(sid);
            }
            if had_will {
                self.op(StoreOp::WillRemove {
                    client_id: client_id.clone(),
                });
            }
        } else if was_persisted {
            self.op(StoreOp::SessionRemove {
                client_id: client_id.clone(),
            });
        }

        // Keep alive.
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if keep_alive > self.config.max_keep_alive {
            keep_alive = self.config.max_keep_alive;
            if v5 {
                server_keep_alive = Some(keep_alive);
            } else {
                keep_alive = connect.keep_alive;
            }
        }

        let props = &connect.properties;
        let conn = Conn {
            session: sid,
            protocol: connect.protocol,
            info,
            will: connect.will.map(Box::new),
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            aliases_in: BTreeMap::new(),
            aliases_out: BTreeMap::new(),
            alias_max_out: props.topic_alias_maximum.unwrap_or(0),
            problem_info: props.request_problem_information.unwrap_or(1) == 1,
            connect_expiry_zero: requested_expiry == 0,
            held_acks: VecDeque::new(),
        };
        let want_response_info = props.request_response_information == Some(1);
        self.conns.insert(conn_id, Box::new(conn));
        self.stats.clients_connected += 1;

        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_identifier = assigned;
            properties.server_keep_alive = server_keep_alive;
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            properties.receive_maximum = Some(self.config.receive_maximum);
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            if self.config.max_qos < 2 {
                properties.maximum_qos = Some(self.config.max_qos);
            }
            if want_response_info {
                properties.response_information = Some(format!("moat/response/{client_id}"));
            }
        }
        self.send(
            conn_id,
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code: ReasonCode::SUCCESS,
                properties,
            }),
        );
        if session_present {
            self.resend_inflight(sid, conn_id, now);
        }
        self.fill_window(sid, now);
        ConnectOutcome {
            accepted: true,
            client_id,
            keep_alive,
        }
    }

    /// Writes what a session holds to the store: its subscriptions, its incoming QoS 2 packet
    /// ids and its outgoing messages (in flight, in send order, then queued) under new store
    /// keys (any earlier ones went with the session's `SessionRemove`).
    fn store_session_state(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let client_id = session.client_id.clone();
        let mut ops = Vec::new();
        for (filter, (_, data)) in &session.subscriptions {
            ops.push(StoreOp::SubscriptionSet {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: data.options,
                id: data.id,
            });
        }
        for &packet_id in &session.incoming_qos2 {
            ops.push(StoreOp::IncomingQos2Add {
                client_id: client_id.clone(),
                packet_id,
            });
        }
        let mut messages = Vec::new();
        for id in session.inflight_in_order() {
            let Some(f) = session.inflight.get_mut(&id) else {
                continue;
            };
            let seq = session.next_store_seq;
            session.next_store_seq += 1;
            f.delivery.seq = Some(seq);
            let state = match f.state {
                OutState::Released => StoredState::Released(id),
                OutState::Unacked | OutState::Unreceived => StoredState::Sent(id),
            };
            messages.push((seq, f.delivery.clone(), state));
        }
        for d in &mut session.queue {
            let seq = session.next_store_seq;
            session.next_store_seq += 1;
            d.seq = Some(seq);
            messages.push((seq, d.clone(), StoredState::Queued));
        }
        for (seq, delivery, state) in messages {
            ops.push(StoreOp::MessagePut {
                client_id: client_id.clone(),
                seq,
                message: self.stored_message(&delivery),
                state,
            });
        }
        for op in ops {
            self.op(op);
        }
    }

    fn new_session(&mut self, client_id: &str) -> SessionId {
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions
            .insert(sid, Box::new(Session::new(client_id.to_owned())));
        self.by_client_id.insert(client_id.to_owned(), sid);
        sid
    }

    /// The old connection of a session loses it to a new CONNECT with the same client id.
    fn take_over(&mut self, old: ConnId, resumed: bool, now: Instant) {
        let Some(conn) = self.conns.get(&old) else {
            return;
        };
        if conn.protocol.is_v5() {
            self.send(
                old,
                Packet::Disconnect(Disconnect {
                    reason_code: ReasonCode::SESSION_TAKEN_OVER,
                    properties: Properties::default(),
                }),
            );
        }
        self.actions.push(Action::Close(old));
        let Some(conn) = self.conns.remove(&old) else {
            return;
        };
        self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
        if let Some(session) = self.sessions.get_mut(&conn.session) {
            session.conn = None;
        }
        if let Some(will) = conn.will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            // With a delay, the will of a resumed session is never due [MQTT-3.1.3-9].
            if delay == 0 || !resumed {
                self.publish_will(conn.session, *will, now);
            }
        }
    }

    /// Resends unacknowledged messages after a session is resumed [MQTT-4.4.0-1].
    fn resend_inflight(&mut self, sid: SessionId, conn_id: ConnId, now: Instant) {
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let order = session.inflight_in_order();
        for id in order {
            let Some(pid) = PacketId::new(id) else {
                continue;
            };
            let Some(session) = self.sessions.get(&sid) else {
                return;
            };
            let Some(f) = session.inflight.get(&id) else {
                continue;
            };
            match f.state {
                OutState::Released => {
                    self.send(conn_id, Packet::PubRel(PubAck::new(pid)));
                }
                OutState::Unacked | OutState::Unreceived => {
                    let delivery = f.delivery.clone();
                    // A message that cannot be sent any more (expired, too large) is dropped.
                    if let Some(mut p) = self.build_publish(conn_id, &delivery, Some(pid), now) {
                        p.dup = true;
                        self.stats.messages_sent += 1;
                        self.send(conn_id, Packet::Publish(p));
                    } else if let Some(s) = self.sessions.get_mut(&sid) {
                        let seq = s.inflight.remove(&id).and_then(|f| f.delivery.seq);
                        self.stats.messages_dropped += 1;
                        self.forget_stored(sid, seq);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- packets

    /// Handles a packet received on a connected connection.
    pub fn handle_packet(&mut self, conn_id: ConnId, packet: Packet, now: Instant) {
        if !self.conns.contains_key(&conn_id) {
            return;
        }
        match packet {
            Packet::Publish(p) => self.handle_publish(conn_id, p, now),
            Packet::PubAck(a) => self.complete_outgoing(conn_id, &a, OutState::Unacked, now),
            Packet::PubRec(a) => self.handle_pubrec(conn_id, a, now),
            Packet::PubRel(a) => self.handle_pubrel(conn_id, a),
            Packet::PubComp(a) => self.complete_outgoing(conn_id, &a, OutState::Released, now),
            Packet::Subscribe(s) => self.handle_subscribe(conn_id, s, now),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(conn_id, u),
            Packet::PingReq => self.send(conn_id, Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(conn_id, d, now),
            Packet::Connect(_) => self.disconnect_with(
                conn_id,
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT [MQTT-3.1.0-2]",
                now,
            ),
            Packet::Auth(_) => self.disconnect_with(
                conn_id,
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method",
                now,
            ),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => self
                .disconnect_with(
                    conn_id,
                    ReasonCode::PROTOCOL_ERROR,
                    "a server-to-client packet was sent by the client",
                    now,
                ),
        }
    }

    fn handle_publish(&mut self, conn_id: ConnId, mut p: Publish, now: Instant) {
        self.stats.messages_received += 1;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let v5 = conn.protocol.is_v5();
        // Topic alias.
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > self.config.topic_alias_maximum {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    "topic alias out of range [MQTT-3.3.2-9]",
                    now,
                );
            }
            if p.topic.is_empty() {
                match conn.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return self.disconnect_with(
                            conn_id,
                            ReasonCode::PROTOCOL_ERROR,
                            "unknown topic alias",
                            now,
                        )
                    }
                }
            } else {
                conn.aliases_in.insert(alias, p.topic.clone());
            }
        }
        if topic::validate_topic_name(&p.topic).is_err() {
            return self.disconnect_with(
                conn_id,
                ReasonCode::TOPIC_NAME_INVALID,
                "invalid topic name",
                now,
            );
        }
        if p.qos as u8 > self.config.max_qos {
            return self.disconnect_with(
                conn_id,
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS not supported [MQTT-3.2.2-11]",
                now,
            );
        }
        let sid = conn.session;
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let client_id = session.client_id.clone();

        // QoS 2 duplicate: acknowledge again, deliver once.
        if let (QoS::ExactlyOnce, Some(pid)) = (p.qos, p.packet_id) {
            if session.incoming_qos2.contains(&pid.get()) {
                self.send_ack(conn_id, Packet::PubRec(PubAck::new(pid)), None);
                return;
            }
            if session.incoming_qos2.len() >= usize::from(self.config.receive_maximum) {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded [MQTT-3.3.4-9]",
                    now,
                );
            }
        }

        let mut reason = ReasonCode::SUCCESS;
        let authorized = !p.topic.starts_with("$SYS")
            && self
                .conns
                .get(&conn_id)
                .is_some_and(|c| self.authorizer.can_publish(&client_id, &c.info, &p.topic));
        if !authorized {
            reason = ReasonCode::NOT_AUTHORIZED;
        } else if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            reason = ReasonCode::PAYLOAD_FORMAT_INVALID;
        }
        let (qos, pid) = (p.qos, p.packet_id);
        self.congested = None;
        if reason == ReasonCode::SUCCESS {
            let retain = p.retain;
            let message = Arc::new(Message::from_publish(p, Some(sid), now));
            if retain {
                self.store_retained(&message);
            }
            match self.route(&message, now) {
                Routed::NoSubscribers if v5 => reason = ReasonCode::NO_MATCHING_SUBSCRIBERS,
                // A subscriber's queue is full: the v5 publisher learns that not everyone got
                // it (v3 has no way to say so; the drop is counted either way).
                Routed::QueueFull if v5 => reason = ReasonCode::QUOTA_EXCEEDED,
                _ => {}
            }
        }
        let blocker = self.congested.take();
        let Some(pid) = pid else { return };
        let ack = PubAck {
            packet_id: pid,
            reason_code: reason,
            properties: Properties::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_ack(conn_id, Packet::PubAck(ack), blocker),
            QoS::ExactlyOnce => {
                if !reason.is_error() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.incoming_qos2.insert(pid.get());
                        if s.persisted {
                            let client_id = s.client_id.clone();
                            let packet_id = pid.get();
                            self.op(StoreOp::IncomingQos2Add {
                                client_id,
                                packet_id,
                            });
                        }
                    }
                }
                self.send_ack(conn_id, Packet::PubRec(ack), blocker);
            }
        }
    }

    /// Sends a PUBACK/PUBREC to a publisher, or holds it back behind a congested subscriber
    /// (`blocker`) or behind acknowledgements already held for this connection (they go out in
    /// the order the PUBLISH packets came [MQTT-4.6.0-2], [MQTT-4.6.0-3]).
    fn send_ack(&mut self, conn_id: ConnId, ack: Packet, blocker: Option<SessionId>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if blocker.is_none() && conn.held_acks.is_empty() {
            self.send(conn_id, ack);
            return;
        }
        conn.held_acks.push_back((ack, blocker));
        // Registers the connection with the session its first held acknowledgement waits for.
        self.release_acks(conn_id);
    }

    /// Whether acknowledgements held for `sid` must still wait: it is connected and its queue
    /// is above half the flow-control mark.
    fn still_congested(&self, sid: SessionId) -> bool {
        self.sessions.get(&sid).is_some_and(|s| {
            s.conn.is_some() && s.queue.len() > self.config.flow_control_queued / 2
        })
    }

    /// Sends a connection's held acknowledgements up to the first that must still wait (and
    /// registers the connection with the session it waits for).
    fn release_acks(&mut self, conn_id: ConnId) {
        loop {
            let Some(conn) = self.conns.get(&conn_id) else {
                return;
            };
            let Some((_, blocker)) = conn.held_acks.front() else {
                return;
            };
            if let Some(b) = *blocker {
                if self.still_congested(b) {
                    if let Some(session) = self.sessions.get_mut(&b) {
                        if !session.ack_waiters.contains(&conn_id) {
                            session.ack_waiters.push(conn_id);
                        }
                    }
                    return;
                }
            }
            let Some((ack, _)) = self
                .conns
                .get_mut(&conn_id)
                .and_then(|c| c.held_acks.pop_front())
            else {
                return;
            };
            self.send(conn_id, ack);
        }
    }

    /// `sid` is no longer congested (drained, offline or gone): its waiters may go on.
    fn wake_ack_waiters(&mut self, sid: SessionId) {
        let waiters = match self.sessions.get_mut(&sid) {
            Some(s) if !s.ack_waiters.is_empty() => std::mem::take(&mut s.ack_waiters),
            _ => return,
        };
        for conn in waiters {
            self.release_acks(conn);
        }
    }

    fn store_retained(&mut self, message: &Arc<Message>) {
        if message.payload.is_empty() {
            if self.retained.remove(&message.topic).is_some() {
                self.op(StoreOp::RetainedRemove {
                    topic: message.topic.clone(),
                });
            }
        } else if self.retained.len() < self.config.max_retained_messages
            || self.retained.get(&message.topic).is_some()
        {
            self.retained.insert(&message.topic, Arc::clone(message));
            if self.persist {
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: message.qos,
                    retain: true,
                    subscription_ids: Vec::new(),
                    seq: None,
                };
                let stored = self.stored_message(&delivery);
                self.op(StoreOp::RetainedSet { message: stored });
            }
        } else {
            tracing::warn!(topic = %message.topic, "retained message not stored: limit reached");
        }
    }

    /// Delivers a message to every matching subscription.
    fn route(&mut self, message: &Arc<Message>, now: Instant) -> Routed {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let sessions = &self.sessions;
        let origin = message.origin;
        self.subs.for_each_match(&message.topic, |m| match m {
            Match::Plain(sid, data) => {
                if data.options.no_local && Some(*sid) == origin {
                    return;
                }
                scratch.push((
                    *sid,
                    data.options.qos,
                    data.options.retain_as_published,
                    data.id,
                ));
            }
            Match::Shared(group) => {
                let n = group.members.len();
                if n == 0 {
                    return;
                }
                // Round robin, preferring connected members.
                let start = group.next % n;
                let pick = (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| {
                        sessions
                            .get(&group.members[i].0)
                            .is_some_and(|s| s.conn.is_some())
                    })
                    .unwrap_or(start);
                group.next = pick + 1;
                let (sid, data) = &group.members[pick];
                scratch.push((*sid, data.options.qos, false, data.id));
            }
        });
        let matched = !scratch.is_empty();
        let mut overflow = false;
        scratch.sort_unstable_by_key(|e| e.0);
        let mut i = 0;
        while i < scratch.len() {
            let sid = scratch[i].0;
            let mut qos = QoS::AtMostOnce;
            let mut rap = false;
            let mut ids = Vec::new();
            while i < scratch.len() && scratch[i].0 == sid {
                let (_, q, r, id) = scratch[i];
                qos = qos.max(q);
                rap |= r;
                ids.extend(id);
                i += 1;
            }
            let delivery = Delivery {
                message: Arc::clone(message),
                qos: qos.min(message.qos),
                retain: rap && message.retain,
                subscription_ids: ids,
                seq: None,
            };
            if !self.deliver(sid, delivery, now) {
                overflow = true;
            }
        }
        self.scratch = scratch;
        match (matched, overflow) {
            (false, _) => Routed::NoSubscribers,
            (true, true) => Routed::QueueFull,
            (true, false) => Routed::Delivered,
        }
    }

    /// Sends a delivery to a session, or queues it. Returns false if the session's queue was
    /// full and a QoS 1/2 message was dropped for it.
    fn deliver(&mut self, sid: SessionId, delivery: Delivery, now: Instant) -> bool {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return true;
        };
        let conn_id = session.conn;
        if delivery.qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions.
            if let Some(c) = conn_id {
                match self.build_publish(c, &delivery, None, now) {
                    Some(p) => {
                        self.stats.messages_sent += 1;
                        self.send(c, Packet::Publish(p));
                    }
                    None => self.stats.messages_dropped += 1,
                }
            }
            return true;
        }
        let size = delivery.message.payload.len() + delivery.message.topic.len();
        if session.queue.len() >= self.config.max_queued_messages
            || session.queued_bytes + size > self.config.max_queued_bytes
        {
            self.stats.messages_dropped += 1;
            tracing::debug!(client_id = %session.client_id, "session queue full: message dropped");
            return false;
        }
        let mut delivery = delivery;
        if self.persist && session.persisted {
            let seq = session.next_store_seq;
            session.next_store_seq += 1;
            delivery.seq = Some(seq);
            let client_id = session.client_id.clone();
            let message = self.stored_message(&delivery);
            self.op(StoreOp::MessagePut {
                client_id,
                seq,
                message,
                state: StoredState::Queued,
            });
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return true;
        };
        session.queued_bytes += size;
        session.queue.push_back(delivery);
        if conn_id.is_some() {
            self.fill_window(sid, now);
            let mark = self.config.flow_control_queued;
            if mark > 0
                && self.congested.is_none()
                && self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.queue.len() >= mark)
            {
                self.congested = Some(sid);
            }
        }
        true
    }

    /// Sends queued messages while the in-flight window has room; publishers waiting for this
    /// session go on once its queue is down to half the flow-control mark.
    fn fill_window(&mut self, sid: SessionId, now: Instant) {
        self.send_queued(sid, now);
        if !self.still_congested(sid) {
            self.wake_ack_waiters(sid);
        }
    }

    fn send_queued(&mut self, sid: SessionId, now: Instant) {
        loop {
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            let Some(conn_id) = session.conn else { return };
            let Some(conn) = self.conns.get(&conn_id) else {
                return;
            };
            let window = usize::from(conn.receive_maximum.min(self.config.max_inflight));
            if session.inflight.len() >= window {
                return;
            }
            let Some(delivery) = session.pop_queued() else {
                return;
            };
            let Some(pid) = session.allocate_packet_id() else {
                session.push_queued_front(delivery);
                return;
            };
            match self.build_publish(conn_id, &delivery, Some(pid), now) {
                Some(p) => {
                    let Some(session) = self.sessions.get_mut(&sid) else {
                        return;
                    };
                    let state = if delivery.qos == QoS::ExactlyOnce {
                        OutState::Unreceived
                    } else {
                        OutState::Unacked
                    };
                    let seq = session.next_seq;
                    session.next_seq += 1;
                    let store_seq = delivery.seq;
                    let client_id = store_seq.map(|_| session.client_id.clone());
                    session.inflight.insert(
                        pid.get(),
                        Inflight {
                            delivery,
                            state,
                            seq,
                        },
                    );
                    if let (Some(seq), Some(client_id)) = (store_seq, client_id) {
                        let state = StoredState::Sent(pid.get());
                        self.op(StoreOp::MessageState {
                            client_id,
                            seq,
                            state,
                        });
                    }
                    self.stats.messages_sent += 1;
                    self.send(conn_id, Packet::Publish(p));
                }
                None => {
                    self.stats.messages_dropped += 1;
                    self.forget_stored(sid, delivery.seq);
                }
            }
        }
    }

    /// Removes a finished outgoing message from the store.
    fn forget_stored(&mut self, sid: SessionId, seq: Option<u64>) {
        let Some(seq) = seq else { return };
        if let Some(client_id) = self.sessions.get(&sid).map(|s| s.client_id.clone()) {
            self.op(StoreOp::MessageRemove { client_id, seq });
        }
    }

    /// The PUBLISH for one delivery on one connection, or `None` if it must be dropped
    /// (expired, or larger than the client's maximum packet size [MQTT-3.1.2-25]).
    fn build_publish(
        &mut self,
        conn_id: ConnId,
        d: &Delivery,
        packet_id: Option<PacketId>,
        now: Instant,
    ) -> Option<Publish> {
        let m = &d.message;
        if m.is_expired(now) {
            return None;
        }
        let conn = self.conns.get_mut(&conn_id)?;
        let v5 = conn.protocol.is_v5();
        let mut p = Publish {
            dup: false,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.clone(),
            packet_id,
            properties: if v5 {
                m.properties.clone()
            } else {
                Properties::default()
            },
            payload: m.payload.clone(),
        };
        if v5 {
            p.properties.message_expiry_interval = m.remaining_expiry(now);
            p.properties
                .subscription_identifiers
                .clone_from(&d.subscription_ids);
            if conn.alias_max_out > 0 {
                if let Some(&alias) = conn.aliases_out.get(&m.topic) {
                    p.topic = String::new();
                    p.properties.topic_alias = Some(alias);
                } else if conn.aliases_out.len() < usize::from(conn.alias_max_out) {
                    let alias = u16::try_from(conn.aliases_out.len() + 1).unwrap_or(u16::MAX);
                    conn.aliases_out.insert(m.topic.clone(), alias);
                    p.properties.topic_alias = Some(alias);
                }
            }
        }
        if conn.max_packet_size < u32::MAX {
            let len = moat_codec::encoded_len(&Packet::Publish(p.clone()), conn.protocol);
            if len > conn.max_packet_size as usize {
                // An alias set by this packet would never reach the client.
                if !p.topic.is_empty() {
                    if let Some(alias) = p.properties.topic_alias {
                        if conn.aliases_out.get(&m.topic) == Some(&alias) {
                            conn.aliases_out.remove(&m.topic);
                        }
                    }
                }
                return None;
            }
        }
        Some(p)
    }

    /// PUBACK (for QoS 1) or PUBCOMP (for QoS 2) ends an outgoing flow in state `expected`.
    fn complete_outgoing(&mut self, conn_id: ConnId, a: &PubAck, expected: OutState, now: Instant) {
        let Some(sid) = self.conns.get(&conn_id).map(|c| c.session) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let id = a.packet_id.get();
        if session
            .inflight
            .get(&id)
            .is_some_and(|f| f.state == expected)
        {
            let seq = session.inflight.remove(&id).and_then(|f| f.delivery.seq);
            self.forget_stored(sid, seq);
            self.fill_window(sid, now);
        }
    }

    fn handle_pubrec(&mut self, conn_id: ConnId, a: PubAck, now: Instant) {
        let Some(sid) = self.conns.get(&conn_id).map(|c| c.session) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let id = a.packet_id.get();
        match session.inflight.get_mut(&id) {
            Some(f) if f.state == OutState::Unreceived || f.state == OutState::Released => {
                if a.reason_code.is_error() {
                    let seq = session.inflight.remove(&id).and_then(|f| f.delivery.seq);
                    self.forget_stored(sid, seq);
                    self.fill_window(sid, now);
                } else {
                    f.state = OutState::Released;
                    if let Some(seq) = f.delivery.seq {
                        let client_id = session.client_id.clone();
                        let state = StoredState::Released(id);
                        self.op(StoreOp::MessageState {
                            client_id,
                            seq,
                            state,
                        });
                    }
                    self.send(conn_id, Packet::PubRel(PubAck::new(a.packet_id)));
                }
            }
            _ => {
                let mut rel = PubAck::new(a.packet_id);
                rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                self.send(conn_id, Packet::PubRel(rel));
            }
        }
    }

    fn handle_pubrel(&mut self, conn_id: ConnId, a: PubAck) {
        let Some(sid) = self.conns.get(&conn_id).map(|c| c.session) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut comp = PubAck::new(a.packet_id);
        if session.incoming_qos2.remove(&a.packet_id.get()) {
            if session.persisted {
                let client_id = session.client_id.clone();
                let packet_id = a.packet_id.get();
                self.op(StoreOp::IncomingQos2Remove {
                    client_id,
                    packet_id,
                });
            }
        } else {
            comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        self.send(conn_id, Packet::PubComp(comp));
    }

    fn handle_subscribe(&mut self, conn_id: ConnId, s: Subscribe, now: Instant) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let v5 = conn.protocol.is_v5();
        let sid = conn.session;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let Some(client_id) = self.sessions.get(&sid).map(|s| s.client_id.clone()) else {
            return;
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained_to_send: Vec<(String, QoS, Option<u32>)> = Vec::new();
        for (raw, mut options) in s.filters {
            let filter = match Filter::parse(&raw) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(%client_id, filter = %raw, error = %e, "subscription refused");
                    codes.push(if v5 {
                        ReasonCode::TOPIC_FILTER_INVALID
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if filter.share_group.is_some() && options.no_local && v5 {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                    now,
                );
            }
            let allowed = self
                .conns
                .get(&conn_id)
                .is_some_and(|c| self.authorizer.can_subscribe(&client_id, &c.info, &raw));
            if !allowed {
                codes.push(if v5 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode(0x80)
                });
                continue;
            }
            if options.qos as u8 > self.config.max_qos {
                options.qos = QoS::from_u8(self.config.max_qos).unwrap_or(QoS::AtMostOnce);
            }
            let data = SubData {
                options,
                id: sub_id,
            };
            let existed = self.subs.insert(&filter, sid, data.clone()).is_some();
            let send_retained = filter.share_group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained_to_send.push((filter.filter.clone(), options.qos, sub_id));
            }
            if let Some(session) = self.sessions.get_mut(&sid) {
                if session.persisted {
                    let op = StoreOp::SubscriptionSet {
                        client_id: session.client_id.clone(),
                        filter: raw.clone(),
                        options: data.options,
                        id: data.id,
                    };
                    self.store_ops.push(op);
                }
                session.subscriptions.insert(raw, (filter, data));
            }
            codes.push(ReasonCode(options.qos as u8));
        }
        self.send(
            conn_id,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
        // Retained messages follow the SUBACK [MQTT-3.3.1-9: sent with RETAIN set].
        let info = self
            .conns
            .get(&conn_id)
            .map(|c| c.info.clone())
            .unwrap_or_default();
        for (filter, qos, sub_id) in retained_to_send {
            let mut found = Vec::new();
            let authorizer = &self.authorizer;
            self.retained.for_each_match(&filter, |topic, m| {
                if !m.is_expired(now) && authorizer.can_receive(&client_id, &info, topic) {
                    found.push(Arc::clone(m));
                }
            });
            for message in found {
                let delivery = Delivery {
                    qos: qos.min(message.qos),
                    message,
                    retain: true,
                    subscription_ids: sub_id.into_iter().collect(),
                    seq: None,
                };
                self.deliver(sid, delivery, now);
            }
        }
    }

    fn handle_unsubscribe(&mut self, conn_id: ConnId, u: Unsubscribe) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let v5 = conn.protocol.is_v5();
        let sid = conn.session;
        let mut codes = Vec::with_capacity(u.filters.len());
        for raw in u.filters {
            let code = match self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.subscriptions.remove(&raw))
            {
                Some((filter, _)) => {
                    self.subs.remove(&filter, &sid);
                    if self.is_persisted(sid) {
                        let client_id = self
                            .sessions
                            .get(&sid)
                            .map(|s| s.client_id.clone())
                            .unwrap_or_default();
                        self.op(StoreOp::SubscriptionRemove {
                            client_id,
                            filter: raw.clone(),
                        });
                    }
                    ReasonCode::SUCCESS
                }
                None if Filter::parse(&raw).is_err() => ReasonCode::TOPIC_FILTER_INVALID,
                None => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            };
            codes.push(code);
        }
        if !v5 {
            codes.clear();
        }
        self.send(
            conn_id,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
    }

    fn handle_disconnect(&mut self, conn_id: ConnId, d: Disconnect, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(expiry) = d.properties.session_expiry_interval {
            if conn.connect_expiry_zero && expiry != 0 {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 in CONNECT [MQTT-3.14.2-2]",
                    now,
                );
            }
            let sid = conn.session;
            let max = self.config.max_session_expiry;
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expiry_interval = expiry.min(max);
                if s.persisted && s.expiry_interval > 0 {
                    let op = StoreOp::SessionUpsert {
                        client_id: s.client_id.clone(),
                        expiry_interval: s.expiry_interval,
                    };
                    self.store_ops.push(op);
                }
            }
        }
        // A normal DISCONNECT discards the will [MQTT-3.1.2-10]; 0x04 asks for it.
        if d.reason_code != ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.will = None;
            }
        }
        self.actions.push(Action::Close(conn_id));
        self.connection_lost(conn_id, now);
    }

    /// The client id of a connection's session (for logs).
    pub fn client_id(&self, conn_id: ConnId) -> Option<&str> {
        let conn = self.conns.get(&conn_id)?;
        self.sessions
            .get(&conn.session)
            .map(|s| s.client_id.as_str())
    }

    /// The connection is gone (closed by either side, keep-alive expired, I/O error). Publishes
    /// the will (after its delay) and starts the session's expiry. Unknown connections are
    /// ignored, so calling this twice is harmless.
    pub fn connection_lost(&mut self, conn_id: ConnId, now: Instant) {
        let Some(conn) = self.conns.remove(&conn_id) else {
            return;
        };
        self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
        let sid = conn.session;
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.conn != Some(conn_id) {
            return;
        }
        session.conn = None;
        // Publishers do not wait for an offline session.
        self.wake_ack_waiters(sid);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let expiry = session.expiry_interval;
        let persisted = session.persisted && expiry > 0;
        let client_id = session.client_id.clone();
        let mut publish_now = None;
        if let Some(will) = conn.will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 || expiry == 0 {
                publish_now = Some(will);
            } else {
                let at = now + Duration::from_secs(u64::from(delay.min(expiry)));
                if persisted {
                    let at_ms = self.unix_ms(at);
                    let op = StoreOp::WillSet {
                        client_id: client_id.clone(),
                        will: (*will).clone(),
                        at_ms,
                    };
                    self.store_ops.push(op);
                }
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.pending_will = Some(Box::new(PendingWill { at, will: *will }));
                }
                self.timers.insert((at, sid));
            }
        }
        if persisted {
            let at_ms = self.unix_ms(now);
            self.op(StoreOp::SessionOffline { client_id, at_ms });
        }
        if expiry == 0 {
            self.end_session(sid, now);
        } else if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.expires_at = Some(at);
            }
            self.timers.insert((at, sid));
        }
        if let Some(will) = publish_now {
            self.publish_will(sid, *will, now);
        }
    }

    fn publish_will(&mut self, sid: SessionId, will: LastWill, now: Instant) {
        let retain = will.retain;
        let message = Arc::new(Message::from_will(will, Some(sid), now));
        if retain {
            self.store_retained(&message);
        }
        self.route(&message, now);
    }

    /// Removes a session and its subscriptions; a pending will is published [MQTT-3.1.3-9].
    fn end_session(&mut self, sid: SessionId, now: Instant) {
        let Some(mut session) = self.sessions.remove(&sid) else {
            return;
        };
        for conn in std::mem::take(&mut session.ack_waiters) {
            self.release_acks(conn);
        }
        if self.by_client_id.get(&session.client_id) == Some(&sid) {
            self.by_client_id.remove(&session.client_id);
        }
        for (filter, _) in session.subscriptions.values() {
            self.subs.remove(filter, &sid);
        }
        if session.persisted {
            self.op(StoreOp::SessionRemove {
                client_id: session.client_id.clone(),
            });
        }
        if let Some(p) = session.pending_will {
            self.publish_will(sid, p.will, now);
        }
    }

    // ---------------------------------------------------------------- time

    /// Runs what is due at `now`: delayed wills, session expiry, `$SYS` statistics.
    pub fn tick(&mut self, now: Instant) {
        while let Some(&(at, sid)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(session) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if session.conn.is_some() {
                continue;
            }
            if session.pending_will.as_ref().is_some_and(|w| w.at <= now) {
                if let Some(p) = session.pending_will.take() {
                    if session.persisted {
                        let client_id = session.client_id.clone();
                        self.op(StoreOp::WillRemove { client_id });
                    }
                    self.publish_will(sid, p.will, now);
                }
            }
            let Some(session) = self.sessions.get(&sid) else {
                continue;
            };
            if session.expires_at.is_some_and(|e| e <= now) {
                self.end_session(sid, now);
            }
        }
        if let (Some(at), Some(interval)) = (self.next_sys, self.config.sys_interval) {
            if at <= now {
                self.next_sys = Some(now + interval);
                self.publish_sys(now);
            }
        }
        if self.next_sweep.is_none_or(|at| at <= now) {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
            self.sweep_expired(now);
        }
    }

    /// Removes expired retained messages and expired queued messages (they would be dropped
    /// when their turn came; this frees their memory and store space earlier).
    fn sweep_expired(&mut self, now: Instant) {
        let mut expired_topics = Vec::new();
        self.retained.for_each_match("#", |topic, m| {
            if m.is_expired(now) {
                expired_topics.push(topic.to_owned());
            }
        });
        for topic in expired_topics {
            self.retained.remove(&topic);
            self.op(StoreOp::RetainedRemove { topic });
        }
        let mut removed = Vec::new();
        for (sid, session) in &mut self.sessions {
            if !session.queue.iter().any(|d| d.message.is_expired(now)) {
                continue;
            }
            let before = session.queue.len();
            let mut kept = VecDeque::with_capacity(before);
            while let Some(d) = session.pop_queued() {
                if d.message.is_expired(now) {
                    removed.push((*sid, d.seq));
                } else {
                    session.queued_bytes += d.message.payload.len() + d.message.topic.len();
                    kept.push_back(d);
                }
            }
            session.queue = kept;
        }
        self.stats.messages_dropped += removed.len() as u64;
        for (sid, seq) in removed {
            self.forget_stored(sid, seq);
        }
    }

    fn publish_sys(&mut self, now: Instant) {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let items: [(&str, String); 9] = [
            ("version", format!("moat {}", env!("CARGO_PKG_VERSION"))),
            ("uptime", format!("{uptime} seconds")),
            (
                "clients/connected",
                self.stats.clients_connected.to_string(),
            ),
            ("clients/total", self.sessions.len().to_string()),
            (
                "messages/received",
                self.stats.messages_received.to_string(),
            ),
            ("messages/sent", self.stats.messages_sent.to_string()),
            ("messages/dropped", self.stats.messages_dropped.to_string()),
            ("subscriptions/count", self.subs.len().to_string()),
            ("retained messages/count", self.retained.len().to_string()),
        ];
        let store = self.store_bytes.map(|b| ("store/bytes", b.to_string()));
        for (name, value) in items.into_iter().chain(store) {
            let message = Arc::new(Message {
                topic: format!("$SYS/broker/{name}"),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expires_at: None,
                origin: None,
            });
            self.retained.insert(&message.topic, Arc::clone(&message));
            self.route(&message, now);
        }
    }

    /// Closes every connection for shutdown: v5 clients get DISCONNECT 0x8B. Wills are not
    /// published (the server is going away, the clients did nothing wrong).
    pub fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn_id in ids {
            if let Some(conn) = self.conns.get(&conn_id) {
                if conn.protocol.is_v5() {
                    self.send(
                        conn_id,
                        Packet::Disconnect(Disconnect {
                            reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
                            properties: Properties::default(),
                        }),
                    );
                }
            }
            self.actions.push(Action::Close(conn_id));
        }
    }
}
