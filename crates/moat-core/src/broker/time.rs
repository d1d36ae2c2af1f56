//! Timers: delayed wills, session expiry, the sweep of expired messages, and when the next is
//! due.

use super::*;

impl Broker {
    /// The next time [`Broker::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|(t, _)| *t);
        [timer, self.next_sys, self.next_sweep]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs what is due at `now`: keep-alive deadlines, client certificate expiry, delayed wills,
    /// session expiry, `$SYS` statistics, the sweep of expired messages.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let sid = match timer {
                Timer::Session(sid) => sid,
                Timer::KeepAlive(conn) => {
                    self.check_keep_alive(conn, now);
                    continue;
                }
                Timer::CertExpiry(conn) => {
                    self.client_cert_expired(conn, now);
                    continue;
                }
            };
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
    pub(super) fn sweep_expired(&mut self, now: Instant) {
        let mut expired_topics = Vec::new();
        self.retained.for_each_match("#", |topic, m| {
            if m.is_expired(now) {
                expired_topics.push(topic.to_owned());
            }
        });
        for topic in expired_topics {
            self.retained_take(&topic);
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
        self.count_drop(DropReason::Expired, removed.len() as u64);
        for (sid, seq) in removed {
            self.forget_stored(sid, seq);
        }
    }

    /// A connection's keep-alive timer fired: closed if nothing came for 1.5 times its
    /// keep-alive [MQTT-3.1.2-22], otherwise the timer is set again from the last packet.
    fn check_keep_alive(&mut self, conn_id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let limit = keep_alive_limit(conn.keep_alive);
        let due = conn.last_seen + limit;
        if due <= now {
            self.disconnect_with(
                conn_id,
                ReasonCode::KEEP_ALIVE_TIMEOUT,
                "nothing received for 1.5 times the keep-alive",
                now,
            );
        } else {
            self.timers.insert((due, Timer::KeepAlive(conn_id)));
            if let Some(c) = self.conns.get_mut(&conn_id) {
                c.keep_alive_due = Some(due);
            }
        }
    }

    /// A connection's client certificate expired: closed (DISCONNECT 0x87 for v5) or warned
    /// about once, by its listener's [`CertExpiryAction`]; counted either way.
    fn client_cert_expired(&mut self, conn_id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.cert_expiry_due = None;
        let action = conn.info.on_cert_expiry;
        let listener = Arc::clone(&conn.info.listener);
        let subject = conn
            .info
            .tls
            .as_ref()
            .and_then(|t| t.subject.clone())
            .unwrap_or_default();
        let client_id = self.client_id(conn_id).unwrap_or_default().to_owned();
        match action {
            CertExpiryAction::Disconnect => {
                self.stats.disconnected_certificate_expired += 1;
                tracing::warn!(
                    %client_id, %listener, %subject,
                    "client certificate expired while connected: disconnected"
                );
                self.disconnect_with(
                    conn_id,
                    ReasonCode::NOT_AUTHORIZED,
                    "client certificate expired",
                    now,
                );
            }
            CertExpiryAction::Warn => {
                self.stats.certificate_expired_warned += 1;
                tracing::warn!(
                    %client_id, %listener, %subject,
                    "client certificate expired while connected (on_client_cert_expiry = warn)"
                );
            }
        }
    }

    /// Removes a closed connection's timers (keep-alive, certificate expiry).
    pub(super) fn cancel_timers(&mut self, conn_id: ConnId, conn: &Conn) {
        if let Some(due) = conn.keep_alive_due {
            self.timers.remove(&(due, Timer::KeepAlive(conn_id)));
        }
        if let Some(due) = conn.cert_expiry_due {
            self.timers.remove(&(due, Timer::CertExpiry(conn_id)));
        }
    }

    /// The instant of a wall-clock time in Unix seconds, by the clock given to
    /// [`Broker::set_clock`] (`now` if it is already past; `None` beyond what an [`Instant`]
    /// can hold).
    pub(super) fn instant_at_unix_secs(&self, secs: i64, now: Instant) -> Option<Instant> {
        let at_ms = u64::try_from(secs).unwrap_or(0).saturating_mul(1000);
        let now_ms = self.unix_ms(now);
        now.checked_add(Duration::from_millis(at_ms.saturating_sub(now_ms)))
    }
}

/// 1.5 times a keep-alive of `secs` seconds.
pub(super) fn keep_alive_limit(secs: u16) -> Duration {
    Duration::from_millis(u64::from(secs) * 1500)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A storm of short connections leaves no keep-alive timers behind.
    #[test]
    fn closed_connections_leave_no_timers() {
        let now = Instant::now();
        let mut b = Broker::new(BrokerConfig::default(), now);
        for i in 0..100 {
            let connect = Connect {
                protocol: ProtocolVersion::V5,
                clean_start: true,
                keep_alive: 60,
                client_id: format!("c{}", i % 10),
                will: None,
                username: None,
                password: None,
                properties: Properties::default(),
            };
            let conn = ConnId(i);
            let info = ClientInfo::default();
            let connect = Box::new(connect);
            b.handle(
                Input::Connect {
                    conn,
                    connect,
                    info,
                },
                now,
            );
            if i % 2 == 0 {
                b.handle(Input::Lost { conn }, now);
            }
        }
        // Odd connections were taken over by the next even one or lost: none is open.
        let live = b.conns.len();
        let timers = b
            .timers
            .iter()
            .filter(|(_, t)| matches!(t, Timer::KeepAlive(_) | Timer::CertExpiry(_)))
            .count();
        assert_eq!(timers, live);
        assert!(live <= 10);
    }
}
