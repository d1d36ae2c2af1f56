//! The durable store: the ops the broker emits for persistent sessions and retained messages,
//! and the restore at start-up.

use super::*;

impl Broker {
    /// Records the durable store's size for `$SYS/broker/store/bytes`.
    pub fn set_store_bytes(&mut self, bytes: u64) {
        self.store_bytes = Some(bytes);
    }

    /// Tells the broker the wall clock (Unix milliseconds) at `now`: stored times and the
    /// admin API's "connected since" are computed from it.
    pub fn set_clock(&mut self, now: Instant, now_unix_ms: u64) {
        self.epoch = (now, now_unix_ms);
    }

    /// Turns on durable-store ops ([`Output::Persist`]) for persistent sessions
    /// and retained messages. `now_unix_ms` is the wall clock at `now`.
    pub fn enable_persistence(&mut self, now: Instant, now_unix_ms: u64) {
        self.persist = true;
        self.epoch = (now, now_unix_ms);
    }

    pub(super) fn unix_ms(&self, t: Instant) -> u64 {
        let (e, ms) = self.epoch;
        match t.checked_duration_since(e) {
            Some(d) => ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => ms
                .saturating_sub(u64::try_from(e.duration_since(t).as_millis()).unwrap_or(u64::MAX)),
        }
    }

    pub(super) fn instant_at(&self, at: u64) -> Instant {
        let (e, ms) = self.epoch;
        if at >= ms {
            e + Duration::from_millis(at - ms)
        } else {
            e.checked_sub(Duration::from_millis(ms - at)).unwrap_or(e)
        }
    }

    pub(super) fn op(&mut self, op: StoreOp) {
        if self.persist {
            self.outputs.push_back(Output::Persist(op));
        }
    }

    pub(super) fn is_persisted(&self, sid: SessionId) -> bool {
        self.persist && self.sessions.get(&sid).is_some_and(|s| s.persisted)
    }

    pub(super) fn stored_message(&self, d: &Delivery) -> StoredMessage {
        let m = &d.message;
        StoredMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: d.qos,
            retain: d.retain,
            properties: m.properties.clone(),
            expires_at_ms: m.expires_at.map(|t| self.unix_ms(t)),
            subscription_ids: d.subscription_ids.clone(),
        }
    }

    /// A message loaded from the store.
    pub(super) fn loaded_message(&self, m: StoredMessage) -> (Arc<Message>, Vec<u32>) {
        let message = Message {
            topic: m.topic,
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: m.properties,
            expires_at: m.expires_at_ms.map(|t| self.instant_at(t)),
            origin: None,
        };
        (Arc::new(message), m.subscription_ids)
    }

    /// Loads what a durable store holds (at start-up, before any connection). Every session
    /// is offline; its expiry runs from when it went offline (or from now, if the broker
    /// stopped while it was connected).
    ///
    /// An item this broker would refuse from a client (a topic beyond the topic limits, say
    /// from an older version) is skipped, not loaded: the returned lines name each one, for
    /// the server to log with the store's file.
    pub fn restore(&mut self, snapshot: Snapshot, now: Instant) -> Vec<String> {
        let now_ms = self.unix_ms(now);
        let limits = self.config.topic_limits();
        let mut skipped = Vec::new();
        let refused = |topic: &str| {
            topic::validate_topic_name(topic)
                .and_then(|()| limits.check(topic))
                .err()
        };
        for m in snapshot.retained {
            if let Some(e) = refused(&m.topic) {
                skipped.push(format!("retained message {}: {e}", short(&m.topic)));
                continue;
            }
            let (message, _) = self.loaded_message(m);
            if !message.is_expired(now) {
                self.retained_put(message);
            }
        }
        for stored in snapshot.sessions {
            let sid = self.new_session(&stored.client_id);
            let offline_ms = stored.offline_since_ms.unwrap_or(now_ms);
            let expires_at = (stored.expiry_interval != u32::MAX).then(|| {
                self.instant_at(offline_ms.saturating_add(u64::from(stored.expiry_interval) * 1000))
            });
            let mut subs = Vec::new();
            for (raw, options, id) in stored.subscriptions {
                match limits.check(&raw).and_then(|()| Filter::parse(&raw)) {
                    Ok(filter) => subs.push((raw, filter, SubData { options, id })),
                    Err(e) => skipped.push(format!(
                        "subscription {} of client {:?}: {e}",
                        short(&raw),
                        stored.client_id
                    )),
                }
            }
            let mut queue = Vec::new();
            let mut max_seq = 0;
            for (seq, m, state) in stored.messages {
                max_seq = max_seq.max(seq);
                let (message, subscription_ids) = self.loaded_message(m);
                let delivery = Delivery {
                    qos: message.qos,
                    retain: message.retain,
                    message,
                    subscription_ids,
                    seq: Some(seq),
                };
                queue.push((seq, delivery, state));
            }
            let will = match stored.will {
                Some((will, _)) if refused(&will.topic).is_some() => {
                    let e = refused(&will.topic)
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    skipped.push(format!(
                        "will {} of client {:?}: {e}",
                        short(&will.topic),
                        stored.client_id
                    ));
                    None
                }
                Some((will, at)) => Some(PendingWill {
                    at: self.instant_at(at),
                    will,
                }),
                None => None,
            };
            for (_, filter, data) in &subs {
                self.sub_add(filter, sid, data.clone());
            }
            let Some(session) = self.sessions.get_mut(&sid) else {
                continue;
            };
            session.persisted = true;
            session.expiry_interval = stored.expiry_interval;
            session.expires_at = expires_at;
            session.incoming_qos2 = stored.incoming_qos2.into_iter().collect();
            session.next_store_seq = max_seq + 1;
            for (raw, filter, data) in subs {
                session.subscriptions.insert(raw, (filter, data));
            }
            for (seq, delivery, state) in queue {
                let pid = match state {
                    StoredState::Queued => None,
                    StoredState::Sent(p) => PacketId::new(p).map(|p| (p, false)),
                    StoredState::Released(p) => PacketId::new(p).map(|p| (p, true)),
                };
                match pid {
                    Some((pid, released)) if !session.inflight.contains_key(&pid.get()) => {
                        let state = if released {
                            OutState::Released
                        } else if delivery.qos == QoS::ExactlyOnce {
                            OutState::Unreceived
                        } else {
                            OutState::Unacked
                        };
                        session.inflight.insert(
                            pid.get(),
                            Inflight {
                                delivery,
                                state,
                                seq,
                            },
                        );
                        session.next_seq = session.next_seq.max(seq + 1);
                    }
                    _ => {
                        session.queued_bytes +=
                            delivery.message.payload.len() + delivery.message.topic.len();
                        session.queue.push_back(delivery);
                    }
                }
            }
            if let Some(w) = &will {
                self.timers.insert((w.at, Timer::Session(sid)));
            }
            if let Some(at) = expires_at {
                self.timers.insert((at, Timer::Session(sid)));
            }
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.pending_will = will.map(Box::new);
            }
        }
        skipped
    }
}
