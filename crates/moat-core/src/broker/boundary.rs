//! The core's one boundary: everything goes in as an [`Input`] and comes out of one ordered
//! stream of [`Output`]s.
//!
//! The engine that drives the core (the server's router) hands each input to
//! [`Broker::handle`], then drains the outputs in order. One rule ties outputs together, and
//! the engine enforces it in one place: an output that follows an [`Output::Persist`] is acted
//! on only once that op is durable. The core emits a QoS 1/2 acknowledgement after the ops it
//! depends on (the message queued for a persistent session, the QoS 2 packet id recorded), so
//! nothing is acknowledged before it is kept.
//!
//! Time comes in only as `now`; [`Broker::poll_timeout`] says when the core next wants
//! [`Broker::handle_timeout`].

use std::net::SocketAddr;
use std::sync::Arc;

use moat_codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};

use super::{ConnId, ConnectOutcome, Stats};
use crate::message::Message;
use crate::store::StoreOp;

/// Something for the core to handle.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // packets are moved once, from the connection
pub enum Input {
    /// A client sent CONNECT (authentication already done by the server). The answer is an
    /// [`Output::Connected`] for `conn`, after the CONNACK.
    Connect {
        /// The new connection.
        conn: ConnId,
        /// The CONNECT packet.
        connect: Box<Connect>,
        /// What the server knows about the connection.
        info: ClientInfo,
    },
    /// A packet from a connected client.
    Packet {
        /// The connection.
        conn: ConnId,
        /// The packet.
        packet: Packet,
    },
    /// The connection ended without the core closing it (socket closed, I/O error,
    /// malformed packet): the will is published unless DISCONNECT 0x00 came first.
    Lost {
        /// The connection.
        conn: ConnId,
    },
    /// The connection's outbox has room again, after [`Output::WantRoom`].
    Writable {
        /// The connection.
        conn: ConnId,
    },
    /// A request from the operator (admin API, console, tools); answered by an
    /// [`Output::Reply`] with the same id.
    Admin {
        /// Chosen by the caller, echoed in the reply.
        id: RequestId,
        /// What is asked.
        request: AdminRequest,
    },
    /// A message published elsewhere (another node of a cluster): retained if it says so and
    /// delivered to the local subscriptions that match, as a client's PUBLISH would be.
    Remote {
        /// The message (its `origin` is ignored).
        message: Arc<Message>,
    },
}

/// What the core asks of the engine, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // packets are moved once, into an outbox
pub enum Output {
    /// Send this packet on this connection.
    Send(ConnId, Packet),
    /// Close this connection once what was sent before is flushed.
    Close(ConnId),
    /// Report with [`Input::Writable`] when this connection's outbox is at most half full:
    /// more retained messages wait for it.
    WantRoom(ConnId),
    /// Make this op durable before acting on any later output.
    Persist(StoreOp),
    /// The answer to [`Input::Connect`] (after the CONNACK in this stream).
    Connected {
        /// The connection.
        conn: ConnId,
        /// Accepted or not, the client id and the keep-alive.
        outcome: ConnectOutcome,
    },
    /// A message the broker accepted from a client (only while accepted messages are reported:
    /// [`AdminRequest::ReportAccepted`]). Consumers that must see every message (forwarders)
    /// read these.
    Accepted(Arc<AcceptedMessage>),
    /// The first subscription to a filter appeared, or the last went away (only while interest
    /// is reported: [`crate::BrokerConfig::report_interest`]). A cluster subscribes to other
    /// nodes' messages by this.
    Interest {
        /// The filter (without a `$share/group/` prefix).
        filter: String,
        /// True: now subscribed; false: no longer.
        subscribed: bool,
    },
    /// The answer to an [`Input::Admin`] request.
    Reply {
        /// The request's id.
        id: RequestId,
        /// The answer.
        reply: AdminReply,
    },
}

/// Identifies an admin request and its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// What the server knows about a connection when it hands CONNECT to the broker.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The listener's name (shared by its connections).
    pub listener: Arc<str>,
    /// The peer's address, if known.
    pub peer: Option<SocketAddr>,
    /// The authenticated user name (from CONNECT or a certificate identity), if any.
    pub username: Option<String>,
    /// The TLS session and client certificate, for TLS connections (shared, never copied).
    pub tls: Option<Arc<TlsInfo>>,
    /// What happens when the client certificate (`tls.not_after`) expires while the client is
    /// connected (the listener's `on_client_cert_expiry`).
    pub on_cert_expiry: CertExpiryAction,
    /// Where the client id comes from (the listener's `client_id`).
    pub client_id_from: ClientIdSource,
}

/// What the core does when a connected client's certificate expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CertExpiryAction {
    /// Close the connection at that instant: v5 clients get DISCONNECT 0x87 (Not authorized,
    /// with the reason string "client certificate expired"). 0x87 rather than 0x98
    /// (Administrative action): nobody acted, the credential the client was admitted with is
    /// no longer valid, which is what a CONNECT with that certificate would now be told.
    /// The will is published, as for any connection the server closes.
    #[default]
    Disconnect,
    /// Keep the connection, and log a warning once.
    Warn,
}

/// Where a connection's client id comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIdSource {
    /// As the client sent it in CONNECT.
    #[default]
    Client,
    /// The verified client certificate's identity ([`TlsInfo::identity`]), so one device
    /// cannot take over another's session. A connection without one is refused (CONNACK 0x87
    /// Not authorized, v3 5). CONNECT may carry an empty client id or the identity itself
    /// (an empty one is answered in v5 with Assigned Client Identifier). A *different* client
    /// id is refused (CONNACK 0x85 Client Identifier not valid, v3 2) rather than replaced: a
    /// device that asks for another's id is misconfigured or hostile, and quietly giving it
    /// its own session would hide that (and a v3 client could not even be told).
    Certificate,
}

/// A TLS connection's facts, as the admin API shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// The client certificate's identity (the name that became the username), if any.
    pub identity: Option<String>,
    /// The client certificate's subject, if one was presented.
    pub subject: Option<String>,
    /// Its SHA-256 fingerprint (hex), if one was presented.
    pub fingerprint: Option<String>,
    /// Its serial number (hex bytes with colons, as `openssl x509 -serial` groups them), if
    /// one was presented.
    pub serial: Option<String>,
    /// When it expires (Unix seconds), if one was presented.
    pub not_after: Option<i64>,
    /// The subject of the listener's client CA the certificate chains to.
    pub ca_subject: Option<String>,
    /// That CA's SHA-256 fingerprint.
    pub ca_fingerprint: Option<String>,
}

/// A message the broker accepted, with who published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedMessage {
    /// The message (topic, payload, QoS, retain, v5 properties).
    pub message: Arc<Message>,
    /// The publisher's client id.
    pub client_id: String,
    /// The publisher's user name, if any.
    pub username: Option<String>,
    /// The publisher's certificate identity, if any.
    pub cert_identity: Option<String>,
    /// The publisher's listener.
    pub listener: Arc<str>,
    /// The publisher's connection (its acknowledgement follows this output: an engine that
    /// must hold it, a full forwarding spool, knows whose it is).
    pub conn: ConnId,
}

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminRequest {
    /// Connected clients, sorted by client id, a page at a time.
    Clients(ClientQuery),
    /// One session (connected or not) in detail.
    Client {
        /// Its client id.
        client_id: String,
    },
    /// Disconnects a client (v5: DISCONNECT with `reason`); its will is published.
    Disconnect {
        /// Its client id.
        client_id: String,
        /// The reason code a v5 client is sent (0x98 administrative action, say).
        reason: ReasonCode,
    },
    /// Retained messages whose topic starts with `prefix`, sorted, a page at a time.
    Retained {
        /// Topic prefix ("" for all).
        prefix: String,
        /// The last topic of the previous page.
        after: Option<String>,
        /// Entries at most.
        limit: usize,
    },
    /// Deletes the retained message on `topic`.
    DeleteRetained {
        /// The topic.
        topic: String,
    },
    /// Counters and sizes.
    Stats,
    /// Turns [`Output::Accepted`] on or off.
    ReportAccepted(bool),
}

/// Which connected clients [`AdminRequest::Clients`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientQuery {
    /// Client ids starting with this.
    pub client_id_prefix: String,
    /// Only this user name.
    pub username: Option<String>,
    /// Only this listener.
    pub listener: Option<String>,
    /// Only this certificate identity.
    pub cert_identity: Option<String>,
    /// Only clients whose address starts with this (e.g. "127.0.0.1" or "[::1]").
    pub address_prefix: Option<String>,
    /// The last client id of the previous page.
    pub after: Option<String>,
    /// Entries at most (at least 1 is returned if any match).
    pub limit: usize,
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminReply {
    /// Connected clients, sorted by client id; `more` if the page is full.
    Clients {
        /// This page.
        clients: Vec<ClientSummary>,
        /// More may match after the last one.
        more: bool,
        /// Set when the scan budget ([`MAX_CLIENT_SCAN`](crate::MAX_CLIENT_SCAN) sessions)
        /// ran out before the page was full: continue with `after` = this client id.
        resume_after: Option<String>,
    },
    /// One session, or `None` if there is none with that client id.
    Client(Option<Box<ClientDetail>>),
    /// Whether a connected client with that id was disconnected.
    Disconnected(bool),
    /// Retained messages, sorted by topic; `more` if the page is full.
    Retained {
        /// This page.
        messages: Vec<RetainedEntry>,
        /// More match after the last one.
        more: bool,
    },
    /// Whether a retained message was deleted.
    RetainedDeleted(bool),
    /// Counters and sizes.
    Stats(Box<StatsSnapshot>),
    /// Done (for requests with nothing to say).
    Done,
}

/// A connected client, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// Its client id.
    pub client_id: String,
    /// Its user name, if any.
    pub username: Option<String>,
    /// Its listener.
    pub listener: String,
    /// Its address.
    pub peer: Option<SocketAddr>,
    /// Its MQTT version.
    pub protocol: ProtocolVersion,
    /// When it connected (Unix milliseconds).
    pub connected_since_ms: u64,
    /// Its keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// Its subscriptions.
    pub subscriptions: usize,
    /// Messages waiting in its session queue.
    pub queued: usize,
    /// Messages sent and not yet acknowledged.
    pub inflight: usize,
    /// TLS facts, for TLS connections.
    pub tls: Option<Arc<TlsInfo>>,
}

/// One session in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDetail {
    /// The connection, if the client is connected.
    pub connected: Option<ClientSummary>,
    /// Its client id.
    pub client_id: String,
    /// Its subscriptions: (filter, granted QoS).
    pub subscriptions: Vec<(String, QoS)>,
    /// Messages waiting in its queue.
    pub queued: usize,
    /// Whether the session is kept in the durable store.
    pub persistent: bool,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry_interval: u32,
}

/// A retained message, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedEntry {
    /// The message.
    pub message: Arc<Message>,
}

/// Counters and sizes at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The counters.
    pub stats: Stats,
    /// Sessions (connected or not).
    pub sessions: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Their topic and payload bytes.
    pub retained_bytes: usize,
    /// Messages queued over all sessions.
    pub queued: usize,
    /// Bytes of the durable store, if there is one.
    pub store_bytes: Option<u64>,
}

impl Output {
    /// The connection this output is for, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Self::Send(c, _) | Self::Close(c) | Self::WantRoom(c) => Some(*c),
            Self::Connected { conn, .. } => Some(*conn),
            _ => None,
        }
    }
}
