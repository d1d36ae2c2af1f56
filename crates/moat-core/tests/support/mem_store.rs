//! An in-memory durable store for the core's tests: `StoreOp`s applied as moat-store applies
//! them, and the `Snapshot` a restart loads.

use std::collections::{BTreeMap, BTreeSet};

use moat_codec::{LastWill, SubscriptionOptions};
use moat_core::store::{Snapshot, StoreOp, StoredMessage, StoredSession, StoredState};

/// An in-memory durable store: the ops applied as the disk store applies them (rows of a
/// client id without a session row are not loaded).
#[derive(Debug, Default)]
pub(crate) struct MemStore {
    /// Client id -> (expiry interval, offline since).
    sessions: BTreeMap<String, (u32, Option<u64>)>,
    subscriptions: BTreeMap<(String, String), (SubscriptionOptions, Option<u32>)>,
    messages: BTreeMap<(String, u64), (StoredMessage, StoredState)>,
    incoming_qos2: BTreeSet<(String, u16)>,
    wills: BTreeMap<String, (LastWill, u64)>,
    retained: BTreeMap<String, StoredMessage>,
}

impl MemStore {
    /// Applies one op.
    pub(crate) fn apply(&mut self, op: StoreOp) {
        #[allow(unreachable_patterns)] // ops the core may add later are not stored
        match op {
            StoreOp::SessionUpsert {
                client_id,
                expiry_interval,
            } => {
                self.sessions.insert(client_id, (expiry_interval, None));
            }
            StoreOp::SessionOffline { client_id, at_ms } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.1 = Some(at_ms);
                }
            }
            StoreOp::SessionRemove { client_id } => {
                self.sessions.remove(&client_id);
                self.wills.remove(&client_id);
                self.subscriptions.retain(|(c, _), _| *c != client_id);
                self.messages.retain(|(c, _), _| *c != client_id);
                self.incoming_qos2.retain(|(c, _)| *c != client_id);
            }
            StoreOp::SubscriptionSet {
                client_id,
                filter,
                options,
                id,
            } => {
                self.subscriptions
                    .insert((client_id, filter), (options, id));
            }
            StoreOp::SubscriptionRemove { client_id, filter } => {
                self.subscriptions.remove(&(client_id, filter));
            }
            StoreOp::MessagePut {
                client_id,
                seq,
                message,
                state,
            } => {
                self.messages.insert((client_id, seq), (message, state));
            }
            StoreOp::MessageState {
                client_id,
                seq,
                state,
            } => {
                if let Some(m) = self.messages.get_mut(&(client_id, seq)) {
                    m.1 = state;
                }
            }
            StoreOp::MessageRemove { client_id, seq } => {
                self.messages.remove(&(client_id, seq));
            }
            StoreOp::IncomingQos2Add {
                client_id,
                packet_id,
            } => {
                self.incoming_qos2.insert((client_id, packet_id));
            }
            StoreOp::IncomingQos2Remove {
                client_id,
                packet_id,
            } => {
                self.incoming_qos2.remove(&(client_id, packet_id));
            }
            StoreOp::WillSet {
                client_id,
                will,
                at_ms,
            } => {
                self.wills.insert(client_id, (will, at_ms));
            }
            StoreOp::WillRemove { client_id } => {
                self.wills.remove(&client_id);
            }
            StoreOp::RetainedSet { message } => {
                self.retained.insert(message.topic.clone(), message);
            }
            StoreOp::RetainedRemove { topic } => {
                self.retained.remove(&topic);
            }
            _ => {}
        }
    }

    /// What a restart loads.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let sessions = self
            .sessions
            .iter()
            .map(|(id, &(expiry_interval, offline_since_ms))| StoredSession {
                client_id: id.clone(),
                expiry_interval,
                offline_since_ms,
                subscriptions: self
                    .subscriptions
                    .iter()
                    .filter(|((c, _), _)| c == id)
                    .map(|((_, f), (o, i))| (f.clone(), *o, *i))
                    .collect(),
                messages: self
                    .messages
                    .iter()
                    .filter(|((c, _), _)| c == id)
                    .map(|((_, seq), (m, state))| (*seq, m.clone(), *state))
                    .collect(),
                incoming_qos2: self
                    .incoming_qos2
                    .iter()
                    .filter(|(c, _)| c == id)
                    .map(|(_, p)| *p)
                    .collect(),
                will: self.wills.get(id).cloned(),
            })
            .collect();
        Snapshot {
            sessions,
            retained: self.retained.values().cloned().collect(),
        }
    }
}
