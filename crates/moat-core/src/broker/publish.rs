//! Incoming PUBLISH: checks, retained messages, and routing to the matching subscriptions.

use super::*;

/// How many messages in a row one member of a shared subscription takes within one routing
/// batch (see [`Broker::begin_batch`]).
const SHARED_RUN: u32 = 8;

impl Broker {
    /// Starts a routing batch: the messages handled until [`Broker::end_batch`] arrived
    /// together (one wake-up of the engine). Within a batch a shared subscription gives a
    /// member up to a few messages in a row, so that they reach it in one write; across batches
    /// the members still take turns. Outside a batch every message goes to the next member.
    pub fn begin_batch(&mut self) {
        self.batches += 1;
        self.batch = self.batches;
    }

    /// Ends the routing batch [`Broker::begin_batch`] started.
    pub fn end_batch(&mut self) {
        self.batch = 0;
    }
}

impl Broker {
    pub(super) fn handle_publish(&mut self, conn_id: ConnId, mut p: Publish, now: Instant) {
        self.stats.messages_received += 1;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let v5 = conn.protocol.is_v5();
        // Topic alias.
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > self.config.topic_alias_maximum {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    "topic alias out of range [MQTT-3.3.2-9]",
                    now,
                );
            }
            if p.topic.is_empty() {
                match conn.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return self.disconnect_with(
                            conn_id,
                            ReasonCode::PROTOCOL_ERROR,
                            "unknown topic alias",
                            now,
                        )
                    }
                }
            } else {
                let aliases = conn.aliases.get_or_insert_with(Box::default);
                aliases.inbound.insert(alias, p.topic.clone());
            }
        }
        if topic::validate_topic_name(&p.topic).is_err() {
            return self.disconnect_with(
                conn_id,
                ReasonCode::TOPIC_NAME_INVALID,
                "invalid topic name",
                now,
            );
        }
        if p.qos as u8 > self.config.max_qos {
            return self.disconnect_with(
                conn_id,
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS not supported [MQTT-3.2.2-11]",
                now,
            );
        }
        let sid = conn.session;
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };

        // QoS 2 duplicate: acknowledge again, deliver once.
        if let (QoS::ExactlyOnce, Some(pid)) = (p.qos, p.packet_id) {
            if session.incoming_qos2.contains(&pid.get()) {
                self.send_ack(conn_id, Packet::PubRec(PubAck::new(pid)), None);
                return;
            }
            if session.incoming_qos2.len() >= usize::from(self.config.receive_maximum) {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "receive maximum exceeded [MQTT-3.3.4-9]",
                    now,
                );
            }
        }

        let mut reason = ReasonCode::SUCCESS;
        if let Err(e) = self.config.topic_limits().check(&p.topic) {
            // Valid MQTT, but beyond this broker's limits: refused, the connection stays.
            tracing::debug!(client_id = %session.client_id, error = %e, "PUBLISH refused");
            self.stats.publishes_refused_topic += 1;
            reason = ReasonCode::TOPIC_NAME_INVALID;
        }
        let authorized = !p.topic.starts_with("$SYS")
            && self.conns.get(&conn_id).is_some_and(|c| {
                self.authorizer
                    .can_publish(&session.client_id, &c.info, &p.topic)
            });
        if reason.is_error() {
            // Refused for its topic above.
        } else if !authorized {
            reason = ReasonCode::NOT_AUTHORIZED;
        } else if v5
            && p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            reason = ReasonCode::PAYLOAD_FORMAT_INVALID;
        }
        let (qos, pid) = (p.qos, p.packet_id);
        self.congested = None;
        if reason == ReasonCode::SUCCESS {
            let retain = p.retain;
            let message = Arc::new(Message::from_publish(p, Some(sid), now));
            if self.report_accepted {
                let client_id = session.client_id.clone();
                self.report_accepted_message(conn_id, &client_id, &message);
            }
            if retain && !self.store_retained(&message) && v5 {
                reason = ReasonCode::QUOTA_EXCEEDED;
            }
            match self.route(&message, now) {
                _ if reason.is_error() => {}
                Routed::NoSubscribers if v5 => reason = ReasonCode::NO_MATCHING_SUBSCRIBERS,
                // A subscriber's queue is full: the v5 publisher learns that not everyone got
                // it (v3 has no way to say so; the drop is counted either way).
                Routed::QueueFull if v5 => reason = ReasonCode::QUOTA_EXCEEDED,
                _ => {}
            }
        }
        let blocker = self.congested.take();
        let Some(pid) = pid else { return };
        let ack = PubAck {
            packet_id: pid,
            reason_code: reason,
            properties: Properties::default(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_ack(conn_id, Packet::PubAck(ack), blocker),
            QoS::ExactlyOnce => {
                if !reason.is_error() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.incoming_qos2.insert(pid.get());
                        if s.persisted {
                            let client_id = s.client_id.clone();
                            let packet_id = pid.get();
                            self.op(StoreOp::IncomingQos2Add {
                                client_id,
                                packet_id,
                            });
                        }
                    }
                }
                self.send_ack(conn_id, Packet::PubRec(ack), blocker);
            }
        }
    }

    /// Stores a retained message if the limits allow; returns whether it was stored.
    pub(super) fn retained_put(&mut self, message: Arc<Message>) -> bool {
        let size = message.topic.len() + message.payload.len();
        let old = self
            .retained
            .get(&message.topic)
            .map(|m| m.topic.len() + m.payload.len());
        let bytes = self.retained_bytes - old.unwrap_or(0) + size;
        let fits = (old.is_some() || self.retained.len() < self.config.max_retained_messages)
            && bytes <= self.config.max_retained_bytes;
        if !fits {
            self.stats.retained_dropped += 1;
            if !self.retained_full {
                self.retained_full = true;
                tracing::warn!(
                    count = self.retained.len(),
                    bytes = self.retained_bytes,
                    "retained store full (max_retained_messages / max_retained_bytes): new retained messages are not stored"
                );
            }
            return false;
        }
        self.retained_bytes = bytes;
        self.retained.insert(&message.topic.clone(), message);
        true
    }

    /// Removes a retained message.
    pub(super) fn retained_take(&mut self, topic: &str) -> Option<Arc<Message>> {
        let m = self.retained.remove(topic)?;
        self.retained_bytes -= m.topic.len() + m.payload.len();
        if self.retained_full {
            self.retained_full = false;
            tracing::info!("retained store has room again");
        }
        Some(m)
    }

    /// Stores or deletes a retained message; returns false if the limits kept it out.
    pub(super) fn store_retained(&mut self, message: &Arc<Message>) -> bool {
        if message.payload.is_empty() {
            if self.retained_take(&message.topic).is_some() {
                self.op(StoreOp::RetainedRemove {
                    topic: message.topic.clone(),
                });
            }
            true
        } else if self.retained_put(Arc::clone(message)) {
            if self.persist {
                let delivery = Delivery {
                    message: Arc::clone(message),
                    qos: message.qos,
                    retain: true,
                    subscription_ids: Vec::new(),
                    seq: None,
                };
                let stored = self.stored_message(&delivery);
                self.op(StoreOp::RetainedSet { message: stored });
            }
            true
        } else {
            false
        }
    }

    /// Delivers a message to every matching subscription.
    pub(super) fn route(&mut self, message: &Arc<Message>, now: Instant) -> Routed {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let sessions = &self.sessions;
        let origin = message.origin;
        let batch = self.batch;
        self.subs.for_each_match(&message.topic, |m| match m {
            Match::Plain(sid, data) => {
                if data.options.no_local && Some(*sid) == origin {
                    return;
                }
                scratch.push((
                    *sid,
                    data.options.qos,
                    data.options.retain_as_published,
                    data.id,
                ));
            }
            Match::Shared(group) => {
                let n = group.members.len();
                if n == 0 {
                    return;
                }
                // Within one routing batch, the member picked last takes the next few
                // messages too (one write for them instead of one each).
                if batch != 0 && group.run.0 == batch && group.run.1 < SHARED_RUN {
                    let last = (group.next + n - 1) % n;
                    let (sid, data) = &group.members[last];
                    if sessions.get(sid).is_some_and(|s| s.conn.is_some()) {
                        group.run.1 += 1;
                        scratch.push((*sid, data.options.qos, false, data.id));
                        return;
                    }
                }
                group.run = (batch, 1);
                // Round robin, preferring connected members.
                let start = group.next % n;
                let pick = (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| {
                        sessions
                            .get(&group.members[i].0)
                            .is_some_and(|s| s.conn.is_some())
                    })
                    .unwrap_or(start);
                group.next = pick + 1;
                let (sid, data) = &group.members[pick];
                scratch.push((*sid, data.options.qos, false, data.id));
            }
        });
        let matched = !scratch.is_empty();
        let mut overflow = false;
        scratch.sort_unstable_by_key(|e| e.0);
        let mut i = 0;
        while i < scratch.len() {
            let sid = scratch[i].0;
            let mut qos = QoS::AtMostOnce;
            let mut rap = false;
            let mut ids = Vec::new();
            while i < scratch.len() && scratch[i].0 == sid {
                let (_, q, r, id) = scratch[i];
                qos = qos.max(q);
                rap |= r;
                ids.extend(id);
                i += 1;
            }
            let delivery = Delivery {
                message: Arc::clone(message),
                qos: qos.min(message.qos),
                retain: rap && message.retain,
                subscription_ids: ids,
                seq: None,
            };
            if !self.deliver(sid, delivery, now) {
                overflow = true;
            }
        }
        self.scratch = scratch;
        match (matched, overflow) {
            (false, _) => Routed::NoSubscribers,
            (true, true) => Routed::QueueFull,
            (true, false) => Routed::Delivered,
        }
    }

    /// [`Output::Accepted`] for a message a client published, with who published it.
    fn report_accepted_message(&mut self, conn_id: ConnId, client_id: &str, m: &Arc<Message>) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let accepted = AcceptedMessage {
            message: Arc::clone(m),
            client_id: client_id.to_owned(),
            username: conn.info.username.clone(),
            cert_identity: conn.info.tls.as_ref().and_then(|t| t.identity.clone()),
            listener: Arc::clone(&conn.info.listener),
            conn: conn_id,
        };
        self.outputs.push_back(Output::Accepted(Arc::new(accepted)));
    }
}
