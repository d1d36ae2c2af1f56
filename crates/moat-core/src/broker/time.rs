//! Timers: delayed wills, session expiry, the sweep of expired messages, and when the next is
//! due.

use super::*;

impl Broker {
    /// The next time [`Broker::tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.first().map(|(t, _)| *t);
        [timer, self.next_sys, self.next_sweep]
            .into_iter()
            .flatten()
            .min()
    }

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
}
