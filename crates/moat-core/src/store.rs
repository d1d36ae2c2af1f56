//! What the broker asks a durable store to remember, and what it gets back at start-up.
//!
//! The core stays free of I/O: it emits [`StoreOp`]s beside its [`crate::Action`]s (only for
//! persistent sessions and retained messages: QoS 0, clean sessions and in-memory-only state
//! cost nothing). The server writes a batch of ops to a [`Store`] and releases the batch's
//! acknowledgements (PUBACK, PUBREC) only once the store says they are durable. At start-up
//! the store's [`Snapshot`] is loaded back with [`crate::Broker::restore`].
//!
//! Times are wall-clock Unix milliseconds here (a restart invalidates `Instant`s); the server
//! converts.

use bytes::Bytes;
use moat_codec::{LastWill, Properties, QoS, SubscriptionOptions};

/// A message as stored: everything needed to deliver it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// The QoS it is delivered with (to this session) or was published with (retained).
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    /// Forwarded properties (payload format, content type, response topic, correlation data,
    /// user properties).
    pub properties: Properties,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: Option<u64>,
    /// Subscription identifiers to send with it.
    pub subscription_ids: Vec<u32>,
}

/// Where a stored outgoing message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredState {
    /// Queued, not sent yet (or sent with no packet id recorded).
    Queued,
    /// Sent with this packet id, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(u16),
    /// PUBREL sent with this packet id, waiting for PUBCOMP.
    Released(u16),
}

/// One change to durable state. Ops in a batch apply in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// A persistent session exists (created or resumed) with this expiry interval (seconds,
    /// `u32::MAX` never).
    SessionUpsert {
        /// Client identifier.
        client_id: String,
        /// Session expiry interval in seconds.
        expiry_interval: u32,
    },
    /// The session went offline at this time (its expiry runs from here).
    SessionOffline {
        /// Client identifier.
        client_id: String,
        /// Unix milliseconds.
        at_ms: u64,
    },
    /// The session ended: remove it and everything under it.
    SessionRemove {
        /// Client identifier.
        client_id: String,
    },
    /// A subscription was added or replaced.
    SubscriptionSet {
        /// Client identifier.
        client_id: String,
        /// The raw filter (`$share/...` included).
        filter: String,
        /// Options.
        options: SubscriptionOptions,
        /// Subscription identifier.
        id: Option<u32>,
    },
    /// A subscription was removed.
    SubscriptionRemove {
        /// Client identifier.
        client_id: String,
        /// The raw filter.
        filter: String,
    },
    /// An outgoing QoS 1/2 message for the session, identified by a per-session sequence
    /// number that orders the queue.
    MessagePut {
        /// Client identifier.
        client_id: String,
        /// Per-session sequence number (increasing).
        seq: u64,
        /// The message.
        message: StoredMessage,
        /// Its state.
        state: StoredState,
    },
    /// An outgoing message changed state.
    MessageState {
        /// Client identifier.
        client_id: String,
        /// Sequence number.
        seq: u64,
        /// New state.
        state: StoredState,
    },
    /// An outgoing message is done (acknowledged, expired or dropped).
    MessageRemove {
        /// Client identifier.
        client_id: String,
        /// Sequence number.
        seq: u64,
    },
    /// An incoming QoS 2 packet id was received (PUBREC sent): a resend must not be
    /// delivered again.
    IncomingQos2Add {
        /// Client identifier.
        client_id: String,
        /// Packet id.
        packet_id: u16,
    },
    /// PUBREL received for this incoming QoS 2 packet id.
    IncomingQos2Remove {
        /// Client identifier.
        client_id: String,
        /// Packet id.
        packet_id: u16,
    },
    /// A will waits for its delay (or the session's end).
    WillSet {
        /// Client identifier.
        client_id: String,
        /// The will.
        will: LastWill,
        /// When it is due, Unix milliseconds.
        at_ms: u64,
    },
    /// The pending will was sent or cancelled.
    WillRemove {
        /// Client identifier.
        client_id: String,
    },
    /// A retained message was set.
    RetainedSet {
        /// The message (its topic is the key).
        message: StoredMessage,
    },
    /// A retained message was cleared.
    RetainedRemove {
        /// Topic.
        topic: String,
    },
    /// A message for a forwarding rule's spool (written before the publisher's
    /// acknowledgement; it leaves only when the rule's sink has it). Keys are unique for the
    /// store's life and increase: the store remembers the next one.
    SpoolPut {
        /// The rule.
        rule: String,
        /// The message key.
        key: u64,
        /// The encoded record.
        record: Bytes,
    },
    /// The rule's sink confirmed these keys: they leave the spool.
    SpoolRemove {
        /// The rule.
        rule: String,
        /// The keys.
        keys: Vec<u64>,
    },
}

/// A stored session, as loaded at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredSession {
    /// Client identifier.
    pub client_id: String,
    /// Session expiry interval in seconds.
    pub expiry_interval: u32,
    /// When it went offline (Unix ms); sessions connected at a crash count as offline from
    /// the restart.
    pub offline_since_ms: Option<u64>,
    /// Subscriptions: (raw filter, options, identifier).
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
    /// Outgoing messages in sequence order: (seq, message, state).
    pub messages: Vec<(u64, StoredMessage, StoredState)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub incoming_qos2: Vec<u16>,
    /// A pending will and when it is due (Unix ms).
    pub will: Option<(LastWill, u64)>,
}

/// Everything a store holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Persistent sessions.
    pub sessions: Vec<StoredSession>,
    /// Retained messages.
    pub retained: Vec<StoredMessage>,
}

/// A durable store.
pub trait Store: Send {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies a batch of ops atomically and makes it durable (per the store's durability
    /// setting) before returning.
    ///
    /// # Errors
    /// The store's error; the batch is then not applied.
    fn apply(&mut self, ops: &[StoreOp]) -> Result<(), Self::Error>;

    /// Loads everything (at start-up).
    ///
    /// # Errors
    /// The store's error (a corrupt store names its file and the way out).
    fn load(&self) -> Result<Snapshot, Self::Error>;
}
