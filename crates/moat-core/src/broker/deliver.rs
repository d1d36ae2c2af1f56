//! Delivery to sessions: QoS 0 at once, QoS 1/2 through the session queue and the in-flight
//! window, and the outgoing QoS 1/2 acknowledgement flows.

use super::*;

impl Broker {
    /// Sends a delivery to a session, or queues it. Returns false if the session's queue was
    /// full and a QoS 1/2 message was dropped for it.
    pub(super) fn deliver(&mut self, sid: SessionId, delivery: Delivery, now: Instant) -> bool {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return true;
        };
        let conn_id = session.conn;
        if delivery.qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions.
            // (A message that cannot be sent is counted by build_publish.)
            if let Some(c) = conn_id {
                if let Some(p) = self.build_publish(c, &delivery, None, now) {
                    self.stats.messages_sent += 1;
                    self.send(c, Packet::Publish(p));
                }
            }
            return true;
        }
        let size = delivery.message.payload.len() + delivery.message.topic.len();
        if session.queue.len() >= self.config.max_queued_messages
            || session.queued_bytes + size > self.config.max_queued_bytes
        {
            tracing::debug!(client_id = %session.client_id, "session queue full: message dropped");
            self.count_drop(DropReason::QueueFull, 1);
            return false;
        }
        let mut delivery = delivery;
        if self.persist && session.persisted {
            let seq = session.next_store_seq;
            session.next_store_seq += 1;
            delivery.seq = Some(seq);
            let client_id = session.client_id.clone();
            let message = self.stored_message(&delivery);
            self.op(StoreOp::MessagePut {
                client_id,
                seq,
                message,
                state: StoredState::Queued,
            });
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return true;
        };
        session.queued_bytes += size;
        session.queue.push_back(delivery);
        if conn_id.is_some() {
            self.fill_window(sid, now);
            let mark = self.config.flow_control_queued;
            if mark > 0
                && self.congested.is_none()
                && self
                    .sessions
                    .get(&sid)
                    .is_some_and(|s| s.queue.len() >= mark)
            {
                self.congested = Some(sid);
            }
        }
        true
    }

    /// Sends queued messages while the in-flight window has room; publishers waiting for this
    /// session go on once its queue is down to half the flow-control mark.
    pub(super) fn fill_window(&mut self, sid: SessionId, now: Instant) {
        self.send_queued(sid, now);
        if !self.still_congested(sid) {
            self.wake_ack_waiters(sid);
        }
    }

    pub(super) fn send_queued(&mut self, sid: SessionId, now: Instant) {
        loop {
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            let Some(conn_id) = session.conn else { return };
            let Some(conn) = self.conns.get(&conn_id) else {
                return;
            };
            let window = usize::from(conn.receive_maximum.min(self.config.max_inflight));
            if session.inflight.len() >= window {
                return;
            }
            let Some(delivery) = session.pop_queued() else {
                return;
            };
            let Some(pid) = session.allocate_packet_id() else {
                session.push_queued_front(delivery);
                return;
            };
            match self.build_publish(conn_id, &delivery, Some(pid), now) {
                Some(p) => {
                    let Some(session) = self.sessions.get_mut(&sid) else {
                        return;
                    };
                    let state = if delivery.qos == QoS::ExactlyOnce {
                        OutState::Unreceived
                    } else {
                        OutState::Unacked
                    };
                    let seq = session.next_seq;
                    session.next_seq += 1;
                    let store_seq = delivery.seq;
                    let client_id = store_seq.map(|_| session.client_id.clone());
                    session.inflight.insert(
                        pid.get(),
                        Inflight {
                            delivery,
                            state,
                            seq,
                        },
                    );
                    if let (Some(seq), Some(client_id)) = (store_seq, client_id) {
                        let state = StoredState::Sent(pid.get());
                        self.op(StoreOp::MessageState {
                            client_id,
                            seq,
                            state,
                        });
                    }
                    self.stats.messages_sent += 1;
                    self.send(conn_id, Packet::Publish(p));
                }
                None => self.forget_stored(sid, delivery.seq),
            }
        }
    }

    /// Removes a finished outgoing message from the store.
    pub(super) fn forget_stored(&mut self, sid: SessionId, seq: Option<u64>) {
        let Some(seq) = seq else { return };
        if let Some(client_id) = self.sessions.get(&sid).map(|s| s.client_id.clone()) {
            self.op(StoreOp::MessageRemove { client_id, seq });
        }
    }

    /// The PUBLISH for one delivery on one connection, or `None` if it must be dropped
    /// (expired, or larger than the client's maximum packet size [MQTT-3.1.2-25]).
    pub(super) fn build_publish(
        &mut self,
        conn_id: ConnId,
        d: &Delivery,
        packet_id: Option<PacketId>,
        now: Instant,
    ) -> Option<Publish> {
        let m = &d.message;
        if m.is_expired(now) {
            self.count_drop(DropReason::Expired, 1);
            return None;
        }
        let conn = self.conns.get_mut(&conn_id)?;
        let v5 = conn.protocol.is_v5();
        let mut p = Publish {
            dup: false,
            qos: d.qos,
            retain: d.retain,
            topic: m.topic.clone(),
            packet_id,
            properties: if v5 {
                m.properties.clone()
            } else {
                Properties::default()
            },
            payload: m.payload.clone(),
        };
        if v5 {
            // Only written when there is something to say: a write makes the box that a
            // message without properties does not need.
            let expiry = m.remaining_expiry(now);
            if expiry.is_some() || p.properties.message_expiry_interval.is_some() {
                p.properties.message_expiry_interval = expiry;
            }
            if !d.subscription_ids.is_empty() || !p.properties.subscription_identifiers.is_empty() {
                p.properties
                    .subscription_identifiers
                    .clone_from(&d.subscription_ids);
            }
            if conn.alias_max_out > 0 {
                let out = &mut conn.aliases.get_or_insert_with(Box::default).outbound;
                if let Some(&alias) = out.get(&m.topic) {
                    p.topic = String::new();
                    p.properties.topic_alias = Some(alias);
                } else if out.len() < usize::from(conn.alias_max_out) {
                    let alias = u16::try_from(out.len() + 1).unwrap_or(u16::MAX);
                    out.insert(m.topic.clone(), alias);
                    p.properties.topic_alias = Some(alias);
                }
            }
        }
        // Measured only where it could matter: a client's Maximum Packet Size, properties, or
        // a message near the protocol's 256 MiB (re-encoded for v5 it gains a property length
        // and may pass it: `publish_len` is then 0, "not encodable", and it is dropped here,
        // counted, rather than by the encoder after taking a place in the inflight window).
        let surely_fits = conn.max_packet_size == u32::MAX
            && p.properties.is_empty()
            && p.topic.len() + p.payload.len() <= moat_codec::MAX_REMAINING_LENGTH - 16;
        if !surely_fits {
            let len = moat_codec::publish_len(&p, conn.protocol);
            if len == 0 || len > conn.max_packet_size as usize {
                // An alias set by this packet would never reach the client.
                if !p.topic.is_empty() {
                    if let (Some(alias), Some(aliases)) =
                        (p.properties.topic_alias, conn.aliases.as_mut())
                    {
                        if aliases.outbound.get(&m.topic) == Some(&alias) {
                            aliases.outbound.remove(&m.topic);
                        }
                    }
                }
                self.count_drop(DropReason::TooLarge, 1);
                return None;
            }
        }
        Some(p)
    }

    /// PUBACK (for QoS 1) or PUBCOMP (for QoS 2) ends an outgoing flow in state `expected`.
    pub(super) fn complete_outgoing(
        &mut self,
        conn_id: ConnId,
        a: &PubAck,
        expected: OutState,
        now: Instant,
    ) {
        let Some(sid) = self.conns.get(&conn_id).map(|c| c.session) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let id = a.packet_id.get();
        if session
            .inflight
            .get(&id)
            .is_some_and(|f| f.state == expected)
        {
            let seq = session.inflight.remove(&id).and_then(|f| f.delivery.seq);
            self.forget_stored(sid, seq);
            self.fill_window(sid, now);
            let walks_wait_for_acks = self
                .conns
                .get(&conn_id)
                .and_then(|c| c.retained_walks.as_ref())
                .is_some_and(|w| !w.awaiting_room);
            if walks_wait_for_acks {
                self.step_retained(conn_id, now);
            }
        }
    }

    pub(super) fn handle_pubrec(&mut self, conn_id: ConnId, a: PubAck, now: Instant) {
        let Some(sid) = self.conns.get(&conn_id).map(|c| c.session) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let id = a.packet_id.get();
        match session.inflight.get_mut(&id) {
            Some(f) if f.state == OutState::Unreceived || f.state == OutState::Released => {
                if a.reason_code.is_error() {
                    let seq = session.inflight.remove(&id).and_then(|f| f.delivery.seq);
                    self.forget_stored(sid, seq);
                    self.fill_window(sid, now);
                } else {
                    f.state = OutState::Released;
                    if let Some(seq) = f.delivery.seq {
                        let client_id = session.client_id.clone();
                        let state = StoredState::Released(id);
                        self.op(StoreOp::MessageState {
                            client_id,
                            seq,
                            state,
                        });
                    }
                    self.send(conn_id, Packet::PubRel(PubAck::new(a.packet_id)));
                }
            }
            _ => {
                let mut rel = PubAck::new(a.packet_id);
                rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                self.send(conn_id, Packet::PubRel(rel));
            }
        }
    }

    pub(super) fn handle_pubrel(&mut self, conn_id: ConnId, a: PubAck) {
        let Some(sid) = self.conns.get(&conn_id).map(|c| c.session) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut comp = PubAck::new(a.packet_id);
        if session.incoming_qos2.remove(&a.packet_id.get()) {
            if session.persisted {
                let client_id = session.client_id.clone();
                let packet_id = a.packet_id.get();
                self.op(StoreOp::IncomingQos2Remove {
                    client_id,
                    packet_id,
                });
            }
        } else {
            comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        self.send(conn_id, Packet::PubComp(comp));
    }
}
