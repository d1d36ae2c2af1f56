//! Moat's network server: listeners, connection tasks and the router task that drives the
//! broker core ([`moat_core::Broker`]).
//!
//! Layout: [`Server::bind`] opens every listener; [`Server::run`] accepts connections (accept,
//! take a permit, spawn: nothing else happens in the accept loop), runs each connection in its
//! own task (`connection`), and feeds packets to one router task (`router`) that owns the
//! broker state. Packets for a client wait in its `outbox` until its task writes them.
//!
//! Shutdown: when the future given to [`Server::run`] completes, listeners stop accepting, v5
//! clients get DISCONNECT 0x8B, queued packets are flushed for up to
//! [`ServerConfig::shutdown_grace`], and `run` returns.
#![warn(missing_docs)]

mod alarms;
mod auth;
mod certs;
mod config;
pub mod config_file;
mod connection;
mod forward;
mod handle;
mod metrics;
mod outbox;
mod router;
mod ticket_hold;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_core::{Broker, ConnId};
use moat_tls::{FailureRecord, HandshakeFailure, LiveTls, ReloadOutcome};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug_span, error, info, warn, Instrument};

pub use auth::{AuthConfig, AuthStats};
pub use certs::{
    removed_certificate_sets, Activation, CertDetail, CertError, CertSet, CertUpload, CrlDetail,
    DeleteReport, ExpiryItem, ExpiryKind, ExpiryLevel, HandshakeFailures, ListenerClients,
    PendingSet, RecentFailure, SetState, TestHandshake,
};
pub use config::{
    default_max_concurrent_auth, default_worker_threads, ListenerConfig, ListenerKind,
    ServerConfig, StoreConfig, TlsAlarmsConfig,
};
pub use forward::{ForwardConfig, ForwardRule, ForwardStatus, SinkState};
pub use handle::{BrokerHandle, ListenerClientCas, ListenerStatus, Page, Stopped, TlsChangeError};
pub use metrics::METRICS_CONTENT_TYPE;
pub use moat_auth::{FailureKind, Proof};
pub use moat_forward::{Record, Sink, SinkError};
pub use moat_store::{Durability, StoreError};
pub use moat_tls::{ClientAuth, IdentitySource, TlsError, TlsSettings};

use crate::auth::{AclAuthorizer, AuthState};
use crate::connection::{Shared, TlsConn};
use crate::metrics::{ListenerMetrics, Metrics, SysValues};
use crate::router::{Router, ToRouter};

/// Why the server could not start.
///
/// `Display` describes this level only; the cause is reached through
/// [`source`](std::error::Error::source) (`{:#}` in anyhow prints the chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener's address could not be bound.
    #[error("listener {name:?}: cannot bind {addr}")]
    Bind {
        /// The listener's name.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration has no listener.
    #[error("no listener configured")]
    NoListeners,
    /// A tls or wss listener has no `tls` settings.
    #[error("listener {name:?}: a {kind:?} listener needs tls settings (cert and key)")]
    MissingTls {
        /// The listener's name.
        name: String,
        /// Its kind.
        kind: ListenerKind,
    },
    /// The durable store cannot be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The durable store failed while the server ran: it stopped rather than acknowledge
    /// what it could not keep.
    #[error("stopped: the store failed, nothing it could not keep was acknowledged")]
    StoreFailed(#[source] StoreError),
    /// The task that writes the store failed (a panic in the store code).
    #[error("stopped: the store task failed: {0}")]
    StoreTask(String),
    /// The password file or the ACL is invalid.
    #[error(transparent)]
    Auth(#[from] moat_auth::LoadError),
    /// Forwarding rules need the durable store (their spool lives there).
    #[error(
        "forwarding needs the durable store: its spool keeps every message until the sink \
         confirms it; set [store] enabled = true (or remove the [forward] rules)"
    )]
    ForwardWithoutStore,
    /// A forwarding rule has no sink attached.
    #[error("forwarding rule {0:?} has no sink")]
    NoSink(String),
    /// A listener's TLS material is unusable.
    #[error("listener {name:?}")]
    Tls {
        /// The listener's name.
        name: String,
        /// What is wrong, with the file and the fix.
        source: TlsError,
    },
}

struct Bound {
    config: Arc<ListenerConfig>,
    socket: TcpListener,
    tls: Option<Arc<LiveTls>>,
    metrics: Arc<ListenerMetrics>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    config: Arc<ServerConfig>,
    /// The router's inbox (connections and [`BrokerHandle`]s send to it).
    tx: mpsc::Sender<ToRouter>,
    rx: mpsc::Receiver<ToRouter>,
    listeners: Vec<Bound>,
    reload: Arc<Notify>,
    auth: Arc<AuthState>,
    store: Option<(moat_store::DiskStore, moat_core::store::Snapshot)>,
    metrics: Arc<Metrics>,
    certs: Arc<certs::CertSets>,
    /// Each forwarding rule's sink, by rule name ([`Server::attach_sink`]).
    sinks: forward::Sinks,
}

impl Server {
    /// Attaches the sink of a forwarding rule (every rule of [`ServerConfig::forward`] needs
    /// one before [`Server::run`]). Nothing is connected here: a sink connects on its first
    /// write, and an unreachable one is retried while the spool keeps the messages.
    ///
    /// # Errors
    /// [`ServerError::NoSink`] if no rule has that name.
    pub fn attach_sink(&mut self, rule: &str, sink: Box<dyn Sink>) -> Result<(), ServerError> {
        if !self.config.forward.rules.iter().any(|r| r.name == rule) {
            return Err(ServerError::NoSink(rule.to_owned()));
        }
        if let Some(i) = self
            .config
            .forward
            .rules
            .iter()
            .position(|r| r.name == rule)
        {
            self.metrics.forward().set_sink(i, sink.describe());
        }
        self.sinks.0.insert(rule.to_owned(), sink);
        Ok(())
    }

    /// Binds every listener.
    ///
    /// # Errors
    /// [`ServerError`] if there is no listener or one cannot be bound.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        if config.listeners.is_empty() {
            return Err(ServerError::NoListeners);
        }
        if !config.forward.rules.is_empty() && config.store.is_none() {
            return Err(ServerError::ForwardWithoutStore);
        }
        let auth = Arc::new(AuthState::load(
            config.auth.clone(),
            config.max_concurrent_auth,
            config.connect_timeout,
        )?);
        // The store is opened and read before anything listens: a corrupt store refuses to
        // start (never a silent empty broker).
        let store = match &config.store {
            Some(s) => {
                let store = moat_store::DiskStore::open(&s.dir, s.durability)?;
                let snapshot = moat_core::store::Store::load(&store)?;
                info!(
                    path = %store.path().display(),
                    created = store.created(),
                    sessions = snapshot.sessions.len(),
                    retained = snapshot.retained.len(),
                    "store opened"
                );
                Some((store, snapshot))
            }
            None => None,
        };
        // Certificate sets: TLS listeners grouped by certificate file, each set named after its
        // first listener. A set deleted by the admin API stays deleted across restarts.
        let set_ids: std::collections::HashMap<&str, String> = {
            let mut firsts: Vec<(&std::path::Path, &str)> = Vec::new();
            let mut ids = std::collections::HashMap::new();
            for l in &config.listeners {
                let Some(t) = l.tls.as_ref().filter(|_| l.kind.is_tls()) else {
                    continue;
                };
                let id = match firsts.iter().find(|(c, _)| *c == t.cert.as_path()) {
                    Some((_, id)) => *id,
                    None => {
                        firsts.push((t.cert.as_path(), l.name.as_str()));
                        l.name.as_str()
                    }
                };
                ids.insert(l.name.as_str(), id.to_owned());
            }
            ids
        };
        let mut bound = Vec::new();
        for l in &config.listeners {
            // TLS material is checked before anything is bound: a bad file refuses to start.
            let tls = if l.kind.is_tls() {
                let Some(settings) = l.tls.clone() else {
                    return Err(ServerError::MissingTls {
                        name: l.name.clone(),
                        kind: l.kind,
                    });
                };
                let marker = set_ids
                    .get(l.name.as_str())
                    .map(|id| certs::removed_marker(&config.tls_state_dir, id))
                    .filter(|m| m.exists());
                let live = match marker {
                    Some(marker) => {
                        warn!(
                            listener = %l.name,
                            marker = %marker.display(),
                            "this listener's certificate set was deleted: it refuses TLS \
                             handshakes; stage and activate new material (or restore the \
                             previous one) with the admin API"
                        );
                        LiveTls::removed(&l.name, settings)
                    }
                    None => LiveTls::load(&l.name, settings, std::time::SystemTime::now())
                        .map_err(|source| ServerError::Tls {
                            name: l.name.clone(),
                            source,
                        })?,
                };
                Some(live)
            } else {
                None
            };
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            bound.push((Arc::new(l.clone()), socket, tls));
        }
        let names: Vec<_> = bound
            .iter()
            .map(|(l, _, tls)| (l.name.as_str(), tls.clone()))
            .collect();
        let tls_names = names
            .iter()
            .filter(|(_, tls)| tls.is_some())
            .map(|(name, _)| (*name).to_owned())
            .collect();
        let alarms = Arc::new(alarms::AlarmStatus::new(&config.tls_alarms, tls_names));
        let (mut metrics, per_listener) = Metrics::new(Arc::clone(&auth), &names, alarms);
        metrics.register_forward(&config.forward.rules);
        if let Some((store, _)) = &store {
            metrics.store().set_bytes(store.disk_usage());
        }
        let members = bound
            .iter()
            .filter_map(|(l, socket, tls)| {
                let live = tls.clone()?;
                let addr = socket.local_addr().ok()?;
                let cert = live.settings().cert;
                Some((
                    certs::Member {
                        name: l.name.clone(),
                        addr,
                        live,
                    },
                    cert,
                ))
            })
            .collect();
        let certs = Arc::new(certs::CertSets::new(
            config.tls_state_dir.clone(),
            certs::group(members),
            config.handshake_timeout,
        ));
        let listeners = bound
            .into_iter()
            .zip(per_listener)
            .map(|((config, socket, tls), metrics)| Bound {
                config,
                socket,
                tls,
                metrics,
            })
            .collect();
        let (tx, rx) = mpsc::channel(4096);
        Ok(Self {
            config: Arc::new(config),
            tx,
            rx,
            listeners,
            reload: Arc::new(Notify::new()),
            auth,
            store,
            metrics: Arc::new(metrics),
            certs,
            sinks: forward::Sinks::default(),
        })
    }

    /// A handle on the broker for everything that is not a socket (admin API, forwarders,
    /// tools): usable from any task while [`Server::run`] runs.
    pub fn handle(&self) -> BrokerHandle {
        let tls = self
            .listeners
            .iter()
            .filter_map(|b| b.tls.clone().map(|t| (b.config.name.clone(), t)))
            .collect();
        let listeners: Vec<_> = self
            .listeners
            .iter()
            .map(|b| handle::ListenerEntry {
                name: b.config.name.clone(),
                kind: b.config.kind,
                address: b.socket.local_addr().unwrap_or(b.config.bind),
                metrics: Arc::clone(&b.metrics),
            })
            .collect();
        BrokerHandle::new(
            self.tx.clone(),
            Arc::clone(&self.metrics),
            Arc::new(tls),
            listeners.into(),
            Arc::clone(&self.auth),
            Arc::clone(&self.certs),
        )
    }

    /// Authentication counters (failures by kind, password checks), readable while it runs.
    pub fn auth_stats(&self) -> AuthStats {
        AuthStats(Arc::clone(&self.auth))
    }

    /// Notifying this makes every TLS listener re-read its files now (what SIGHUP does).
    pub fn reload_trigger(&self) -> Arc<Notify> {
        Arc::clone(&self.reload)
    }

    /// The live TLS state of a listener, by name: replace or remove its certificate while
    /// running.
    pub fn tls(&self, name: &str) -> Option<Arc<LiveTls>> {
        self.listeners
            .iter()
            .find(|b| b.config.name == name)
            .and_then(|b| b.tls.clone())
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|b| {
                b.socket
                    .local_addr()
                    .ok()
                    .map(|a| (b.config.name.clone(), a))
            })
            .collect()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    ///
    /// # Errors
    /// [`ServerError::StoreFailed`] if the store failed while running: listeners stop, v5
    /// clients get DISCONNECT 0x80 with a reason string, and the server returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let handle = self.handle();
        let config = self.config;
        let stop_accepting = CancellationToken::new();
        let router_stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let (tx, rx) = (self.tx, self.rx);
        let mut broker_config = config.broker.clone();
        // A retained batch fits in half an outbox: the router reports room once an outbox is
        // at most half full, so a batch never meets a full outbox.
        broker_config.retained_batch = broker_config
            .retained_batch
            .clamp(1, (config.max_outbox_packets / 2).max(1));
        // A random seed for what the core would otherwise pick at random (assigned client ids).
        broker_config.seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0);
        let started = tokio::time::Instant::now().into_std();
        let mut broker = Broker::new(broker_config, started);
        broker.set_clock(started, unix_ms_now());
        broker.set_authorizer(Box::new(AclAuthorizer(Arc::clone(&self.auth))));
        broker.set_sys_source(Box::new(SysValues(Arc::clone(&self.metrics))));
        let fatal = CancellationToken::new();
        let store = match self.store {
            Some((store, snapshot)) => {
                let now = tokio::time::Instant::now().into_std();
                broker.enable_persistence(now, unix_ms_now());
                for item in broker.restore(snapshot, now) {
                    tracing::warn!(store = %store.path().display(), "not loaded from the store: {item}");
                }
                Some(store)
            }
            None => None,
        };
        // Forwarding: the router spools, one task per rule delivers.
        let mut sinks = self.sinks.0;
        let mut forwarding = None;
        let mut rule_tasks = Vec::new();
        let forward_stop = CancellationToken::new();
        if let (false, Some(store)) = (config.forward.rules.is_empty(), &store) {
            let reader = store.spool_reader();
            let (f, handles) =
                forward::Forwarding::new(&config.forward, &reader, self.metrics.forward())?;
            for (i, (rule, wake)) in config.forward.rules.iter().zip(handles.wakes).enumerate() {
                let sink = sinks
                    .remove(&rule.name)
                    .ok_or_else(|| ServerError::NoSink(rule.name.clone()))?;
                rule_tasks.push(tokio::spawn(forward::run_rule(
                    i,
                    rule.name.clone(),
                    sink,
                    reader.clone(),
                    wake,
                    tx.clone(),
                    config.forward.clone(),
                    self.metrics.forward(),
                    forward_stop.clone(),
                )));
            }
            forwarding = Some(f);
        }
        let router = Router::new(broker, rx, config.max_outbox_packets)
            .with_store(store, fatal.clone(), self.metrics.store())
            .with_forwarding(forwarding);
        let router_task = tokio::spawn(router.run(router_stop.clone()));

        let shared = Arc::new(Shared {
            config: Arc::clone(&config),
            router: tx,
            hard_stop,
            auth: Arc::clone(&self.auth),
        });
        // Password file and ACL: re-read on change and on the reload trigger (SIGHUP).
        {
            let auth = Arc::clone(&self.auth);
            let trigger = Arc::clone(&self.reload);
            let interval = config.tls_poll_interval;
            let stop = stop_accepting.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = trigger.notified() => {}
                        () = stop.cancelled() => return,
                    }
                    let auth = Arc::clone(&auth);
                    let _ = tokio::task::spawn_blocking(move || auth.reload()).await;
                }
            });
        }
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let next_id = Arc::new(AtomicU64::new(1));
        let mut accept_tasks = Vec::new();
        // Expiry alarms: only where there is TLS (certificates to watch).
        let alarm_status = self.metrics.alarms();
        if alarm_status.enabled() {
            let alarms = alarms::run(handle, alarm_status, config.tls_alarms.clone());
            let stop = stop_accepting.clone();
            accept_tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = alarms => {}
                    () = stop.cancelled() => {}
                }
            }));
        }
        for bound in self.listeners {
            let Bound {
                config: listener,
                socket,
                tls,
                metrics,
            } = bound;
            if let Ok(addr) = socket.local_addr() {
                info!(listener = %listener.name, %addr, kind = ?listener.kind, "listening");
            }
            if let Some(live) = &tls {
                let stop = stop_accepting.clone();
                let watch = watch_tls(
                    Arc::clone(live),
                    Arc::clone(&self.reload),
                    config.tls_poll_interval,
                );
                accept_tasks.push(tokio::spawn(async move {
                    tokio::select! {
                        () = watch => {}
                        () = stop.cancelled() => {}
                    }
                }));
            }
            let accept = accept_loop(
                socket,
                listener,
                metrics,
                tls,
                Arc::clone(&shared),
                tracker.clone(),
                Arc::clone(&permits),
                Arc::clone(&next_id),
            );
            let stop = stop_accepting.clone();
            accept_tasks.push(tokio::spawn(async move {
                tokio::select! {
                    () = accept => {}
                    () = stop.cancelled() => {}
                }
            }));
        }

        tokio::select! {
            () = shutdown => info!("shutting down"),
            () = fatal.cancelled() => error!("the store failed: shutting down"),
        }
        stop_accepting.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
        // A sink write in flight is abandoned: its records stay spooled for the next start.
        forward_stop.cancel();
        for t in rule_tasks {
            let _ = t.await;
        }
        // The router disconnects everyone (DISCONNECT 0x8B to v5 clients) and closes outboxes;
        // connection tasks flush and end.
        router_stop.cancel();
        let failure = router_task.await.ok().flatten();
        tracker.close();
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!("connections still open after the grace period; dropping them");
            shared.hard_stop.cancel();
            tracker.wait().await;
        }
        info!("stopped");
        failure.map_or(Ok(()), Err)
    }
}

/// The wall clock in Unix milliseconds.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Re-reads a TLS listener's files every `interval` and whenever `trigger` is notified, and
/// checks its CRLs' and stapled OCSP responses' next updates each time (they go stale while
/// no file changes).
async fn watch_tls(live: Arc<LiveTls>, trigger: Arc<Notify>, interval: Duration) {
    loop {
        live.check_crls(std::time::SystemTime::now());
        live.check_ocsp(std::time::SystemTime::now());
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = trigger.notified() => {}
        }
        let live2 = Arc::clone(&live);
        let outcome =
            tokio::task::spawn_blocking(move || live2.reload(std::time::SystemTime::now())).await;
        let Ok(outcome) = outcome else { continue };
        let name = live.name();
        match outcome {
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Replaced {
                warnings,
                revoked,
                untrusted,
                sets_removed,
                closed,
            } => {
                for w in warnings {
                    warn!(listener = name, "{w}");
                }
                info!(
                    listener = name,
                    revoked,
                    untrusted,
                    sni_sets_removed = sets_removed.len(),
                    closed,
                    "TLS material replaced; new handshakes use it"
                );
            }
            ReloadOutcome::Removed { closed } => warn!(
                listener = name,
                closed,
                "TLS certificate removed: its clients were disconnected and new handshakes are \
                 refused until a certificate is back"
            ),
            ReloadOutcome::Failed(e) => {
                error!(listener = name, error = %Chain(&e), "new TLS files refused; the old ones stay in use");
            }
            _ => {}
        }
    }
}

#[allow(clippy::too_many_arguments)] // each is one of the listener's shared parts
async fn accept_loop(
    socket: TcpListener,
    listener: Arc<ListenerConfig>,
    metrics: Arc<ListenerMetrics>,
    tls: Option<Arc<LiveTls>>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
    next_id: Arc<AtomicU64>,
) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(x) => x,
            Err(e) => {
                if is_connection_error(&e) {
                    continue;
                }
                // EMFILE and friends: wait a little instead of spinning.
                error!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            warn!(listener = %listener.name, %peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnId(next_id.fetch_add(1, Ordering::Relaxed));
        // A debug-level span: at the default level it costs an idle connection nothing, and
        // the events that matter at info level carry the connection's fields themselves.
        let span = debug_span!(
            "conn",
            id = conn.0,
            listener = %listener.name,
            %peer,
            tls = tracing::field::Empty,
            identity = tracing::field::Empty,
            cert = tracing::field::Empty,
            client_id = tracing::field::Empty
        );
        let listener = Arc::clone(&listener);
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        let task = connection::serve(Box::new(connection::Accepted {
            stream,
            conn,
            peer,
            listener,
            live_tls: tls,
            shared,
            slot: metrics.admit(permit),
        }));
        if span.is_disabled() {
            tracker.spawn(task);
        } else {
            tracker.spawn(task.instrument(span));
        }
    }
}

/// Runs the transport's handshakes (TLS, WebSocket), each under its own timeout, inside the
/// connection's task. `None` when one failed (it is logged and counted).
pub(crate) async fn open_transport(
    stream: TcpStream,
    peer: SocketAddr,
    listener: &ListenerConfig,
    tls: Option<Arc<LiveTls>>,
    shared: &Shared,
) -> Option<(connection::BoxIo, Option<Box<TlsConn>>)> {
    let timeout = shared.config.handshake_timeout;
    let max_packet = shared.config.broker.max_packet_size;
    // This whole function runs boxed: the handshakes' state is freed once they are done, and
    // the task's own future stays the size of the MQTT loop.
    let (io, info): (connection::BoxIo, _) = match (listener.kind, tls) {
        (ListenerKind::Tcp, _) => (Box::new(stream), None),
        (ListenerKind::Ws, _) => {
            let ws = ws_upgrade(stream, listener, timeout, max_packet).await?;
            (Box::new(ws), None)
        }
        (ListenerKind::Tls, Some(live)) => {
            let (stream, info) = tls_accept(stream, peer, &live, timeout).await?;
            (Box::new(stream), Some(Box::new(info)))
        }
        (ListenerKind::Wss, Some(live)) => {
            let (stream, info) = tls_accept(stream, peer, &live, timeout).await?;
            let ws = ws_upgrade(stream, listener, timeout, max_packet).await?;
            (Box::new(ws), Some(Box::new(info)))
        }
        (kind, None) => {
            error!(?kind, "TLS listener without TLS state");
            return None;
        }
    };
    Some((io, info))
}

async fn ws_upgrade<IO>(
    io: IO,
    listener: &ListenerConfig,
    timeout: Duration,
    max_packet_size: u32,
) -> Option<ws::WsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(
        timeout,
        ws::accept_with_max_packet_size(io, &listener.path, max_packet_size),
    )
    .await
    {
        Err(_) => {
            info!("websocket upgrade timed out");
            None
        }
        Ok(Err(e)) if e.is_closed_before_request() => {
            tracing::debug!(error = %Chain(&e), "websocket upgrade: closed before a request");
            None
        }
        Ok(Err(e)) => {
            info!(error = %Chain(&e), "websocket upgrade failed");
            None
        }
        Ok(Ok(ws)) => Some(ws),
    }
}

/// A server TLS stream over TCP whose session tickets wait for the broker's first write.
pub(crate) type TlsTcp = tokio_rustls::server::TlsStream<ticket_hold::TicketHold<TcpStream>>;

async fn tls_accept(
    stream: TcpStream,
    peer: SocketAddr,
    live: &Arc<LiveTls>,
    timeout: Duration,
) -> Option<(TlsTcp, TlsConn)> {
    let Some(acceptor) = live.acceptor() else {
        live.failures.record(FailureRecord {
            at: std::time::SystemTime::now(),
            peer,
            reason: HandshakeFailure::NoServerCertificate,
            detail: "the listener has no certificate".to_owned(),
        });
        warn!(
            %peer,
            reason = %HandshakeFailure::NoServerCertificate,
            "TLS handshake refused: this listener's certificate was removed; put a certificate back"
        );
        return None;
    };
    if let Some(detail) = live.crl_refusal(std::time::SystemTime::now()) {
        let reason = HandshakeFailure::CrlStale;
        warn!(%peer, %reason, hint = reason.hint(), error = %detail, "TLS handshake refused");
        live.failures.record(FailureRecord {
            at: std::time::SystemTime::now(),
            peer,
            reason,
            detail,
        });
        return None;
    }
    let stream = ticket_hold::TicketHold::new(stream);
    let accept = acceptor.accept(stream).into_fallible();
    let (accepted, revoked_by) =
        moat_tls::noting_revocation(tokio::time::timeout(timeout, accept)).await;
    let failure = match accepted {
        Ok(Ok(mut tls_stream)) => {
            // The tickets rustls wrote at the end of the handshake leave with the CONNACK.
            tls_stream.get_mut().0.established();
            let identity = tls_stream.get_ref().1.peer_certificates().and_then(|c| {
                let presented: Vec<&[u8]> = c.iter().map(AsRef::as_ref).collect();
                live.identify(&presented)
            });
            let guard = live.register(identity.as_ref(), tls_stream.get_ref().1.server_name());
            let source = live.identity_source();
            let version = match tls_stream.get_ref().1.protocol_version() {
                Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            };
            return Some((
                tls_stream,
                TlsConn {
                    identity,
                    source,
                    guard,
                    version,
                },
            ));
        }
        Ok(Err((e, mut io))) => {
            // The alert that tells the client why, if rustls wrote one (held as it would hold
            // tickets: an encrypted record).
            let _ = tokio::time::timeout(Duration::from_secs(1), io.release()).await;
            (HandshakeFailure::classify(&e), e.to_string())
        }
        Err(_) => (
            HandshakeFailure::Timeout,
            "no handshake within the timeout".to_owned(),
        ),
    };
    let (reason, mut detail) = failure;
    if let Some(by) = revoked_by {
        // The serial, the certificate, the CRL file and its issuer, in the one line.
        detail = format!("{detail}: {by}");
    }
    warn!(%peer, %reason, hint = reason.hint(), error = %detail, "TLS handshake failed");
    live.failures.record(FailureRecord {
        at: std::time::SystemTime::now(),
        peer,
        reason,
        detail,
    });
    None
}

/// An error and its causes, `a: b: c` (what `{:#}` prints for an anyhow error), for log
/// fields: the errors' `Display` describes one level each.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        // Bounded: a chain is a handful of levels; a cycle would be a bug elsewhere.
        for _ in 0..16 {
            let Some(c) = cause else { break };
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
