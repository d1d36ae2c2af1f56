//! [`BrokerHandle`]: the way into a running server for everything that is not a socket (the
//! admin API and console, forwarders, tools). Cloneable and usable from any task; each call
//! is a typed request to the router, answered in the order the router handles its inputs.

use std::sync::Arc;

use moat_codec::ReasonCode;
use moat_core::{
    AcceptedMessage, AdminReply, AdminRequest, ClientDetail, ClientQuery, ClientSummary,
    RetainedEntry, StatsSnapshot,
};
use tokio::sync::{mpsc, oneshot};

use std::net::SocketAddr;

use crate::auth::AuthState;
use crate::certs::{
    Activation, CertError, CertSet, CertSets, CertUpload, DeleteReport, ExpiryItem,
    HandshakeFailures, PendingSet, RecentFailure,
};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::router::ToRouter;
use crate::ListenerKind;

/// The server stopped: a request could not be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the broker is not running")]
pub struct Stopped;

/// A handle on the running broker.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    router: mpsc::Sender<ToRouter>,
    metrics: Arc<Metrics>,
    /// The TLS listeners' live material, by listener name.
    tls: Arc<std::collections::BTreeMap<String, Arc<moat_tls::LiveTls>>>,
    /// Every listener, in configuration order.
    listeners: Arc<[ListenerEntry]>,
    auth: Arc<AuthState>,
    /// The TLS listeners grouped into certificate sets.
    certs: Arc<CertSets>,
}

#[derive(Debug)]
pub(crate) struct ListenerEntry {
    pub(crate) name: String,
    pub(crate) kind: ListenerKind,
    pub(crate) address: SocketAddr,
    pub(crate) metrics: Arc<ListenerMetrics>,
}

/// The client CAs of one TLS listener and their use ([`BrokerHandle::client_cas`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerClientCas {
    /// The listener.
    pub listener: String,
    /// Each CA it trusts, with its connected clients.
    pub cas: Vec<moat_tls::ClientCaUse>,
}

/// One listener as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    /// Its name.
    pub name: String,
    /// tcp, tls, ws or wss.
    pub kind: ListenerKind,
    /// The address it is bound to.
    pub address: SocketAddr,
    /// Connections open now.
    pub connections: u64,
}

/// Why TLS material could not be installed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsChangeError {
    /// No TLS listener has that name.
    #[error("no TLS listener named {0:?}")]
    NoListener(String),
    /// The material was refused (each finding names the fact and the fix); nothing changed.
    #[error("the new TLS material was refused")]
    Refused(#[source] moat_tls::TlsError),
    /// The check could not run (the blocking pool is gone: the server is stopping).
    #[error("the broker is not running")]
    Stopped,
}

/// A page of results and whether more follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// This page, sorted.
    pub items: Vec<T>,
    /// More (may) match after this page.
    pub more: bool,
    /// Where the next page starts (pass it as `after`), when `more`.
    pub next_after: Option<String>,
}

impl BrokerHandle {
    pub(crate) fn new(
        router: mpsc::Sender<ToRouter>,
        metrics: Arc<Metrics>,
        tls: Arc<std::collections::BTreeMap<String, Arc<moat_tls::LiveTls>>>,
        listeners: Arc<[ListenerEntry]>,
        auth: Arc<AuthState>,
        certs: Arc<CertSets>,
    ) -> Self {
        Self {
            router,
            metrics,
            tls,
            listeners,
            auth,
            certs,
        }
    }

    /// Every listener with its address and open connections, in configuration order.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        self.listeners
            .iter()
            .map(|l| ListenerStatus {
                name: l.name.clone(),
                kind: l.kind,
                address: l.address,
                connections: l.metrics.open_connections(),
            })
            .collect()
    }

    /// Re-reads the password file and the ACL now (after the admin API wrote them), whether
    /// or not they look changed. Blocking (it parses files): call it off the async threads.
    ///
    /// # Errors
    /// The first file that is invalid (`path:line: reason`); the old contents stay in use.
    pub fn reload_auth_blocking(&self) -> Result<(), moat_auth::LoadError> {
        self.auth.reload_now()
    }

    /// Every certificate set (TLS listeners serving the same certificate file), in
    /// configuration order.
    pub fn certificate_sets(&self) -> Vec<CertSet> {
        let now = std::time::SystemTime::now();
        self.certs
            .ids()
            .iter()
            .filter_map(|id| self.certs.view(id, now).ok())
            .collect()
    }

    /// One certificate set by id (its first listener's name).
    pub fn certificate_set(&self, id: &str) -> Option<CertSet> {
        self.certs.view(id, std::time::SystemTime::now()).ok()
    }

    /// The certificate set a TLS listener belongs to.
    pub fn certificate_set_of(&self, listener: &str) -> Option<String> {
        self.certs.set_of(listener)
    }

    /// Checks new material for a set and keeps it as the set's pending material (in memory;
    /// a new stage replaces it). Every part is decoded (PEM or DER), a bundle in `cert` is
    /// split, an encrypted key is decrypted with its passphrase, parts not given are kept
    /// from the active set; then everything is linted and built exactly as the broker's own
    /// files at start-up. Nothing is served until [`activate_pending`](Self::activate_pending).
    ///
    /// # Errors
    /// [`CertError::Refused`] with the findings (nothing staged), [`CertError::Invalid`],
    /// [`CertError::NoSet`], [`CertError::Stopped`].
    pub async fn stage_certificates(
        &self,
        id: &str,
        upload: CertUpload,
    ) -> Result<PendingSet, CertError> {
        self.certs.stage(id, upload).await
    }

    /// Drops a set's pending material.
    ///
    /// # Errors
    /// [`CertError::NoSet`], [`CertError::NoPending`].
    pub fn discard_pending(&self, id: &str) -> Result<(), CertError> {
        self.certs.discard(id)
    }

    /// Installs a set's pending material on every listener of the set (the current material
    /// becomes the set's previous one, files written atomically, key 0600), then runs a
    /// test handshake against each listener; if one fails, every listener is rolled back.
    ///
    /// # Errors
    /// [`CertError::NoPending`], [`CertError::TestHandshakeFailed`] (rolled back),
    /// [`CertError::Install`] (rolled back), [`CertError::Io`], [`CertError::Stopped`].
    pub async fn activate_pending(&self, id: &str) -> Result<Activation, CertError> {
        self.certs.activate_pending(id).await
    }

    /// Makes the set's previous material (before the last activation or deletion) active
    /// again, checked and tested as an activation; the current material becomes previous.
    ///
    /// # Errors
    /// [`CertError::NoPrevious`], and as [`activate_pending`](Self::activate_pending) (a
    /// previous set that no longer passes lint is [`CertError::Refused`]).
    pub async fn restore_previous(&self, id: &str) -> Result<Activation, CertError> {
        self.certs.restore_previous(id).await
    }

    /// The TLS clients a deletion of the set would disconnect, per listener. Changes nothing.
    ///
    /// # Errors
    /// [`CertError::NoSet`].
    pub fn delete_preview(&self, id: &str) -> Result<DeleteReport, CertError> {
        self.certs.delete_preview(id)
    }

    /// Removes a set's material from every listener of the set: its TLS clients are
    /// disconnected (v5: DISCONNECT 0x98), new handshakes are refused, also after a restart
    /// (a `removed` marker under `tls_state_dir/<id>/`), until material is activated or
    /// restored. The certificate and key files move to the set's previous material.
    ///
    /// # Errors
    /// [`CertError::NoSet`], [`CertError::Io`], [`CertError::Stopped`].
    pub async fn delete_certificates(&self, id: &str) -> Result<DeleteReport, CertError> {
        self.certs.delete(id).await
    }

    /// What expires in every set (server, chain and client CA certificates, CRL next
    /// updates), soonest first. Add connected clients' certificates with
    /// [`ExpiryItem::client`] and sort again by `seconds_left`.
    pub fn expiry(&self) -> Vec<ExpiryItem> {
        self.certs.expiry(std::time::SystemTime::now())
    }

    /// As [`expiry`](Self::expiry), at `now`.
    pub(crate) fn expiry_at(&self, now: std::time::SystemTime) -> Vec<ExpiryItem> {
        self.certs.expiry(now)
    }

    /// Publishes an event on `$SYS/broker/{name}`: QoS 0, not retained, to the subscribers
    /// connected now (as the core publishes its `$SYS` values, but once).
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub(crate) async fn publish_sys_event(
        &self,
        name: &str,
        payload: String,
    ) -> Result<(), Stopped> {
        let message = moat_core::Message {
            topic: format!("$SYS/broker/{name}"),
            payload: payload.into(),
            qos: moat_codec::QoS::AtMostOnce,
            retain: false,
            properties: moat_codec::Properties::default(),
            expires_at: None,
            origin: None,
        };
        self.router
            .send(ToRouter::Publish {
                message: Arc::new(message),
            })
            .await
            .map_err(|_| Stopped)
    }

    /// Handshake failures of every TLS listener: counts by reason and the last
    /// [`moat_tls::RECENT_FAILURES`] failures, newest first.
    pub fn handshake_failures(&self) -> HandshakeFailures {
        let mut out = HandshakeFailures::default();
        let mut recent = Vec::new();
        for (name, live) in self.tls.iter() {
            for (reason, n) in live.failures.snapshot() {
                if n > 0 {
                    *out.by_reason.entry(reason.label().to_owned()).or_default() += n;
                }
            }
            recent.extend(live.failures.recent().into_iter().map(|r| (name, r)));
        }
        recent.sort_by_key(|r| std::cmp::Reverse(r.1.at));
        out.recent = recent
            .into_iter()
            .take(moat_tls::RECENT_FAILURES)
            .map(|(name, r)| RecentFailure {
                at: rfc3339_of(r.at),
                listener: name.clone(),
                peer: r.peer.to_string(),
                reason: r.reason.label().to_owned(),
                detail: r.detail,
            })
            .collect();
        out
    }

    /// Every forwarding rule's sink state and spool (empty without rules).
    pub fn forwarding(&self) -> Vec<crate::ForwardStatus> {
        self.metrics.forward().status()
    }

    /// Every client CA each TLS listener trusts, with how many connected clients chain to
    /// it: rotating a client CA, the old one can go once no client uses it.
    pub fn client_cas(&self) -> Vec<ListenerClientCas> {
        self.tls
            .iter()
            .filter_map(|(name, live)| {
                let cas = live.client_cas();
                (!cas.is_empty()).then(|| ListenerClientCas {
                    listener: name.clone(),
                    cas,
                })
            })
            .collect()
    }

    /// Disconnects, on every TLS listener, the clients whose certificate chains to the client
    /// CA with this SHA-256 fingerprint (v5: DISCONNECT 0x98). Returns how many; 0 when no
    /// listener trusts such a CA or no client uses it.
    pub fn disconnect_client_ca(&self, fingerprint: &str) -> usize {
        // Colons optional, any case: as `openssl x509 -fingerprint -sha256` prints it or not.
        let hex: Vec<char> = fingerprint
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let want = hex
            .chunks(2)
            .map(|p| p.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(":");
        self.tls
            .values()
            .map(|live| live.disconnect_ca(&want))
            .sum()
    }

    /// The names of the TLS listeners (tls and wss).
    pub fn tls_listeners(&self) -> Vec<String> {
        self.tls.keys().cloned().collect()
    }

    fn live_tls(&self, listener: &str) -> Result<Arc<moat_tls::LiveTls>, TlsChangeError> {
        self.tls
            .get(listener)
            .cloned()
            .ok_or_else(|| TlsChangeError::NoListener(listener.to_owned()))
    }

    /// An acceptor on a TLS listener's certificates for another port (the admin API's
    /// HTTPS): see [`moat_tls::LiveTls::borrow_certificates`]. `Ok(None)` while the
    /// listener's certificate is removed.
    ///
    /// # Errors
    /// [`TlsChangeError::NoListener`], or [`TlsChangeError::Refused`] if rustls refuses the
    /// configuration.
    pub fn borrow_tls(
        &self,
        listener: &str,
        previous: Option<&moat_tls::Borrowed>,
        alpn: &[Vec<u8>],
    ) -> Result<Option<moat_tls::Borrowed>, TlsChangeError> {
        self.live_tls(listener)?
            .borrow_certificates(previous, alpn)
            .map_err(TlsChangeError::Refused)
    }

    /// Installs TLS material given as bytes on a listener: checked with the same lint as files
    /// at start-up (refused with its findings, the old material still served), written
    /// atomically to the listener's files (so a restart serves the same), then used for new
    /// handshakes. Returns the warnings.
    ///
    /// # Errors
    /// [`TlsChangeError`].
    pub async fn install_tls(
        &self,
        listener: &str,
        pem: moat_tls::Pem,
    ) -> Result<Vec<moat_pki::lint::Finding>, TlsChangeError> {
        let live = self.live_tls(listener)?;
        let outcome =
            tokio::task::spawn_blocking(move || live.install(&pem, std::time::SystemTime::now()))
                .await
                .map_err(|_| TlsChangeError::Stopped)?
                .map_err(TlsChangeError::Refused)?;
        match outcome {
            moat_tls::ReloadOutcome::Replaced { warnings, .. } => Ok(warnings),
            _ => Ok(Vec::new()),
        }
    }

    /// Re-reads a listener's TLS files now (what SIGHUP does for every listener).
    ///
    /// # Errors
    /// [`TlsChangeError`] (a refused new file keeps the old material).
    pub async fn reload_tls(&self, listener: &str) -> Result<(), TlsChangeError> {
        let live = self.live_tls(listener)?;
        let outcome =
            tokio::task::spawn_blocking(move || live.reload(std::time::SystemTime::now()))
                .await
                .map_err(|_| TlsChangeError::Stopped)?;
        match outcome {
            moat_tls::ReloadOutcome::Failed(e) => Err(TlsChangeError::Refused(e)),
            _ => Ok(()),
        }
    }

    /// Removes a listener's certificate: its TLS clients are disconnected (v5: DISCONNECT
    /// 0x98) and new handshakes are refused until material is installed again. Returns how
    /// many connections were open. (The files stay: delete them too, or the next reload finds
    /// them.)
    ///
    /// # Errors
    /// [`TlsChangeError::NoListener`].
    pub fn remove_tls(&self, listener: &str) -> Result<usize, TlsChangeError> {
        Ok(self.live_tls(listener)?.remove())
    }

    async fn ask(&self, request: AdminRequest) -> Result<AdminReply, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.router
            .send(ToRouter::Admin { request, reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Connected clients matching `query`, sorted by client id, a page at a time: the next
    /// page is asked with `query.after` = the page's `next_after`. One call examines at most
    /// [`moat_core::MAX_CLIENT_SCAN`] sessions, so a page of a rare filter may come back short
    /// with `more` set.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn clients(&self, query: ClientQuery) -> Result<Page<ClientSummary>, Stopped> {
        match self.ask(AdminRequest::Clients(query)).await? {
            AdminReply::Clients {
                clients,
                more,
                resume_after,
            } => Ok(Page {
                next_after: if more {
                    resume_after.or_else(|| clients.last().map(|c| c.client_id.clone()))
                } else {
                    None
                },
                items: clients,
                more,
            }),
            _ => Err(Stopped),
        }
    }

    /// One session (connected or not): its connection, subscriptions and queue.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn client(&self, client_id: &str) -> Result<Option<ClientDetail>, Stopped> {
        let request = AdminRequest::Client {
            client_id: client_id.to_owned(),
        };
        match self.ask(request).await? {
            AdminReply::Client(detail) => Ok(detail.map(|d| *d)),
            _ => Err(Stopped),
        }
    }

    /// Disconnects a connected client; a v5 client gets DISCONNECT with `reason` (e.g.
    /// [`ReasonCode::ADMINISTRATIVE_ACTION`]). Its will is published. Returns whether a client
    /// with that id was connected.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn disconnect(&self, client_id: &str, reason: ReasonCode) -> Result<bool, Stopped> {
        let request = AdminRequest::Disconnect {
            client_id: client_id.to_owned(),
            reason,
        };
        match self.ask(request).await? {
            AdminReply::Disconnected(done) => Ok(done),
            _ => Err(Stopped),
        }
    }

    /// Retained messages whose topic starts with `prefix`, sorted by topic, a page of at most
    /// `limit` after the topic `after`.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn retained(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<RetainedEntry>, Stopped> {
        let request = AdminRequest::Retained {
            prefix: prefix.to_owned(),
            after: after.map(str::to_owned),
            limit,
        };
        match self.ask(request).await? {
            AdminReply::Retained { messages, more } => Ok(Page {
                next_after: if more {
                    messages.last().map(|m| m.message.topic.clone())
                } else {
                    None
                },
                items: messages,
                more,
            }),
            _ => Err(Stopped),
        }
    }

    /// Deletes the retained message on `topic` (from the store too). Returns whether there
    /// was one.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn delete_retained(&self, topic: &str) -> Result<bool, Stopped> {
        let request = AdminRequest::DeleteRetained {
            topic: topic.to_owned(),
        };
        match self.ask(request).await? {
            AdminReply::RetainedDeleted(done) => Ok(done),
            _ => Err(Stopped),
        }
    }

    /// The core's counters and sizes now.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn stats(&self) -> Result<StatsSnapshot, Stopped> {
        match self.ask(AdminRequest::Stats).await? {
            AdminReply::Stats(s) => Ok(*s),
            _ => Err(Stopped),
        }
    }

    /// Every metric of the server in the Prometheus text format (version 0.0.4; serve it
    /// with [`crate::METRICS_CONTENT_TYPE`]): what `/metrics` shows. README.md lists them.
    ///
    /// The core's counters and sizes are asked of the router first (one request, answered in
    /// order with the others); once the server has stopped, the last ones read are shown.
    pub async fn metrics_text(&self) -> String {
        if let Ok(snapshot) = self.stats().await {
            self.metrics.set_core(snapshot);
        }
        self.metrics.encode()
    }

    /// Every message the broker accepts from now on, in order, with its publisher. The channel
    /// holds `capacity` messages; when it is full the router waits for the consumer, which
    /// slows publishers down (nothing is dropped and nothing buffers without bound). Drop the
    /// receiver to stop.
    ///
    /// # Errors
    /// [`Stopped`] if the server is not running.
    pub async fn accepted(
        &self,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Arc<AcceptedMessage>>, Stopped> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.router
            .send(ToRouter::WatchAccepted { tx })
            .await
            .map_err(|_| Stopped)?;
        Ok(rx)
    }
}

/// A time as RFC 3339 (second precision).
fn rfc3339_of(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    moat_pki::inspect::rfc3339(secs)
}
