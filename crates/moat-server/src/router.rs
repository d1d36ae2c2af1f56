//! The router task: the one owner of the broker core. Connections send it packets over a
//! bounded channel (so a fast publisher is slowed down when the router is busy) and it pushes
//! packets into each connection's outbox (never waiting on a slow client).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use moat_codec::{Connect, Packet, QoS};
use moat_core::store::{Store, StoreOp};
use moat_core::{Action, Broker, ClientInfo, ConnId, ConnectOutcome};
use moat_store::{DiskStore, Durability};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

/// How often keep-alives are checked: a dead client is found within 1.5 times its keep-alive
/// plus this.
const KEEP_ALIVE_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Messages from connection tasks to the router.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // most messages are packets; boxing them costs more
pub(crate) enum ToRouter {
    Connect {
        conn: ConnId,
        connect: Box<Connect>,
        info: ClientInfo,
        outbox: Arc<Outbox>,
        reply: oneshot::Sender<ConnectOutcome>,
    },
    Packet {
        conn: ConnId,
        packet: Packet,
    },
    Closed {
        conn: ConnId,
        /// Set when the connection ended unusually (logged with the client id).
        note: Option<Box<EndNote>>,
    },
}

/// How a connection ended, when that is worth an info-level line.
#[derive(Debug)]
pub(crate) struct EndNote {
    pub(crate) reason: String,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) listener: Arc<str>,
}

/// Counters kept by the server (beside the core's).
#[derive(Debug, Default)]
pub(crate) struct ServerStats {
    pub(crate) qos0_dropped_slow: AtomicU64,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) struct Router {
    pub(crate) broker: Broker,
    pub(crate) rx: mpsc::Receiver<ToRouter>,
    pub(crate) outboxes: HashMap<ConnId, Arc<Outbox>>,
    pub(crate) max_outbox_packets: usize,
    pub(crate) stats: Arc<ServerStats>,
    actions: Vec<Action>,
    /// The durable store: each batch's ops are made durable before its actions (PUBACK,
    /// PUBREC...) go out.
    store: Option<DiskStore>,
    store_ops: Vec<StoreOp>,
    /// Messages handled per batch: 256 with group commit, 1 with fsync-each.
    batch_limit: usize,
    /// Cancelled when the store fails: the server stops rather than acknowledge what it
    /// cannot keep.
    fatal: CancellationToken,
}

impl Router {
    pub(crate) fn new(
        broker: Broker,
        rx: mpsc::Receiver<ToRouter>,
        max_outbox_packets: usize,
        stats: Arc<ServerStats>,
    ) -> Self {
        Self {
            broker,
            rx,
            outboxes: HashMap::new(),
            max_outbox_packets,
            stats,
            actions: Vec::new(),
            store: None,
            store_ops: Vec::new(),
            batch_limit: 256,
            fatal: CancellationToken::new(),
        }
    }

    pub(crate) fn with_store(mut self, store: Option<DiskStore>, fatal: CancellationToken) -> Self {
        if let Some(s) = &store {
            if s.durability() == Durability::FsyncEach {
                self.batch_limit = 1;
            }
        }
        self.store = store;
        self.fatal = fatal;
        self
    }

    /// Makes the ops of the current batch durable. Returns false if the store failed.
    async fn commit(&mut self) -> bool {
        self.broker.drain_store_ops_into(&mut self.store_ops);
        if self.store_ops.is_empty() {
            return true;
        }
        let Some(mut store) = self.store.take() else {
            self.store_ops.clear();
            return true;
        };
        let ops = std::mem::take(&mut self.store_ops);
        let result = tokio::task::spawn_blocking(move || {
            let r = store.apply(&ops);
            (store, ops, r)
        })
        .await;
        match result {
            Ok((store, mut ops, Ok(()))) => {
                self.broker.set_store_bytes(store.disk_usage());
                self.store = Some(store);
                ops.clear();
                self.store_ops = ops;
                true
            }
            Ok((_, _, Err(e))) => {
                tracing::error!(error = %crate::Chain(&e), "the store failed: stopping without acknowledging what it could not keep");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "the store task failed: stopping");
                false
            }
        }
    }

    /// Runs until `shutdown` is cancelled (then disconnects everyone) or every sender is gone.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(256);
        // Keep-alive: one sweep a second over every connection instead of a timer per
        // connection (an expired one is closed through its outbox).
        let mut sweep = tokio::time::interval(KEEP_ALIVE_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .broker
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                n = self.rx.recv_many(&mut batch, self.batch_limit) => {
                    if n == 0 {
                        break;
                    }
                    for msg in batch.drain(..) {
                        self.handle(msg);
                    }
                }
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => self.broker.tick(now()),
                _ = sweep.tick() => {
                    let now_ms = crate::outbox::clock_ms();
                    for outbox in self.outboxes.values() {
                        outbox.expire_if_idle(now_ms);
                    }
                }
            }
            if !self.commit().await {
                // Nothing of this batch is acknowledged; everyone is disconnected.
                self.actions.clear();
                self.broker.take_actions();
                self.fatal.cancel();
                break;
            }
            if self.apply_actions() {
                // A subscriber's outbox is filling up: let its task write before routing more
                // (with many publishers the router would otherwise run batch after batch and
                // QoS 0 would be dropped at that outbox).
                tokio::task::yield_now().await;
            }
        }
        self.broker.shutdown();
        let _ = self.apply_actions();
        // Whatever is still queued must not hold connections open.
        for outbox in self.outboxes.values() {
            outbox.close();
        }
    }

    fn handle(&mut self, msg: ToRouter) {
        let now = now();
        match msg {
            ToRouter::Connect {
                conn,
                connect,
                info,
                outbox,
                reply,
            } => {
                self.outboxes.insert(conn, outbox);
                // Apply what is pending first so that a takeover's DISCONNECT goes out in order.
                let outcome = self.broker.connect(conn, *connect, info, now);
                let _ = reply.send(outcome);
            }
            ToRouter::Packet { conn, packet } => self.broker.handle_packet(conn, packet, now),
            ToRouter::Closed { conn, note } => {
                if let Some(n) = note {
                    tracing::info!(
                        id = conn.0,
                        listener = %n.listener,
                        peer = %n.peer,
                        client_id = self.broker.client_id(conn).unwrap_or(""),
                        reason = %n.reason,
                        "connection ended"
                    );
                }
                self.broker.connection_lost(conn, now);
                self.outboxes.remove(&conn);
            }
        }
    }

    /// Queues the core's actions on the outboxes. Returns true if an outbox is more than half
    /// full: its connection task should get to run before the next batch.
    fn apply_actions(&mut self) -> bool {
        let mut pressure = false;
        self.broker.drain_actions_into(&mut self.actions);
        for action in self.actions.drain(..) {
            match action {
                Action::Send(conn, packet) => {
                    let Some(outbox) = self.outboxes.get(&conn) else {
                        continue;
                    };
                    if let Packet::Publish(p) = &packet {
                        if p.qos == QoS::AtMostOnce && outbox.len() >= self.max_outbox_packets {
                            self.stats.qos0_dropped_slow.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    outbox.push(packet);
                    pressure |= outbox.len() * 2 >= self.max_outbox_packets;
                }
                Action::Close(conn) => {
                    if let Some(outbox) = self.outboxes.remove(&conn) {
                        outbox.close();
                    }
                }
            }
        }
        pressure
    }
}
