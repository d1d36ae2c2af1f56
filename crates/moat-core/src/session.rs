//! Session state: what survives a reconnect of a persistent session.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use moat_codec::{LastWill, PacketId, SubscriptionOptions};

use crate::message::Delivery;
use crate::topic::Filter;
use crate::ConnId;

/// The data stored with each subscription in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubData {
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// QoS 1 sent, waiting for PUBACK.
    Unacked,
    /// QoS 2 sent, waiting for PUBREC.
    Unreceived,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub(crate) delivery: Delivery,
    pub(crate) state: OutState,
    /// Send order, for resending in order after a reconnect.
    pub(crate) seq: u64,
}

/// A will waiting for its delay (or the end of the session) to pass.
#[derive(Debug, Clone)]
pub(crate) struct PendingWill {
    pub(crate) at: Instant,
    pub(crate) will: LastWill,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: String,
    pub(crate) conn: Option<ConnId>,
    /// Raw filter string (as subscribed, `$share/...` included) -> parsed filter and data.
    /// Ordered maps and sets here and below: half the size of a hash map when empty (most
    /// sessions), no hashing of client-chosen keys, and few entries per session.
    pub(crate) subscriptions: BTreeMap<String, (Filter, SubData)>,
    /// Session expiry interval in seconds; `u32::MAX` never expires.
    pub(crate) expiry_interval: u32,
    /// Set while disconnected: when the session ends.
    pub(crate) expires_at: Option<Instant>,
    /// Boxed: most sessions have none, and the session table keeps its entries small.
    pub(crate) pending_will: Option<Box<PendingWill>>,
    /// Outgoing QoS 1/2 messages awaiting acknowledgement, by packet id.
    pub(crate) inflight: BTreeMap<u16, Inflight>,
    /// Outgoing QoS 1/2 messages not yet sent.
    pub(crate) queue: VecDeque<Delivery>,
    /// Payload and topic bytes in `queue`.
    pub(crate) queued_bytes: usize,
    pub(crate) next_packet_id: PacketId,
    pub(crate) next_seq: u64,
    /// Incoming QoS 2 packet ids received (PUBREC sent) and not yet released.
    pub(crate) incoming_qos2: BTreeSet<u16>,
    /// Whether the durable store holds this session.
    pub(crate) persisted: bool,
    /// The next store key for an outgoing message.
    pub(crate) next_store_seq: u64,
    /// Publishers whose acknowledgements wait for this session's queue to shrink.
    pub(crate) ack_waiters: Vec<ConnId>,
}

impl Session {
    pub(crate) fn new(client_id: String) -> Self {
        Self {
            client_id,
            conn: None,
            subscriptions: BTreeMap::new(),
            expiry_interval: 0,
            expires_at: None,
            pending_will: None,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            next_packet_id: PacketId::MIN,
            next_seq: 0,
            incoming_qos2: BTreeSet::new(),
            persisted: false,
            next_store_seq: 1,
            ack_waiters: Vec::new(),
        }
    }

    /// A packet id not in flight. `None` if all 65,535 are in use.
    pub(crate) fn allocate_packet_id(&mut self) -> Option<PacketId> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = id.next();
            if !self.inflight.contains_key(&id.get()) {
                return Some(id);
            }
        }
    }

    /// Takes the oldest queued message.
    pub(crate) fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        let size = d.message.payload.len() + d.message.topic.len();
        self.queued_bytes = self.queued_bytes.saturating_sub(size);
        Some(d)
    }

    /// Puts a message back at the head of the queue.
    pub(crate) fn push_queued_front(&mut self, d: Delivery) {
        self.queued_bytes += d.message.payload.len() + d.message.topic.len();
        self.queue.push_front(d);
    }

    /// In-flight packet ids in the order they were first sent.
    pub(crate) fn inflight_in_order(&self) -> Vec<u16> {
        let mut ids: Vec<(u64, u16)> = self.inflight.iter().map(|(id, f)| (f.seq, *id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }
}
