//! CONNECT, session takeover and resumption, DISCONNECT, lost connections, wills and the end
//! of sessions.

use super::*;

impl Broker {
    /// Handles CONNECT on a new connection (authentication has already been done by the
    /// server). Queues CONNACK, and on success any queued or in-flight messages.
    pub(super) fn connect(
        &mut self,
        conn_id: ConnId,
        connect: Connect,
        info: ClientInfo,
        now: Instant,
    ) -> ConnectOutcome {
        let v5 = connect.protocol.is_v5();
        let protocol = connect.protocol;
        let client_max = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        let refuse = |this: &mut Self, code: ReasonCode, why: &str| {
            let properties = if v5 {
                props_with_reason(why)
            } else {
                Properties::default()
            };
            let connack = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties,
            });
            this.send(conn_id, fit_reason(connack, protocol, client_max));
            this.outputs.push_back(Output::Close(conn_id));
            ConnectOutcome {
                accepted: false,
                client_id: String::new(),
                keep_alive: 0,
            }
        };

        // Enhanced authentication: no method is supported yet [MQTT-4.12.0-1].
        if let Some(method) = &connect.properties.authentication_method {
            let why = format!("authentication method {method:?} is not supported");
            return refuse(self, ReasonCode::BAD_AUTHENTICATION_METHOD, &why);
        }

        // On a `client_id = "certificate"` listener the certificate identity is the client id.
        let mut cert_client_id = None;
        if info.client_id_from == ClientIdSource::Certificate {
            let identity = info.tls.as_ref().and_then(|t| t.identity.clone());
            match identity {
                None => {
                    self.stats.refused_no_certificate_identity += 1;
                    tracing::debug!(
                        listener = %info.listener,
                        "CONNECT refused: no certificate identity for the client id"
                    );
                    return refuse(
                        self,
                        ReasonCode::NOT_AUTHORIZED,
                        "this listener takes the client id from a client certificate",
                    );
                }
                Some(id) if !connect.client_id.is_empty() && connect.client_id != id => {
                    self.stats.refused_client_id_not_certificate += 1;
                    tracing::info!(
                        listener = %info.listener,
                        identity = %id,
                        client_id = %short(&connect.client_id),
                        "CONNECT refused: client id is not the certificate identity"
                    );
                    return refuse(
                        self,
                        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                        "the client id must be empty or the certificate identity",
                    );
                }
                Some(id) => cert_client_id = Some(id),
            }
        }

        // Client identifier.
        let mut assigned = None;
        let client_id = if let Some(id) = cert_client_id {
            // Told in v5 when the client did not send it.
            if connect.client_id.is_empty() {
                assigned = Some(id.clone());
            }
            id
        } else if connect.client_id.is_empty() {
            let allowed = match connect.protocol {
                ProtocolVersion::V3_1 => false,
                ProtocolVersion::V3_1_1 => connect.clean_start,
                ProtocolVersion::V5 => true,
            };
            if !allowed {
                return refuse(
                    self,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    "an empty client id needs clean session [MQTT-3.1.3-8]",
                );
            }
            // From the seed and a counter: the same inputs give the same id.
            let mut h = std::hash::DefaultHasher::new();
            (self.seed, self.next_session).hash(&mut h);
            let id = format!("moat-{:016x}", h.finish());
            assigned = Some(id.clone());
            id
        } else {
            connect.client_id.clone()
        };
        if client_id.len() > self.config.max_client_id_len {
            return refuse(
                self,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "client id too long",
            );
        }
        if let Some(w) = &connect.will {
            if topic::validate_topic_name(&w.topic).is_err() {
                return refuse(self, ReasonCode::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if let Err(e) = self.config.topic_limits().check(&w.topic) {
                return refuse(
                    self,
                    ReasonCode::TOPIC_NAME_INVALID,
                    &format!("will topic: {e}"),
                );
            }
            if w.qos as u8 > self.config.max_qos {
                return refuse(
                    self,
                    ReasonCode::QOS_NOT_SUPPORTED,
                    "will QoS not supported",
                );
            }
            if !self.authorizer.can_publish(&client_id, &info, &w.topic) {
                return refuse(
                    self,
                    ReasonCode::NOT_AUTHORIZED,
                    "will topic not authorized",
                );
            }
        }

        // Session expiry.
        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(self.config.max_session_expiry);

        // Take over an existing connection with the same client id.
        let existing = self.by_client_id.get(&client_id).copied();
        if let Some(sid) = existing {
            let old_conn = self.sessions.get(&sid).and_then(|s| s.conn);
            if let Some(old) = old_conn {
                self.take_over(old, !connect.clean_start, now);
            }
        }

        // Clean start ends the old session; otherwise resume it.
        let mut session_present = false;
        let sid = match self.by_client_id.get(&client_id).copied() {
            Some(sid) if !connect.clean_start => {
                session_present = true;
                sid
            }
            Some(sid) => {
                self.end_session(sid, now);
                self.new_session(&client_id)
            }
            None => self.new_session(&client_id),
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return refuse(self, ReasonCode::UNSPECIFIED_ERROR, "session lost");
        };
        session.conn = Some(conn_id);
        session.expiry_interval = expiry;
        session.expires_at = None;
        // A will waiting for its delay is not sent when the session is resumed [MQTT-3.1.3-9].
        let had_will = session.pending_will.take().is_some();
        let was_persisted = session.persisted;
        session.persisted = self.persist && expiry > 0;
        let now_persisted = session.persisted;
        if now_persisted {
            self.op(StoreOp::SessionUpsert {
                client_id: client_id.clone(),
                expiry_interval: expiry,
            });
            if !was_persisted {
                // A resumed session the store did not hold (its expiry was 0).
                self.store_session_state(sid);
            }
            if had_will {
                self.op(StoreOp::WillRemove {
                    client_id: client_id.clone(),
                });
            }
        } else if was_persisted {
            self.op(StoreOp::SessionRemove {
                client_id: client_id.clone(),
            });
        }

        // Keep alive.
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if keep_alive > self.config.max_keep_alive {
            keep_alive = self.config.max_keep_alive;
            if v5 {
                server_keep_alive = Some(keep_alive);
            } else {
                keep_alive = connect.keep_alive;
            }
        }

        // The client certificate's expiry, as an instant on the core's clock.
        let cert_expiry_due = info
            .tls
            .as_ref()
            .and_then(|t| t.not_after)
            .and_then(|secs| self.instant_at_unix_secs(secs, now));

        let props = &connect.properties;
        let conn = Conn {
            session: sid,
            connected_at: now,
            last_seen: now,
            keep_alive_due: None,
            cert_expiry_due,
            keep_alive,
            protocol: connect.protocol,
            info,
            will: connect.will.map(Box::new),
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            aliases: None,
            alias_max_out: props.topic_alias_maximum.unwrap_or(0),
            problem_info: props.request_problem_information.unwrap_or(1) == 1,
            connect_expiry_zero: requested_expiry == 0,
            held_acks: None,
            retained_walks: None,
        };
        let want_response_info = props.request_response_information == Some(1);
        self.conns.insert(conn_id, Box::new(conn));
        if keep_alive > 0 {
            let due = now + time::keep_alive_limit(keep_alive);
            self.timers.insert((due, Timer::KeepAlive(conn_id)));
            if let Some(c) = self.conns.get_mut(&conn_id) {
                c.keep_alive_due = Some(due);
            }
        }
        if let Some(due) = cert_expiry_due {
            self.timers.insert((due, Timer::CertExpiry(conn_id)));
        }
        self.stats.clients_connected += 1;

        let mut properties = Properties::default();
        if v5 {
            properties.assigned_client_identifier = assigned;
            properties.server_keep_alive = server_keep_alive;
            if expiry != requested_expiry {
                properties.session_expiry_interval = Some(expiry);
            }
            properties.receive_maximum = Some(self.config.receive_maximum);
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            if self.config.max_qos < 2 {
                properties.maximum_qos = Some(self.config.max_qos);
            }
            if want_response_info {
                properties.response_information = Some(format!("moat/response/{client_id}"));
            }
        }
        self.send(
            conn_id,
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code: ReasonCode::SUCCESS,
                properties,
            }),
        );
        if session_present {
            self.resend_inflight(sid, conn_id, now);
        }
        self.fill_window(sid, now);
        ConnectOutcome {
            accepted: true,
            client_id,
            keep_alive,
        }
    }

    /// Writes what a session holds to the store: its subscriptions, its incoming QoS 2 packet
    /// ids and its outgoing messages (in flight, in send order, then queued) under new store
    /// keys (any earlier ones went with the session's `SessionRemove`).
    pub(super) fn store_session_state(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let client_id = session.client_id.clone();
        let mut ops = Vec::new();
        for (filter, (_, data)) in &session.subscriptions {
            ops.push(StoreOp::SubscriptionSet {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: data.options,
                id: data.id,
            });
        }
        for &packet_id in &session.incoming_qos2 {
            ops.push(StoreOp::IncomingQos2Add {
                client_id: client_id.clone(),
                packet_id,
            });
        }
        let mut messages = Vec::new();
        for id in session.inflight_in_order() {
            let Some(f) = session.inflight.get_mut(&id) else {
                continue;
            };
            let seq = session.next_store_seq;
            session.next_store_seq += 1;
            f.delivery.seq = Some(seq);
            let state = match f.state {
                OutState::Released => StoredState::Released(id),
                OutState::Unacked | OutState::Unreceived => StoredState::Sent(id),
            };
            messages.push((seq, f.delivery.clone(), state));
        }
        for d in &mut session.queue {
            let seq = session.next_store_seq;
            session.next_store_seq += 1;
            d.seq = Some(seq);
            messages.push((seq, d.clone(), StoredState::Queued));
        }
        for (seq, delivery, state) in messages {
            ops.push(StoreOp::MessagePut {
                client_id: client_id.clone(),
                seq,
                message: self.stored_message(&delivery),
                state,
            });
        }
        for op in ops {
            self.op(op);
        }
    }

    pub(super) fn new_session(&mut self, client_id: &str) -> SessionId {
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions
            .insert(sid, Box::new(Session::new(client_id.to_owned())));
        self.by_client_id.insert(client_id.to_owned(), sid);
        sid
    }

    /// The old connection of a session loses it to a new CONNECT with the same client id.
    pub(super) fn take_over(&mut self, old: ConnId, resumed: bool, now: Instant) {
        let Some(conn) = self.conns.get(&old) else {
            return;
        };
        if conn.protocol.is_v5() {
            self.send(
                old,
                Packet::Disconnect(Disconnect {
                    reason_code: ReasonCode::SESSION_TAKEN_OVER,
                    properties: Properties::default(),
                }),
            );
        }
        self.outputs.push_back(Output::Close(old));
        let Some(conn) = self.conns.remove(&old) else {
            return;
        };
        self.cancel_timers(old, &conn);
        self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
        if let Some(session) = self.sessions.get_mut(&conn.session) {
            session.conn = None;
        }
        if let Some(will) = conn.will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            // With a delay, the will of a resumed session is never due [MQTT-3.1.3-9].
            if delay == 0 || !resumed {
                self.publish_will(conn.session, *will, now);
            }
        }
    }

    /// Resends unacknowledged messages after a session is resumed [MQTT-4.4.0-1].
    pub(super) fn resend_inflight(&mut self, sid: SessionId, conn_id: ConnId, now: Instant) {
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let order = session.inflight_in_order();
        for id in order {
            let Some(pid) = PacketId::new(id) else {
                continue;
            };
            let Some(session) = self.sessions.get(&sid) else {
                return;
            };
            let Some(f) = session.inflight.get(&id) else {
                continue;
            };
            match f.state {
                OutState::Released => {
                    self.send(conn_id, Packet::PubRel(PubAck::new(pid)));
                }
                OutState::Unacked | OutState::Unreceived => {
                    let delivery = f.delivery.clone();
                    // A message that cannot be sent any more (expired, too large) is dropped.
                    if let Some(mut p) = self.build_publish(conn_id, &delivery, Some(pid), now) {
                        p.dup = true;
                        self.stats.messages_sent += 1;
                        self.send(conn_id, Packet::Publish(p));
                    } else if let Some(s) = self.sessions.get_mut(&sid) {
                        let seq = s.inflight.remove(&id).and_then(|f| f.delivery.seq);
                        self.forget_stored(sid, seq);
                    }
                }
            }
        }
    }

    pub(super) fn handle_disconnect(&mut self, conn_id: ConnId, d: Disconnect, now: Instant) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if let Some(expiry) = d.properties.session_expiry_interval {
            if conn.connect_expiry_zero && expiry != 0 {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 in CONNECT [MQTT-3.14.2-2]",
                    now,
                );
            }
            let sid = conn.session;
            let max = self.config.max_session_expiry;
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expiry_interval = expiry.min(max);
                if s.persisted && s.expiry_interval > 0 {
                    let op = StoreOp::SessionUpsert {
                        client_id: s.client_id.clone(),
                        expiry_interval: s.expiry_interval,
                    };
                    self.outputs.push_back(Output::Persist(op));
                }
            }
        }
        // A normal DISCONNECT discards the will [MQTT-3.1.2-10]; 0x04 asks for it.
        if d.reason_code != ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.will = None;
            }
        }
        self.outputs.push_back(Output::Close(conn_id));
        self.connection_lost(conn_id, now);
    }

    /// The connection is gone (closed by either side, keep-alive expired, I/O error). Publishes
    /// the will (after its delay) and starts the session's expiry. Unknown connections are
    /// ignored, so calling this twice is harmless.
    pub(super) fn connection_lost(&mut self, conn_id: ConnId, now: Instant) {
        let Some(conn) = self.conns.remove(&conn_id) else {
            return;
        };
        self.cancel_timers(conn_id, &conn);
        self.stats.clients_connected = self.stats.clients_connected.saturating_sub(1);
        let sid = conn.session;
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.conn != Some(conn_id) {
            return;
        }
        session.conn = None;
        // Publishers do not wait for an offline session.
        self.wake_ack_waiters(sid);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let expiry = session.expiry_interval;
        let persisted = session.persisted && expiry > 0;
        let client_id = session.client_id.clone();
        let mut publish_now = None;
        if let Some(will) = conn.will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 || expiry == 0 {
                publish_now = Some(will);
            } else {
                let at = now + Duration::from_secs(u64::from(delay.min(expiry)));
                if persisted {
                    let at_ms = self.unix_ms(at);
                    let op = StoreOp::WillSet {
                        client_id: client_id.clone(),
                        will: (*will).clone(),
                        at_ms,
                    };
                    self.outputs.push_back(Output::Persist(op));
                }
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.pending_will = Some(Box::new(PendingWill { at, will: *will }));
                }
                self.timers.insert((at, Timer::Session(sid)));
            }
        }
        if persisted {
            let at_ms = self.unix_ms(now);
            self.op(StoreOp::SessionOffline { client_id, at_ms });
        }
        if expiry == 0 {
            self.end_session(sid, now);
        } else if expiry != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry));
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.expires_at = Some(at);
            }
            self.timers.insert((at, Timer::Session(sid)));
        }
        if let Some(will) = publish_now {
            self.publish_will(sid, *will, now);
        }
    }

    pub(super) fn publish_will(&mut self, sid: SessionId, will: LastWill, now: Instant) {
        let retain = will.retain;
        let message = Arc::new(Message::from_will(will, Some(sid), now));
        if retain {
            self.store_retained(&message);
        }
        self.route(&message, now);
    }

    /// Removes a session and its subscriptions; a pending will is published [MQTT-3.1.3-9].
    pub(super) fn end_session(&mut self, sid: SessionId, now: Instant) {
        let Some(mut session) = self.sessions.remove(&sid) else {
            return;
        };
        for conn in std::mem::take(&mut session.ack_waiters) {
            self.release_acks(conn);
        }
        if self.by_client_id.get(&session.client_id) == Some(&sid) {
            self.by_client_id.remove(&session.client_id);
        }
        for (filter, _) in session.subscriptions.values() {
            self.sub_remove(filter, sid);
        }
        if session.persisted {
            self.op(StoreOp::SessionRemove {
                client_id: session.client_id.clone(),
            });
        }
        if let Some(p) = session.pending_will {
            self.publish_will(sid, p.will, now);
        }
    }
}
