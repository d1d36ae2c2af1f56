//! An application message as the broker holds it: shared by every subscriber it goes to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moat_codec::{LastWill, Properties, Publish, QoS};

/// Identifies a session inside one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// A message accepted by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// The properties forwarded to subscribers (no topic alias, no subscription ids, no
    /// expiry: those are per delivery).
    pub properties: Properties,
    /// When it expires (v5 Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The publishing session, for No Local.
    pub origin: Option<SessionId>,
}

impl Message {
    /// A message from a client's PUBLISH (topic already resolved from any alias).
    pub fn from_publish(p: Publish, origin: Option<SessionId>, now: Instant) -> Self {
        let mut properties = p.properties;
        let expires_at = properties.existing_mut().and_then(|set| {
            set.topic_alias = None;
            set.subscription_identifiers.clear();
            set.message_expiry_interval
                .take()
                .map(|s| now + Duration::from_secs(u64::from(s)))
        });
        Self {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
            expires_at,
            origin,
        }
    }

    /// A will message, published at `now`.
    pub fn from_will(w: LastWill, origin: Option<SessionId>, now: Instant) -> Self {
        let mut properties = w.properties;
        properties.will_delay_interval = None;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        Self {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties,
            expires_at,
            origin,
        }
    }

    /// True once the message expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    /// The remaining expiry interval in whole seconds (rounded up), if it has one.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|e| {
            let left = e.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// One message on its way to one session, with the options of the subscriptions that matched.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// The QoS it is delivered with (min of published and granted).
    pub qos: QoS,
    /// The RETAIN flag sent.
    pub retain: bool,
    /// The identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Its key in the durable store, for messages of persistent sessions.
    pub seq: Option<u64>,
}
