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

mod config;
mod connection;
mod outbox;
mod router;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moat_core::{Broker, ConnId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

pub use config::{ListenerConfig, ListenerKind, ServerConfig};

use crate::connection::Shared;
use crate::router::{Router, ServerStats};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listener's address could not be bound.
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
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
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    config: Arc<ServerConfig>,
    listeners: Vec<(Arc<ListenerConfig>, TcpListener)>,
}

impl Server {
    /// Binds every listener.
    ///
    /// # Errors
    /// [`ServerError`] if there is no listener or one cannot be bound.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        if config.listeners.is_empty() {
            return Err(ServerError::NoListeners);
        }
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let socket = TcpListener::bind(l.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            listeners.push((Arc::new(l.clone()), socket));
        }
        Ok(Self {
            config: Arc::new(config),
            listeners,
        })
    }

    /// The bound address of each listener, by name (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, s)| s.local_addr().ok().map(|a| (l.name.clone(), a)))
            .collect()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let config = self.config;
        let stop_accepting = CancellationToken::new();
        let router_stop = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel(4096);
        let stats = Arc::new(ServerStats::default());
        let broker = Broker::new(
            config.broker.clone(),
            tokio::time::Instant::now().into_std(),
        );
        let router = Router::new(broker, rx, config.max_outbox_packets, Arc::clone(&stats));
        let router_task = tokio::spawn(router.run(router_stop.clone()));

        let shared = Arc::new(Shared {
            config: Arc::clone(&config),
            router: tx,
            hard_stop,
        });
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let next_id = Arc::new(AtomicU64::new(1));
        let mut accept_tasks = Vec::new();
        for (listener, socket) in self.listeners {
            if let Ok(addr) = socket.local_addr() {
                info!(listener = %listener.name, %addr, kind = ?listener.kind, "listening");
            }
            let accept = accept_loop(
                socket,
                listener,
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

        shutdown.await;
        info!("shutting down");
        stop_accepting.cancel();
        for t in accept_tasks {
            let _ = t.await;
        }
        // The router disconnects everyone (DISCONNECT 0x8B to v5 clients) and closes outboxes;
        // connection tasks flush and end.
        router_stop.cancel();
        let _ = router_task.await;
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
    }
}

async fn accept_loop(
    socket: TcpListener,
    listener: Arc<ListenerConfig>,
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
        let span = info_span!(
            "conn",
            id = conn.0,
            listener = %listener.name,
            %peer,
            client_id = tracing::field::Empty
        );
        let listener = Arc::clone(&listener);
        let shared = Arc::clone(&shared);
        tracker.spawn(
            async move {
                connection::serve(stream, conn, peer, listener, shared).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
