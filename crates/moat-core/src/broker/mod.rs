//! The broker state machine.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_codec::{
    ConnAck, Connect, Disconnect, LastWill, Packet, PacketId, Properties, ProtocolVersion, PubAck,
    Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use rustc_hash::FxHashMap;

use crate::config::BrokerConfig;
use crate::message::{Delivery, Message, SessionId};
use crate::session::{Inflight, OutState, PendingWill, Session, SubData};
use crate::store::{Snapshot, StoreOp, StoredMessage, StoredState};
use crate::topic::TopicError;
use crate::topic::{self, Filter};
use crate::tree::{Match, RetainedTree, SubscriptionTree};

mod admin;
pub use admin::MAX_CLIENT_SCAN;
mod boundary;
mod connect;
mod deliver;
mod flow;
mod persist;
mod publish;
mod subscribe;
mod sys;
mod time;

pub use boundary::{
    AcceptedMessage, AdminReply, AdminRequest, CertExpiryAction, ClientDetail, ClientIdSource,
    ClientInfo, ClientQuery, ClientSummary, Input, Output, RequestId, RetainedEntry, StatsSnapshot,
    TlsInfo,
};

/// Identifies one network connection, assigned by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

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

/// Values the engine adds to `$SYS/broker/` each `sys_interval`, published with the core's
/// own (the server's metrics: connections and bytes per listener, authentication and TLS
/// failures). Asked only when `$SYS` is published.
pub trait SysSource: Send {
    /// Appends (topic below `$SYS/broker/`, value) pairs to `out`.
    fn sys_values(&self, out: &mut Vec<(String, String)>);
}

/// The authorizer that allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {}

/// The answer to [`Input::Connect`] ([`Output::Connected`]).
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
    /// Messages dropped: session queue full, too large for the client, expired, or QoS 0
    /// to a subscriber that does not read (the sum of the `dropped_*` counters).
    pub messages_dropped: u64,
    /// Dropped because a session's queue was full (`max_queued_messages`/`_bytes`).
    pub dropped_queue_full: u64,
    /// Dropped because the message was larger than the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Dropped because the message expired before it could be sent.
    pub dropped_expired: u64,
    /// QoS 0 dropped at the outbox of a subscriber that does not read (counted by the
    /// server, reported with [`Broker::count_slow_subscriber_drops`]).
    pub dropped_slow_subscriber: u64,
    /// PUBLISH packets refused for their topic (beyond `max_topic_levels`/`_length`).
    pub publishes_refused_topic: u64,
    /// Filters refused in SUBSCRIBE for the topic limits or `max_subscriptions_per_client`.
    pub subscriptions_refused: u64,
    /// Retained messages not stored (`max_retained_messages`/`_bytes` reached).
    pub retained_dropped: u64,
    /// Times a publisher had `receive_maximum` acknowledgements held back by flow control
    /// and kept sending: they were released rather than held without bound.
    pub flow_control_overruns: u64,
    /// CONNECTs refused on a `client_id = "certificate"` listener: no certificate identity.
    pub refused_no_certificate_identity: u64,
    /// CONNECTs refused on a `client_id = "certificate"` listener: the client id was neither
    /// empty nor the certificate identity.
    pub refused_client_id_not_certificate: u64,
    /// Connections closed because their client certificate expired while connected.
    pub disconnected_certificate_expired: u64,
    /// Client certificates that expired while connected and were only warned about
    /// (`on_client_cert_expiry = "warn"`).
    pub certificate_expired_warned: u64,
}

/// Why a message was dropped (each has its own counter).
#[derive(Debug, Clone, Copy)]
enum DropReason {
    QueueFull,
    TooLarge,
    Expired,
    SlowSubscriber,
}

/// What routing a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routed {
    NoSubscribers,
    Delivered,
    /// At least one subscriber's queue was full.
    QueueFull,
}

/// PUBACK/PUBREC held back, in order, each with the congested session it waits for.
type HeldAcks = VecDeque<(Packet, Option<SessionId>)>;

/// A connection's topic aliases.
#[derive(Debug, Default)]
struct Aliases {
    /// Set by the client: alias -> topic.
    inbound: BTreeMap<u16, String>,
    /// Set by the broker towards the client: topic -> alias.
    outbound: BTreeMap<String, u16>,
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Session expiry or will delay.
    Session(SessionId),
    /// A connection's keep-alive deadline.
    KeepAlive(ConnId),
    /// A connection's client certificate expires.
    CertExpiry(ConnId),
}

/// Per-connection protocol state.
#[derive(Debug)]
struct Conn {
    session: SessionId,
    /// When CONNECT was accepted.
    connected_at: Instant,
    /// When the last packet came (keep-alive).
    last_seen: Instant,
    /// The keep-alive enforced, in seconds (0: none).
    keep_alive: u16,
    /// When its keep-alive timer fires (removed with the connection: a storm of short
    /// connections leaves no timers behind).
    keep_alive_due: Option<Instant>,
    /// When its client certificate expires (the timer, removed with the connection).
    cert_expiry_due: Option<Instant>,
    protocol: ProtocolVersion,
    info: ClientInfo,
    /// Boxed: most connections have none, and the connection table keeps its entries small.
    will: Option<Box<LastWill>>,
    /// The client's Receive Maximum.
    receive_maximum: u16,
    /// The client's Maximum Packet Size.
    max_packet_size: u32,
    /// Topic aliases both ways (boxed: most clients use none, and every connection pays for
    /// the table's entry).
    aliases: Option<Box<Aliases>>,
    /// The client's Topic Alias Maximum.
    alias_max_out: u16,
    /// The client's Request Problem Information.
    problem_info: bool,
    /// Session expiry given in CONNECT was 0 (DISCONNECT may then not raise it).
    connect_expiry_zero: bool,
    /// PUBACK/PUBREC held back (flow control), in the order they must go out, each with the
    /// congested session it waits for (`None`: it only waits for the ones before it).
    /// Boxed and freed when empty: only a publisher held back by flow control has one.
    #[allow(clippy::box_collection)]
    held_acks: Option<Box<HeldAcks>>,
    /// Retained messages still to send for new subscriptions (boxed: rare).
    retained_walks: Option<Box<RetainedWalks>>,
}

/// Retained messages still to send to one connection, paced by its outbox and queue.
#[derive(Debug, Default)]
struct RetainedWalks {
    walks: VecDeque<RetainedWalk>,
    /// A batch went out and the server was asked to report room (`Output::WantRoom`); the next
    /// batch waits for [`Input::Writable`].
    awaiting_room: bool,
}

/// One subscription's walk over the retained messages matching its filter.
#[derive(Debug)]
struct RetainedWalk {
    filter: String,
    qos: QoS,
    sub_id: Option<u32>,
    /// The last topic visited (the walk resumes after it).
    after: Option<String>,
}

/// The broker: all sessions, subscriptions and retained messages, driven by the server.
///
/// Driven through one boundary: [`Broker::handle`] takes an [`Input`] and the current time,
/// [`Broker::poll_output`] (or [`Broker::drain_outputs_into`]) gives the [`Output`]s in order,
/// [`Broker::poll_timeout`] and [`Broker::handle_timeout`] run the timers.
pub struct Broker {
    config: BrokerConfig,
    authorizer: Box<dyn Authorizer>,
    /// The engine's `$SYS` values, if it has any.
    sys_source: Option<Box<dyn SysSource>>,
    /// Boxed values: the tables stay small (and grow cheaply) with many idle clients. Keyed by
    /// ids the broker counts out itself (no client chooses them), so the fast Fx hash is safe
    /// for this and `conns`; keys from the network (topic levels, client ids) keep SipHash.
    sessions: FxHashMap<SessionId, Box<Session>>,
    /// Ordered: the admin API lists clients by id, a page at a time.
    by_client_id: BTreeMap<String, SessionId>,
    conns: FxHashMap<ConnId, Box<Conn>>,
    subs: SubscriptionTree<SessionId, SubData>,
    retained: RetainedTree<Arc<Message>>,
    /// Topic and payload bytes of the retained messages.
    retained_bytes: usize,
    /// The retained store is full (logged once per change).
    retained_full: bool,
    /// (deadline, what): keep-alive, session expiry and will delay timers, each checked
    /// against the current state when it fires.
    timers: BTreeSet<(Instant, Timer)>,
    /// The ordered output stream.
    outputs: VecDeque<Output>,
    stats: Stats,
    next_session: u64,
    started: Instant,
    next_sys: Option<Instant>,
    /// Seeds assigned client ids ([`BrokerConfig::seed`]): the same inputs give the same ids.
    seed: u64,
    /// Whether [`Output::Accepted`] is produced.
    report_accepted: bool,
    /// Subscriptions per filter, while [`BrokerConfig::report_interest`] is on.
    interest: HashMap<String, usize>,
    /// Reused while routing: (session, qos, retain, subscription id).
    scratch: Vec<(SessionId, QoS, bool, Option<u32>)>,
    /// The routing batch in progress (see [`Broker::begin_batch`]); 0: none.
    batch: u64,
    batches: u64,
    /// Set while routing: a connected session the message was queued for whose queue is at
    /// `flow_control_queued` (the publisher's acknowledgement then waits for it).
    congested: Option<SessionId>,
    /// Whether durable-store ops are produced.
    persist: bool,
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

/// A topic for a log line: at most 64 characters, with its length when cut.
fn short(topic: &str) -> String {
    match topic.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}... ({} bytes)", &topic[..i], topic.len()),
        None => format!("{topic:?}"),
    }
}

fn props_with_reason(reason: &str) -> Properties {
    Properties::from(moat_codec::PropertySet {
        reason_string: Some(reason.to_owned()),
        ..Default::default()
    })
}

impl Broker {
    /// A broker with no sessions, started at `now`.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let seed = config.seed;
        let next_sys = config.sys_interval.map(|_| now);
        Self {
            config,
            authorizer: Box::new(AllowAll),
            sys_source: None,
            sessions: FxHashMap::default(),
            by_client_id: BTreeMap::new(),
            conns: FxHashMap::default(),
            subs: SubscriptionTree::new(),
            retained: RetainedTree::new(),
            retained_bytes: 0,
            retained_full: false,
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
            next_session: 1,
            started: now,
            next_sys,
            seed,
            report_accepted: false,
            interest: HashMap::new(),
            scratch: Vec::new(),
            batch: 0,
            batches: 0,
            congested: None,
            persist: false,
            epoch: (now, 0),
            store_bytes: None,
            next_sweep: Some(now + SWEEP_INTERVAL),
        }
    }

    /// Counts messages dropped for a reason (and in the total).
    fn count_drop(&mut self, why: DropReason, n: u64) {
        self.stats.messages_dropped += n;
        let counter = match why {
            DropReason::QueueFull => &mut self.stats.dropped_queue_full,
            DropReason::TooLarge => &mut self.stats.dropped_too_large,
            DropReason::Expired => &mut self.stats.dropped_expired,
            DropReason::SlowSubscriber => &mut self.stats.dropped_slow_subscriber,
        };
        *counter += n;
    }

    /// Counts QoS 0 messages the server dropped at the outbox of a subscriber that does not
    /// read (they appear in `$SYS/broker/messages/dropped/...` with the core's own drops).
    pub fn count_slow_subscriber_drops(&mut self, n: u64) {
        self.count_drop(DropReason::SlowSubscriber, n);
    }

    /// Replaces the authorizer.
    pub fn set_authorizer(&mut self, authorizer: Box<dyn Authorizer>) {
        self.authorizer = authorizer;
    }

    /// Adds the engine's values to every `$SYS` publication.
    pub fn set_sys_source(&mut self, source: Box<dyn SysSource>) {
        self.sys_source = Some(source);
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

    /// The next output, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Moves every output produced so far into `out`, in order.
    pub fn drain_outputs_into(&mut self, out: &mut Vec<Output>) {
        out.extend(self.outputs.drain(..));
    }

    /// Handles one input at `now`; its outputs are then ready to drain.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Connect {
                conn,
                connect,
                info,
            } => {
                let outcome = self.connect(conn, *connect, info, now);
                self.outputs.push_back(Output::Connected { conn, outcome });
            }
            Input::Packet { conn, packet } => self.handle_packet(conn, packet, now),
            Input::Lost { conn } => self.connection_lost(conn, now),
            Input::Writable { conn } => self.connection_writable(conn, now),
            Input::Admin { id, request } => {
                let reply = self.admin(request, now);
                self.outputs.push_back(Output::Reply { id, reply });
            }
            Input::Remote { message } => self.handle_remote(message, now),
        }
    }

    fn send(&mut self, conn: ConnId, packet: Packet) {
        self.outputs.push_back(Output::Send(conn, packet));
    }

    /// Sends a v5 DISCONNECT (if the client speaks v5) and closes the connection. The will is
    /// published as for a lost connection.
    fn disconnect_with(&mut self, conn_id: ConnId, reason: ReasonCode, text: &str, now: Instant) {
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
        self.outputs.push_back(Output::Close(conn_id));
        self.connection_lost(conn_id, now);
    }

    /// Handles a packet received on a connected connection (any packet keeps it alive).
    fn handle_packet(&mut self, conn_id: ConnId, packet: Packet, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.last_seen = now;
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

    /// The client id of a connection's session (for logs).
    pub fn client_id(&self, conn_id: ConnId) -> Option<&str> {
        let conn = self.conns.get(&conn_id)?;
        self.sessions
            .get(&conn.session)
            .map(|s| s.client_id.as_str())
    }

    /// Closes every connection for shutdown: v5 clients get DISCONNECT 0x8B. Wills are not
    /// published (the server is going away, the clients did nothing wrong).
    pub fn shutdown(&mut self) {
        self.shutdown_with(ReasonCode::SERVER_SHUTTING_DOWN, "");
    }

    /// Closes every connection because the server stops: v5 clients get DISCONNECT `code`
    /// (with `why` as the reason string, if not empty). Wills are not published.
    pub fn shutdown_with(&mut self, code: ReasonCode, why: &str) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn_id in ids {
            if let Some(conn) = self.conns.get(&conn_id) {
                if conn.protocol.is_v5() {
                    self.send(
                        conn_id,
                        Packet::Disconnect(Disconnect {
                            reason_code: code,
                            properties: if why.is_empty() {
                                Properties::default()
                            } else {
                                props_with_reason(why)
                            },
                        }),
                    );
                }
            }
            self.outputs.push_back(Output::Close(conn_id));
        }
    }
}
