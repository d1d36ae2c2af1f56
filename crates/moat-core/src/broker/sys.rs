//! `$SYS/broker/...` statistics: the core's own, then the engine's ([`SysSource`]).

use super::*;

impl Broker {
    pub(super) fn publish_sys(&mut self, now: Instant) {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let st = self.stats;
        let items: [(&str, String); 22] = [
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
            ("messages/dropped", st.messages_dropped.to_string()),
            (
                "messages/dropped/queue full",
                st.dropped_queue_full.to_string(),
            ),
            (
                "messages/dropped/too large",
                st.dropped_too_large.to_string(),
            ),
            ("messages/dropped/expired", st.dropped_expired.to_string()),
            (
                "messages/dropped/slow subscriber",
                st.dropped_slow_subscriber.to_string(),
            ),
            (
                "publish/refused/topic",
                st.publishes_refused_topic.to_string(),
            ),
            (
                "subscriptions/refused",
                st.subscriptions_refused.to_string(),
            ),
            ("retained messages/dropped", st.retained_dropped.to_string()),
            ("retained messages/bytes", self.retained_bytes.to_string()),
            (
                "flow control/overruns",
                st.flow_control_overruns.to_string(),
            ),
            (
                "clients/refused/no certificate identity",
                st.refused_no_certificate_identity.to_string(),
            ),
            (
                "clients/refused/client id not certificate",
                st.refused_client_id_not_certificate.to_string(),
            ),
            (
                "clients/disconnected/certificate expired",
                st.disconnected_certificate_expired.to_string(),
            ),
            (
                "clients/certificate expired/warned",
                st.certificate_expired_warned.to_string(),
            ),
            ("subscriptions/count", self.subs.len().to_string()),
            ("retained messages/count", self.retained.len().to_string()),
        ];
        let store = self.store_bytes.map(|b| ("store/bytes", b.to_string()));
        for (name, value) in items.into_iter().chain(store) {
            self.publish_sys_value(name, value, now);
        }
        // The engine's values (the server's metrics) go out with the core's.
        let mut extra = Vec::new();
        if let Some(source) = &self.sys_source {
            source.sys_values(&mut extra);
        }
        for (name, value) in extra {
            self.publish_sys_value(&name, value, now);
        }
    }

    /// Publishes `$SYS/broker/{name}`, retained (in memory only: `$SYS` is never stored).
    fn publish_sys_value(&mut self, name: &str, value: String, now: Instant) {
        let message = Arc::new(Message {
            topic: format!("$SYS/broker/{name}"),
            payload: Bytes::from(value),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
        });
        self.retained_put(Arc::clone(&message));
        self.route(&message, now);
    }
}
