//! The router task: the engine that drives the broker core. It is the core's one owner: it
//! turns what connections and the [`crate::BrokerHandle`] send it into core
//! [`Input`]s, and acts on the core's [`Output`]s in order (the effects: outboxes, the store,
//! replies, consumers of accepted messages).
//!
//! Connections send over a bounded channel (so a fast publisher is slowed down when the router
//! is busy); the router pushes packets into each connection's outbox and never waits on a slow
//! client.
//!
//! The durability rule lives in [`Router::flush`], and only there: an output that follows an
//! [`Output::Persist`] is acted on only once that op is durable, so no PUBACK/PUBREC leaves
//! before what it acknowledges is kept (all ops of a batch share one fsync: group commit).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use moat_codec::{Connect, Packet, QoS, ReasonCode};
use moat_core::store::{Store, StoreOp};
use moat_core::{
    AcceptedMessage, AdminReply, AdminRequest, Broker, ClientInfo, ConnId, ConnectOutcome, Input,
    Message, Output, RequestId,
};
use moat_store::{DiskStore, Durability};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::forward::Forwarding;
use crate::metrics::StoreMetrics;
use crate::outbox::Outbox;

/// Messages to the router: from connection tasks and from [`crate::BrokerHandle`]s.
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
    /// The connection drained its outbox after the router asked ([`Outbox::want_room`]).
    Room {
        conn: ConnId,
    },
    Closed {
        conn: ConnId,
        /// Set when the connection ended unusually (logged with the client id).
        note: Option<Box<EndNote>>,
    },
    /// An operator's request, answered on `reply`.
    Admin {
        request: AdminRequest,
        reply: oneshot::Sender<AdminReply>,
    },
    /// A consumer of every accepted message (bounded: the router waits for it).
    WatchAccepted {
        tx: mpsc::Sender<Arc<AcceptedMessage>>,
    },
    /// A forwarding rule's sink confirmed these spooled records.
    Forwarded {
        rule: usize,
        keys: Vec<u64>,
        bytes: u64,
    },
    /// A message from the server itself (a `$SYS` event): delivered to the subscriptions
    /// that match, retained if it says so.
    Publish {
        message: Arc<Message>,
    },
}

/// How a connection ended, when that is worth an info-level line.
#[derive(Debug)]
pub(crate) struct EndNote {
    pub(crate) reason: String,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) listener: Arc<str>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) struct Router {
    pub(crate) broker: Broker,
    pub(crate) rx: mpsc::Receiver<ToRouter>,
    /// Keyed by ids the server counts out itself: the fast hash is safe.
    pub(crate) outboxes: FxHashMap<ConnId, Arc<Outbox>>,
    pub(crate) max_outbox_packets: usize,
    outputs: Vec<Output>,
    /// CONNACK decisions the connection tasks wait for.
    connecting: FxHashMap<ConnId, oneshot::Sender<ConnectOutcome>>,
    /// Admin requests waiting for their reply.
    /// (Ids the router counts out itself: the Fx hash, as for connections.)
    requests: FxHashMap<RequestId, oneshot::Sender<AdminReply>>,
    next_request: u64,
    /// Consumers of accepted messages (the core reports them while there are any).
    watchers: Vec<mpsc::Sender<Arc<AcceptedMessage>>>,
    /// The durable store: each batch's ops are made durable before the outputs after them.
    store: Option<DiskStore>,
    store_ops: Vec<StoreOp>,
    /// Commit latency and the store's size, for the metrics.
    store_metrics: Option<StoreMetrics>,
    /// Messages handled per batch: 256 with group commit, 1 with fsync-each.
    batch_limit: usize,
    /// Cancelled when the store fails: the server stops rather than acknowledge what it
    /// cannot keep.
    fatal: CancellationToken,
    /// Why the router stopped on its own (the store failed).
    failure: Option<crate::ServerError>,
    /// Forwarding rules: accepted messages they match are spooled before their
    /// acknowledgement.
    forward: Option<Forwarding>,
    /// Wake-ups to route without gathering first ([`Router::gather`]), and how many the last
    /// fruitless gather set.
    gather_skip: u32,
    gather_backoff: u32,
}

/// What woke the router.
enum Wake {
    Stop,
    /// How many messages came (0: every sender is gone).
    Messages(usize),
    Timer,
}

impl Router {
    pub(crate) fn new(
        broker: Broker,
        rx: mpsc::Receiver<ToRouter>,
        max_outbox_packets: usize,
    ) -> Self {
        Self {
            broker,
            rx,
            outboxes: FxHashMap::default(),
            max_outbox_packets,
            outputs: Vec::new(),
            connecting: FxHashMap::default(),
            requests: FxHashMap::default(),
            next_request: 1,
            watchers: Vec::new(),
            store: None,
            store_ops: Vec::new(),
            store_metrics: None,
            batch_limit: 256,
            fatal: CancellationToken::new(),
            failure: None,
            forward: None,
            gather_skip: 0,
            gather_backoff: 0,
        }
    }

    /// Spools the accepted messages that `forwarding`'s rules match (the core reports them
    /// from the start).
    pub(crate) fn with_forwarding(mut self, forwarding: Option<Forwarding>) -> Self {
        if forwarding.is_some() {
            let request = AdminRequest::ReportAccepted(true);
            self.broker.handle(
                Input::Admin {
                    id: RequestId(0),
                    request,
                },
                now(),
            );
            // The reply to that request is not anyone's.
            self.broker.drain_outputs_into(&mut self.outputs);
            self.outputs.clear();
        }
        self.forward = forwarding;
        self
    }

    pub(crate) fn with_store(
        mut self,
        store: Option<DiskStore>,
        fatal: CancellationToken,
        metrics: StoreMetrics,
    ) -> Self {
        if let Some(s) = &store {
            if s.durability() == Durability::FsyncEach {
                self.batch_limit = 1;
            }
        }
        self.store = store;
        self.fatal = fatal;
        self.store_metrics = Some(metrics);
        self
    }

    /// Makes `store_ops` durable. Returns false if the store failed.
    async fn commit(&mut self) -> bool {
        if self.store_ops.is_empty() {
            return true;
        }
        let Some(mut store) = self.store.take() else {
            self.store_ops.clear();
            return true;
        };
        let ops = std::mem::take(&mut self.store_ops);
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let r = store.apply(&ops);
            (store, ops, r)
        })
        .await;
        match result {
            Ok((store, mut ops, Ok(()))) => {
                let bytes = store.disk_usage();
                if let Some(m) = &self.store_metrics {
                    m.committed(started.elapsed(), bytes);
                }
                self.broker.set_store_bytes(bytes);
                self.store = Some(store);
                ops.clear();
                self.store_ops = ops;
                true
            }
            Ok((_, _, Err(e))) => {
                tracing::error!(error = %crate::Chain(&e), "the store failed: stopping without acknowledging what it could not keep");
                self.failure = Some(crate::ServerError::StoreFailed(e));
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "the store task failed: stopping");
                self.failure = Some(crate::ServerError::StoreTask(e.to_string()));
                false
            }
        }
    }

    /// Runs until `shutdown` is cancelled (then disconnects everyone) or every sender is gone.
    /// Returns the reason if the router stopped on its own (the store failed): the server
    /// then stops too.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Option<crate::ServerError> {
        let mut batch = Vec::with_capacity(256);
        // One timer for the core's deadlines, moved only when the next deadline changes (not
        // made and dropped on every wake-up).
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        // The shutdown is registered for once; every wake-up then only checks its flag.
        let stop = shutdown.cancelled();
        tokio::pin!(timer, stop);
        let mut stop_armed = false;
        loop {
            let deadline = self
                .broker
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            if let Some(d) = deadline {
                if timer.deadline() != d {
                    timer.as_mut().reset(d);
                }
            }
            // One hand-written poll, in the order a biased `select!` would take: the shutdown,
            // then messages, then the core's timer.
            let limit = self.batch_limit;
            let wake = std::future::poll_fn(|cx| {
                if shutdown.is_cancelled() {
                    return Poll::Ready(Wake::Stop);
                }
                if !stop_armed {
                    stop_armed = true;
                    if stop.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Stop);
                    }
                }
                if let Poll::Ready(n) = self.rx.poll_recv_many(cx, &mut batch, limit) {
                    return Poll::Ready(Wake::Messages(n));
                }
                if deadline.is_some() && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Stop | Wake::Messages(0) => break,
                Wake::Messages(n) => {
                    if n < self.batch_limit {
                        self.gather(&mut batch).await;
                    }
                    self.broker.begin_batch();
                    for msg in batch.drain(..) {
                        self.handle(msg);
                    }
                    self.broker.end_batch();
                }
                Wake::Timer => self.broker.handle_timeout(now()),
            }
            match self.flush().await {
                Ok(true) => {
                    // A subscriber's outbox is filling up: let its task write before routing
                    // more (with many publishers the router would otherwise run batch after
                    // batch and QoS 0 would be dropped at that outbox).
                    tokio::task::yield_now().await;
                }
                Ok(false) => {}
                Err(()) => {
                    // Nothing after the failed ops is acted on; everyone is disconnected.
                    self.outputs.clear();
                    self.fatal.cancel();
                    break;
                }
            }
        }
        if self.failure.is_some() {
            // What the core produced after the failure is dropped unseen.
            while self.broker.poll_output().is_some() {}
            self.broker
                .shutdown_with(ReasonCode::UNSPECIFIED_ERROR, "the broker's store failed");
        } else {
            self.broker.shutdown();
        }
        self.broker.drain_outputs_into(&mut self.outputs);
        self.outputs.retain(|o| !matches!(o, Output::Persist(_)));
        let _ = self.apply(&mut Vec::new());
        // Whatever is still queued must not hold connections open.
        for outbox in self.outboxes.values() {
            outbox.close();
        }
        self.failure
    }

    /// Lets the other tasks that are ready run once, then takes what they sent. When many
    /// clients each send a little (a fleet of devices), the connections the same readiness
    /// event woke all hand over their packets first and the router routes them as one batch:
    /// a subscriber then gets one write for the batch instead of one per message, and a
    /// quiet router costs one more task poll per wake-up.
    ///
    /// The yield costs a poll of the I/O driver when nothing else is ready (one client alone
    /// sending now and then): a gather that brings nothing makes the router skip the next
    /// ones, twice as many each time (at most 7), and one that brings something resets that.
    async fn gather(&mut self, batch: &mut Vec<ToRouter>) {
        if self.gather_skip > 0 {
            self.gather_skip -= 1;
            return;
        }
        let before = batch.len();
        tokio::task::yield_now().await;
        while batch.len() < self.batch_limit {
            match self.rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        if batch.len() > before {
            self.gather_backoff = 0;
        } else {
            self.gather_backoff = (self.gather_backoff * 2 + 1).min(7);
            self.gather_skip = self.gather_backoff;
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
                self.connecting.insert(conn, reply);
                let input = Input::Connect {
                    conn,
                    connect,
                    info,
                };
                self.broker.handle(input, now);
            }
            ToRouter::Packet { conn, packet } => {
                self.broker.handle(Input::Packet { conn, packet }, now);
            }
            ToRouter::Room { conn } => self.broker.handle(Input::Writable { conn }, now),
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
                self.broker.handle(Input::Lost { conn }, now);
                self.outboxes.remove(&conn);
                self.connecting.remove(&conn);
                if let Some(f) = &mut self.forward {
                    f.closed(conn);
                }
            }
            ToRouter::Admin { request, reply } => {
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.requests.insert(id, reply);
                self.broker.handle(Input::Admin { id, request }, now);
            }
            ToRouter::Forwarded { rule, keys, bytes } => {
                if let Some(f) = &mut self.forward {
                    f.forwarded(rule, keys, bytes, &mut self.store_ops, &self.outboxes);
                }
            }
            ToRouter::Publish { message } => {
                self.broker.handle(Input::Remote { message }, now);
            }
            ToRouter::WatchAccepted { tx } => {
                self.watchers.push(tx);
                let id = RequestId(0);
                let request = AdminRequest::ReportAccepted(true);
                self.broker.handle(Input::Admin { id, request }, now);
            }
        }
    }

    /// Acts on the core's outputs in order, until it has no more. The durability rule: every
    /// `Persist` op of a drain is made durable before any other output of that drain is acted
    /// on. Returns whether an outbox is more than half full (its connection task should run
    /// before the next batch), or `Err` if the store failed.
    async fn flush(&mut self) -> Result<bool, ()> {
        let mut pressure = false;
        let mut writable = Vec::new();
        loop {
            self.broker.drain_outputs_into(&mut self.outputs);
            if self.outputs.is_empty() {
                return Ok(pressure);
            }
            let spooling = self.forward.is_some()
                && self
                    .outputs
                    .iter()
                    .any(|o| matches!(o, Output::Accepted(_)));
            if spooling
                || !self.store_ops.is_empty()
                || self.outputs.iter().any(|o| matches!(o, Output::Persist(_)))
            {
                let mut rest = Vec::with_capacity(self.outputs.len());
                for output in self.outputs.drain(..) {
                    match output {
                        Output::Persist(op) => self.store_ops.push(op),
                        Output::Accepted(m) => {
                            // Spooled in the same commit as the ops before it, so before its
                            // acknowledgement (which follows it) leaves.
                            if let Some(f) = &mut self.forward {
                                f.spool(&m, &mut self.store_ops);
                            }
                            rest.push(Output::Accepted(m));
                        }
                        other => rest.push(other),
                    }
                }
                self.outputs = rest;
                if !self.commit().await {
                    return Err(());
                }
                if let Some(f) = &mut self.forward {
                    f.wake();
                }
            }
            if self.watchers.is_empty() {
                // Reported for forwarding only: spooled above.
                self.outputs.retain(|o| !matches!(o, Output::Accepted(_)));
            }
            if self
                .outputs
                .iter()
                .any(|o| matches!(o, Output::Accepted(_)))
            {
                // Consumers of accepted messages see every one before anything after it (the
                // publisher's PUBACK) goes out: the router waits for them (bounded channels),
                // which slows publishers rather than buffer without bound.
                let outputs = std::mem::take(&mut self.outputs);
                for output in outputs {
                    match output {
                        Output::Accepted(m) => {
                            pressure |= self.apply(&mut writable);
                            self.watchers.retain(|w| !w.is_closed());
                            for w in &self.watchers {
                                let _ = w.send(Arc::clone(&m)).await;
                            }
                            if self.watchers.is_empty() && self.forward.is_none() {
                                // Its consumers are gone: the core stops reporting.
                                let id = RequestId(0);
                                let request = AdminRequest::ReportAccepted(false);
                                self.broker.handle(Input::Admin { id, request }, now());
                            }
                        }
                        other => self.outputs.push(other),
                    }
                }
            }
            pressure |= self.apply(&mut writable);
            let now = now();
            for conn in writable.drain(..) {
                self.broker.handle(Input::Writable { conn }, now);
            }
        }
    }

    /// Acts on the outputs drained (no `Persist` or `Accepted` among them). Connections whose
    /// outbox has room for the core's next batch at once go to `writable`. Returns whether an
    /// outbox is more than half full.
    fn apply(&mut self, writable: &mut Vec<ConnId>) -> bool {
        let mut pressure = false;
        let mut dropped = 0;
        for output in self.outputs.drain(..) {
            match output {
                Output::Send(conn, packet) => {
                    let Some(outbox) = self.outboxes.get(&conn) else {
                        continue;
                    };
                    let packet = match &mut self.forward {
                        Some(f) => match f.park(conn, packet, outbox) {
                            Some(p) => p,
                            None => continue,
                        },
                        None => packet,
                    };
                    if let Packet::Publish(p) = &packet {
                        if p.qos == QoS::AtMostOnce && outbox.len() >= self.max_outbox_packets {
                            dropped += 1;
                            continue;
                        }
                    }
                    outbox.push(packet);
                    pressure |= outbox.len() * 2 >= self.max_outbox_packets;
                }
                Output::Close(conn) => {
                    if let Some(outbox) = self.outboxes.remove(&conn) {
                        outbox.close();
                    }
                }
                Output::WantRoom(conn) => {
                    if let Some(outbox) = self.outboxes.get(&conn) {
                        if outbox.want_room(self.max_outbox_packets) {
                            writable.push(conn);
                        }
                    }
                }
                Output::Connected { conn, outcome } => {
                    if let Some(reply) = self.connecting.remove(&conn) {
                        let _ = reply.send(outcome);
                    }
                }
                Output::Reply { id, reply } => {
                    if let Some(tx) = self.requests.remove(&id) {
                        let _ = tx.send(reply);
                    }
                }
                // Persist and Accepted are taken out by `flush`; interest matters once there
                // is a cluster.
                Output::Persist(_) | Output::Accepted(_) | Output::Interest { .. } => {}
            }
        }
        if dropped > 0 {
            self.broker.count_slow_subscriber_drops(dropped);
        }
        pressure
    }
}
