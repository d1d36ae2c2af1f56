//! Limits and protocol settings of the broker core. Every limit is on by default; none of them
//! uses 0 to mean "unlimited".

use std::time::Duration;

/// The highest `max_topic_levels` a broker uses (a larger setting is lowered to this).
pub const MAX_TOPIC_LEVELS_CAP: usize = 1024;

/// Settings of [`crate::Broker`]. `Default` gives the documented defaults, pinned by a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Largest packet accepted from clients, in bytes (announced to v5 clients in CONNACK).
    pub max_packet_size: u32,
    /// How many QoS 2 PUBLISH packets a client may have unacknowledged at once (v5 Receive
    /// Maximum announced in CONNACK; exceeding it closes the connection with 0x93).
    pub receive_maximum: u16,
    /// How many QoS 1/2 messages the broker sends to one client before waiting for acks; the
    /// client's own Receive Maximum lowers this further.
    pub max_inflight: u16,
    /// How many QoS 1/2 messages wait per session (offline, or behind a full in-flight window).
    /// On overflow the new message is dropped for that session and counted in
    /// `$SYS/broker/messages/dropped`; a v5 publisher gets 0x97 (quota exceeded) in its
    /// PUBACK/PUBREC, a v3 publisher cannot be told.
    pub max_queued_messages: usize,
    /// Payload and topic bytes that wait per session at most; overflow as for
    /// `max_queued_messages`.
    pub max_queued_bytes: usize,
    /// Flow control: once a connected subscriber has this many messages queued, the
    /// PUBACK/PUBREC for each new QoS 1/2 message routed to it is held back until its queue is
    /// down to half. Publishers then wait within their own in-flight window instead of the
    /// broker dropping acknowledged messages; every connection is still read (acknowledgements,
    /// pings), so two clients publishing to each other cannot deadlock. Offline sessions are
    /// not waited for (they fill up to `max_queued_messages`).
    pub flow_control_queued: usize,
    /// The highest topic alias clients may use (v5 Topic Alias Maximum in CONNACK).
    pub topic_alias_maximum: u16,
    /// The longest keep-alive the broker accepts, in seconds. v5 clients asking for more are
    /// told to use this (Server Keep Alive in CONNACK), so a dead connection is found within
    /// 1.5 times this. v3 clients cannot be told and keep their own value; 0 (no keep-alive)
    /// is left alone.
    pub max_keep_alive: u16,
    /// The longest session expiry interval granted, in seconds (`u32::MAX` never expires).
    pub max_session_expiry: u32,
    /// Retained messages kept at most; a new retained topic beyond this is not stored
    /// (counted in `$SYS/broker/retained messages/dropped`; a v5 publisher gets 0x97).
    pub max_retained_messages: usize,
    /// Topic and payload bytes of all retained messages at most; beyond it as for
    /// `max_retained_messages`.
    pub max_retained_bytes: usize,
    /// Levels of a topic name or filter at most (`a/b/c` has 3). A SUBSCRIBE or UNSUBSCRIBE
    /// filter beyond it gets 0x8F (v3: 0x80 / no effect), a PUBLISH 0x90 (v3 and QoS 0:
    /// dropped and counted), a will CONNACK 0x90. Capped at [`MAX_TOPIC_LEVELS_CAP`]: the
    /// subscription tree is matched level by level.
    pub max_topic_levels: usize,
    /// Bytes of a topic name or filter at most; beyond it as for `max_topic_levels`.
    pub max_topic_length: usize,
    /// Subscriptions one session may hold at most; a SUBSCRIBE beyond it gets 0x97 (v3: 0x80)
    /// for each filter that would be new.
    pub max_subscriptions_per_client: usize,
    /// Retained messages sent to a new subscription at once: the next batch follows when the
    /// server reports room in the connection's outbox (and the session's queue is below this),
    /// so a `#` over 100,000 retained messages is paced by the subscriber, never dropped.
    pub retained_batch: usize,
    /// Longest client identifier accepted, in bytes.
    pub max_client_id_len: usize,
    /// Highest QoS granted (2 means all).
    pub max_qos: u8,
    /// How often `$SYS/broker/...` statistics are published; `None` turns them off.
    pub sys_interval: Option<Duration>,
    /// Seeds what the broker would otherwise pick at random (assigned client ids): the same
    /// inputs with the same seed give the same outputs. The server passes a random one.
    pub seed: u64,
    /// Produce [`crate::Output::Interest`] when a filter gets its first subscription or loses
    /// its last (a cluster follows other nodes' messages by it). Off for a single node.
    pub report_interest: bool,
}

impl BrokerConfig {
    /// The topic limits in force (`max_topic_levels` capped at [`MAX_TOPIC_LEVELS_CAP`]).
    pub fn topic_limits(&self) -> crate::topic::TopicLimits {
        crate::topic::TopicLimits {
            max_levels: self.max_topic_levels.clamp(1, MAX_TOPIC_LEVELS_CAP),
            max_len: self.max_topic_length.max(1),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 256,
            max_queued_messages: 100_000,
            max_queued_bytes: 256 * 1024 * 1024,
            flow_control_queued: 1000,
            topic_alias_maximum: 64,
            max_keep_alive: 60,
            max_session_expiry: u32::MAX,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_topic_levels: 128,
            max_topic_length: 4096,
            max_subscriptions_per_client: 1000,
            retained_batch: 500,
            max_client_id_len: 256,
            max_qos: 2,
            sys_interval: Some(Duration::from_secs(10)),
            seed: 0,
            report_interest: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the documented defaults (README and DESIGN.md repeat them).
    #[test]
    fn documented_defaults() {
        let c = BrokerConfig::default();
        assert_eq!(c.max_packet_size, 1_048_576);
        assert_eq!(c.receive_maximum, 1024);
        assert_eq!(c.max_inflight, 256);
        assert_eq!(c.max_queued_messages, 100_000);
        assert_eq!(c.max_queued_bytes, 268_435_456);
        assert_eq!(c.flow_control_queued, 1000);
        assert_eq!(c.topic_alias_maximum, 64);
        assert_eq!(c.max_keep_alive, 60);
        assert_eq!(c.max_session_expiry, u32::MAX);
        assert_eq!(c.max_retained_messages, 100_000);
        assert_eq!(c.max_retained_bytes, 268_435_456);
        assert_eq!(c.max_topic_levels, 128);
        assert_eq!(c.max_topic_length, 4096);
        assert_eq!(c.max_subscriptions_per_client, 1000);
        assert_eq!(c.retained_batch, 500);
        assert_eq!(c.max_client_id_len, 256);
        assert_eq!(c.max_qos, 2);
        assert_eq!(c.sys_interval, Some(Duration::from_secs(10)));
    }
}
