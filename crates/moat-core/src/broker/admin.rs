//! Operator requests ([`Input::Admin`]): clients, sessions, retained messages, counters; and
//! messages from elsewhere ([`Input::Remote`]).

use super::*;

/// Sessions one client listing examines at most: a filter that matches few of 100,000
/// clients does not hold the router up; the reply says where to continue.
pub const MAX_CLIENT_SCAN: usize = 10_000;

impl Broker {
    pub(super) fn admin(&mut self, request: AdminRequest, now: Instant) -> AdminReply {
        match request {
            AdminRequest::Clients(query) => self.list_clients(&query),
            AdminRequest::Client { client_id } => {
                AdminReply::Client(self.client_detail(&client_id).map(Box::new))
            }
            AdminRequest::Disconnect { client_id, reason } => {
                let conn = self
                    .by_client_id
                    .get(&client_id)
                    .and_then(|sid| self.sessions.get(sid))
                    .and_then(|s| s.conn);
                match conn {
                    Some(conn) => {
                        self.disconnect_with(conn, reason, "disconnected by the operator", now);
                        AdminReply::Disconnected(true)
                    }
                    None => AdminReply::Disconnected(false),
                }
            }
            AdminRequest::Retained {
                prefix,
                after,
                limit,
            } => {
                let limit = limit.max(1);
                let mut messages = Vec::new();
                let mut more = false;
                // Topic order is level by level; the prefix's complete levels narrow the walk.
                let filter = match prefix.rsplit_once('/') {
                    Some((levels, _)) if !levels.contains(['+', '#']) => format!("{levels}/#"),
                    _ => "#".to_owned(),
                };
                let after = after.filter(|a| !a.is_empty());
                let mut filters = vec![filter];
                // `#` does not match topics starting with `$`: list those too when asked.
                if prefix.starts_with('$') {
                    let first = prefix.split('/').next().unwrap_or_default();
                    filters.push(format!("{first}/#"));
                    filters.dedup();
                }
                for filter in filters.iter().filter(|f| !f.contains('+')) {
                    if more {
                        break;
                    }
                    self.retained
                        .walk_matches(filter, after.as_deref(), |topic, m| {
                            if !topic.starts_with(prefix.as_str()) {
                                return true;
                            }
                            if messages.len() == limit {
                                more = true;
                                return false;
                            }
                            messages.push(RetainedEntry {
                                message: Arc::clone(m),
                            });
                            true
                        });
                }
                AdminReply::Retained { messages, more }
            }
            AdminRequest::DeleteRetained { topic } => {
                let deleted = self.retained_take(&topic).is_some();
                if deleted {
                    self.op(StoreOp::RetainedRemove { topic });
                }
                AdminReply::RetainedDeleted(deleted)
            }
            AdminRequest::Stats => AdminReply::Stats(Box::new(self.snapshot())),
            AdminRequest::ReportAccepted(on) => {
                self.report_accepted = on;
                AdminReply::Done
            }
        }
    }

    /// Counters and sizes now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            stats: self.stats,
            sessions: self.sessions.len(),
            subscriptions: self.subs.len(),
            retained: self.retained.len(),
            retained_bytes: self.retained_bytes,
            queued: self.sessions.values().map(|s| s.queue.len()).sum(),
            store_bytes: self.store_bytes,
        }
    }

    fn list_clients(&self, q: &ClientQuery) -> AdminReply {
        let limit = q.limit.max(1);
        let start = match &q.after {
            Some(a) => Bound::Excluded(a.as_str()),
            None => Bound::Included(q.client_id_prefix.as_str()),
        };
        let mut clients = Vec::new();
        let mut more = false;
        let mut resume_after = None;
        let mut last: Option<&String> = None;
        let candidates = self.by_client_id.range::<str, _>((start, Bound::Unbounded));
        for (scanned, (client_id, sid)) in candidates.enumerate() {
            if !client_id.starts_with(q.client_id_prefix.as_str()) {
                break;
            }
            if scanned == MAX_CLIENT_SCAN {
                // The router is not held up for longer: the caller continues from here.
                more = true;
                if clients.len() < limit {
                    resume_after = last.cloned();
                }
                break;
            }
            last = Some(client_id);
            if !self.matches(*sid, q) {
                continue;
            }
            if clients.len() == limit {
                more = true;
                break;
            }
            if let Some(summary) = self.summary(*sid) {
                clients.push(summary);
            }
        }
        AdminReply::Clients {
            clients,
            more,
            resume_after,
        }
    }

    /// Whether a session is connected and matches the query's filters (checked on the
    /// connection's own fields, before anything is copied).
    fn matches(&self, sid: SessionId, q: &ClientQuery) -> bool {
        let Some(conn) = self
            .sessions
            .get(&sid)
            .and_then(|s| s.conn)
            .and_then(|c| self.conns.get(&c))
        else {
            return false;
        };
        let info = &conn.info;
        let tls_identity = info.tls.as_ref().and_then(|t| t.identity.as_deref());
        q.username
            .as_ref()
            .is_none_or(|u| info.username.as_ref() == Some(u))
            && q.listener.as_ref().is_none_or(|l| *info.listener == **l)
            && q.cert_identity
                .as_deref()
                .is_none_or(|c| tls_identity == Some(c))
            && q.address_prefix.as_ref().is_none_or(|p| {
                info.peer
                    .is_some_and(|a| a.to_string().starts_with(p.as_str()))
            })
    }

    /// A connected session's summary.
    fn summary(&self, sid: SessionId) -> Option<ClientSummary> {
        let session = self.sessions.get(&sid)?;
        let conn = self.conns.get(&session.conn?)?;
        Some(ClientSummary {
            client_id: session.client_id.clone(),
            username: conn.info.username.clone(),
            listener: conn.info.listener.to_string(),
            peer: conn.info.peer,
            protocol: conn.protocol,
            connected_since_ms: self.unix_ms(conn.connected_at),
            keep_alive: conn.keep_alive,
            subscriptions: session.subscriptions.len(),
            queued: session.queue.len(),
            inflight: session.inflight.len(),
            tls: conn.info.tls.clone(),
        })
    }

    fn client_detail(&self, client_id: &str) -> Option<ClientDetail> {
        let sid = *self.by_client_id.get(client_id)?;
        let session = self.sessions.get(&sid)?;
        Some(ClientDetail {
            connected: self.summary(sid),
            client_id: session.client_id.clone(),
            subscriptions: session
                .subscriptions
                .iter()
                .map(|(raw, (_, data))| (raw.clone(), data.options.qos))
                .collect(),
            queued: session.queue.len(),
            persistent: session.persisted,
            expiry_interval: session.expiry_interval,
        })
    }

    /// A message from elsewhere: retained if it says so, routed to local subscriptions.
    pub(super) fn handle_remote(&mut self, message: Arc<Message>, now: Instant) {
        let mut message = message;
        if message.origin.is_some() {
            let mut m = (*message).clone();
            m.origin = None;
            message = Arc::new(m);
        }
        if message.retain {
            self.store_retained(&message);
        }
        self.route(&message, now);
    }
}
