//! Flow control: PUBACK/PUBREC held back while a subscriber the message went to is congested,
//! released in order.

use super::*;

impl Broker {
    /// Sends a PUBACK/PUBREC to a publisher, or holds it back behind a congested subscriber
    /// (`blocker`) or behind acknowledgements already held for this connection (they go out in
    /// the order the PUBLISH packets came [MQTT-4.6.0-2], [MQTT-4.6.0-3]).
    pub(super) fn send_ack(&mut self, conn_id: ConnId, ack: Packet, blocker: Option<SessionId>) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if blocker.is_none() && conn.held_acks.is_none() {
            self.send(conn_id, ack);
            return;
        }
        let held = conn.held_acks.as_ref().map_or(0, |h| h.len());
        if held >= usize::from(self.config.receive_maximum).max(1) {
            // A publisher that keeps sending without waiting for its acknowledgements (beyond
            // the Receive Maximum a v5 client is told) cannot make the broker hold them
            // without bound: they go out now, in order. Its messages were queued; what follows
            // meets the subscriber's queue limit (dropped and counted, v5: 0x97).
            self.stats.flow_control_overruns += 1;
            let held = conn.held_acks.take().map(|h| *h).unwrap_or_default();
            for (held_ack, _) in held {
                self.send(conn_id, held_ack);
            }
            self.send(conn_id, ack);
            return;
        }
        conn.held_acks
            .get_or_insert_with(Box::default)
            .push_back((ack, blocker));
        // Registers the connection with the session its first held acknowledgement waits for.
        self.release_acks(conn_id);
    }

    /// Whether acknowledgements held for `sid` must still wait: it is connected and its queue
    /// is above half the flow-control mark.
    pub(super) fn still_congested(&self, sid: SessionId) -> bool {
        self.sessions.get(&sid).is_some_and(|s| {
            s.conn.is_some() && s.queue.len() > self.config.flow_control_queued / 2
        })
    }

    /// Sends a connection's held acknowledgements up to the first that must still wait (and
    /// registers the connection with the session it waits for).
    pub(super) fn release_acks(&mut self, conn_id: ConnId) {
        loop {
            let Some(conn) = self.conns.get(&conn_id) else {
                return;
            };
            let Some((_, blocker)) = conn.held_acks.as_ref().and_then(|h| h.front()) else {
                // All sent: the (empty) queue goes.
                if let Some(c) = self.conns.get_mut(&conn_id) {
                    c.held_acks = None;
                }
                return;
            };
            if let Some(b) = *blocker {
                if self.still_congested(b) {
                    if let Some(session) = self.sessions.get_mut(&b) {
                        if !session.ack_waiters.contains(&conn_id) {
                            session.ack_waiters.push(conn_id);
                        }
                    }
                    return;
                }
            }
            let Some((ack, _)) = self
                .conns
                .get_mut(&conn_id)
                .and_then(|c| c.held_acks.as_mut().and_then(|h| h.pop_front()))
            else {
                return;
            };
            self.send(conn_id, ack);
        }
    }

    /// `sid` is no longer congested (drained, offline or gone): its waiters may go on.
    pub(super) fn wake_ack_waiters(&mut self, sid: SessionId) {
        let waiters = match self.sessions.get_mut(&sid) {
            Some(s) if !s.ack_waiters.is_empty() => std::mem::take(&mut s.ack_waiters),
            _ => return,
        };
        for conn in waiters {
            self.release_acks(conn);
        }
    }
}
