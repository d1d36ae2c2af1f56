//! SUBSCRIBE and UNSUBSCRIBE, and the paced walks that send retained messages to new
//! subscriptions.

use super::*;

impl Broker {
    pub(super) fn handle_subscribe(&mut self, conn_id: ConnId, s: Subscribe, now: Instant) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let v5 = conn.protocol.is_v5();
        let sid = conn.session;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let Some(client_id) = self.sessions.get(&sid).map(|s| s.client_id.clone()) else {
            return;
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained_to_send: Vec<RetainedWalk> = Vec::new();
        let limits = self.config.topic_limits();
        for (raw, mut options) in s.filters {
            let held = self.sessions.get(&sid).map_or(0, |s| s.subscriptions.len());
            let is_new = self
                .sessions
                .get(&sid)
                .is_some_and(|s| !s.subscriptions.contains_key(&raw));
            if is_new && held >= self.config.max_subscriptions_per_client {
                tracing::debug!(%client_id, filter = %raw, "subscription refused: max_subscriptions_per_client");
                self.stats.subscriptions_refused += 1;
                codes.push(if v5 {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            let parsed = limits.check(&raw).and_then(|()| Filter::parse(&raw));
            let filter = match parsed {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(%client_id, error = %e, "subscription refused");
                    if matches!(
                        e,
                        TopicError::TooLong { .. } | TopicError::TooManyLevels { .. }
                    ) {
                        self.stats.subscriptions_refused += 1;
                    }
                    codes.push(if v5 {
                        ReasonCode::TOPIC_FILTER_INVALID
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if filter.share_group.is_some() && options.no_local && v5 {
                return self.disconnect_with(
                    conn_id,
                    ReasonCode::PROTOCOL_ERROR,
                    "No Local on a shared subscription [MQTT-3.8.3-4]",
                    now,
                );
            }
            let allowed = self
                .conns
                .get(&conn_id)
                .is_some_and(|c| self.authorizer.can_subscribe(&client_id, &c.info, &raw));
            if !allowed {
                codes.push(if v5 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode(0x80)
                });
                continue;
            }
            if options.qos as u8 > self.config.max_qos {
                options.qos = QoS::from_u8(self.config.max_qos).unwrap_or(QoS::AtMostOnce);
            }
            let data = SubData {
                options,
                id: sub_id,
            };
            let existed = self.sub_add(&filter, sid, data.clone());
            let send_retained = filter.share_group.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                retained_to_send.push(RetainedWalk {
                    filter: filter.filter.clone(),
                    qos: options.qos,
                    sub_id,
                    after: None,
                });
            }
            if let Some(session) = self.sessions.get_mut(&sid) {
                if session.persisted {
                    let op = StoreOp::SubscriptionSet {
                        client_id: session.client_id.clone(),
                        filter: raw.clone(),
                        options: data.options,
                        id: data.id,
                    };
                    self.outputs.push_back(Output::Persist(op));
                }
                session.subscriptions.insert(raw, (filter, data));
            }
            codes.push(ReasonCode(options.qos as u8));
        }
        self.send(
            conn_id,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
        // Retained messages follow the SUBACK [MQTT-3.3.1-9: sent with RETAIN set], a batch
        // at a time (paced by the subscriber: never dropped for a full outbox).
        if !retained_to_send.is_empty() {
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                let walks = conn.retained_walks.get_or_insert_with(Box::default);
                for walk in retained_to_send {
                    // A repeated SUBSCRIBE starts its filter's walk again.
                    walks.walks.retain(|w| w.filter != walk.filter);
                    walks.walks.push_back(walk);
                }
            }
            self.step_retained(conn_id, now);
        }
    }

    /// Sends the next batch of retained messages for new subscriptions: up to
    /// `retained_batch`, and only while the session's queue is below that (QoS 1/2 wait there
    /// for the in-flight window). Then asks the server to report room (`Output::WantRoom`)
    /// if more are left; acknowledgements that shrink the queue also continue the walk.
    pub(super) fn step_retained(&mut self, conn_id: ConnId, now: Instant) {
        let batch = self.config.retained_batch.max(1);
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        let sid = conn.session;
        let Some(mut walks) = conn.retained_walks.take() else {
            return;
        };
        let info = conn.info.clone();
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if session.queue.len() >= batch {
            // Continued by acknowledgements (`complete_outgoing`).
            walks.awaiting_room = false;
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.retained_walks = Some(walks);
            }
            return;
        }
        let client_id = session.client_id.clone();
        let mut found: Vec<(Arc<Message>, QoS, Option<u32>)> = Vec::new();
        while let Some(walk) = walks.walks.front_mut() {
            let authorizer = &self.authorizer;
            let resume =
                self.retained
                    .walk_matches(&walk.filter, walk.after.as_deref(), |topic, m| {
                        if !m.is_expired(now) && authorizer.can_receive(&client_id, &info, topic) {
                            found.push((Arc::clone(m), walk.qos, walk.sub_id));
                        }
                        found.len() < batch
                    });
            match resume {
                Some(topic) => {
                    walk.after = Some(topic);
                    break;
                }
                None => {
                    walks.walks.pop_front();
                }
            }
        }
        let more = !walks.walks.is_empty();
        if more {
            walks.awaiting_room = true;
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.retained_walks = Some(walks);
            }
        }
        for (message, qos, sub_id) in found {
            let delivery = Delivery {
                qos: qos.min(message.qos),
                message,
                retain: true,
                subscription_ids: sub_id.into_iter().collect(),
                seq: None,
            };
            self.deliver(sid, delivery, now);
        }
        if more {
            self.outputs.push_back(Output::WantRoom(conn_id));
        }
    }

    /// The server reports that a connection's outbox has room again (after
    /// `Output::WantRoom`): the next batch of retained messages goes out.
    pub(super) fn connection_writable(&mut self, conn_id: ConnId, now: Instant) {
        let waiting = self
            .conns
            .get(&conn_id)
            .and_then(|c| c.retained_walks.as_ref())
            .is_some_and(|w| w.awaiting_room);
        if waiting {
            self.step_retained(conn_id, now);
        }
    }

    pub(super) fn handle_unsubscribe(&mut self, conn_id: ConnId, u: Unsubscribe) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let v5 = conn.protocol.is_v5();
        let sid = conn.session;
        let mut codes = Vec::with_capacity(u.filters.len());
        let limits = self.config.topic_limits();
        for raw in u.filters {
            if let Some(walks) = self
                .conns
                .get_mut(&conn_id)
                .and_then(|c| c.retained_walks.as_mut())
            {
                // Nothing more for a filter after its UNSUBACK.
                walks.walks.retain(|w| w.filter != raw);
            }
            if limits.check(&raw).is_err() {
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let code = match self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.subscriptions.remove(&raw))
            {
                Some((filter, _)) => {
                    self.sub_remove(&filter, sid);
                    if self.is_persisted(sid) {
                        let client_id = self
                            .sessions
                            .get(&sid)
                            .map(|s| s.client_id.clone())
                            .unwrap_or_default();
                        self.op(StoreOp::SubscriptionRemove {
                            client_id,
                            filter: raw.clone(),
                        });
                    }
                    ReasonCode::SUCCESS
                }
                None if Filter::parse(&raw).is_err() => ReasonCode::TOPIC_FILTER_INVALID,
                None => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            };
            codes.push(code);
        }
        if !v5 {
            codes.clear();
        }
        self.send(
            conn_id,
            Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reason_codes: codes,
            }),
        );
    }

    /// Adds (or replaces) a subscription; returns whether it existed. Reports interest.
    pub(super) fn sub_add(&mut self, filter: &Filter, sid: SessionId, data: SubData) -> bool {
        let existed = self.subs.insert(filter, sid, data).is_some();
        if !existed && self.config.report_interest {
            let n = self.interest.entry(filter.filter.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.outputs.push_back(Output::Interest {
                    filter: filter.filter.clone(),
                    subscribed: true,
                });
            }
        }
        existed
    }

    /// Removes a subscription. Reports interest.
    pub(super) fn sub_remove(&mut self, filter: &Filter, sid: SessionId) {
        let removed = self.subs.remove(filter, &sid).is_some();
        if removed && self.config.report_interest {
            if let Some(n) = self.interest.get_mut(&filter.filter) {
                *n -= 1;
                if *n == 0 {
                    self.interest.remove(&filter.filter);
                    self.outputs.push_back(Output::Interest {
                        filter: filter.filter.clone(),
                        subscribed: false,
                    });
                }
            }
        }
    }
}
