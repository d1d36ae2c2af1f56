//! Forwarding of accepted messages to sinks (PostgreSQL, NATS JetStream: `moat-forward`), at
//! least once, through an on-disk spool.
//!
//! The path of a message, and where each guarantee comes from:
//! 1. The core reports every message it accepted ([`moat_core::Output::Accepted`]) before the
//!    publisher's PUBACK/PUBREC in its output stream; an ACL-denied message is never accepted,
//!    so never forwarded.
//! 2. The router matches it against the rules and adds one [`StoreOp::SpoolPut`] per matching
//!    rule to the batch it is about to commit ([`Forwarding::spool`]): the spool entry is
//!    durable, in the same group commit as the sessions, before the acknowledgement leaves.
//!    Each message gets a key from a counter the store keeps, never reused: the sinks'
//!    de-duplication key.
//! 3. One task per rule ([`run_rule`]) reads its spool in key order (so in order per
//!    publishing client), hands batches to the sink and, once the sink confirms, tells the
//!    router, which removes them from the spool ([`StoreOp::SpoolRemove`], committed with the
//!    next batch). A write that fails is retried, with backoff, until it succeeds: nothing
//!    leaves the spool unconfirmed. After a crash the spool is read again from its start; what
//!    a sink already had is de-duplicated by key.
//! 4. A rule's spool is bounded (records and bytes, `[limits]`). At the bound the publishers
//!    of matching QoS 1/2 messages are slowed: their acknowledgements are held (so their
//!    in-flight window closes) until the spool drains below nine tenths of the bound; a
//!    publisher that keeps sending anyway is no longer read from. Nobody is disconnected and
//!    no QoS 1/2 message is dropped. Matching QoS 0 messages are dropped at the bound, and
//!    counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moat_codec::{Packet, QoS};
use moat_core::store::StoreOp;
use moat_core::{AcceptedMessage, ConnId};
use moat_forward::{Record, Sink};
use moat_store::SpoolReader;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::outbox::Outbox;
use crate::router::ToRouter;

/// One forwarding rule: which messages go to its sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    /// Its name: names its spool, its metrics and its log lines.
    pub name: String,
    /// MQTT topic filters (wildcards allowed); a message matching any is forwarded.
    pub filters: Vec<String>,
}

/// The forwarding rules and the spool's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// The rules (each needs a sink: [`crate::Server::attach_sink`]).
    pub rules: Vec<ForwardRule>,
    /// Records one rule's spool holds at most before its publishers are slowed.
    pub spool_max_messages: u64,
    /// Bytes (encoded records) one rule's spool holds at most before its publishers are
    /// slowed.
    pub spool_max_bytes: u64,
    /// Records per sink write at most.
    pub batch: usize,
    /// A sink write that takes longer fails (and is retried).
    pub write_timeout: Duration,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            spool_max_messages: 1_000_000,
            spool_max_bytes: 1 << 30,
            batch: 500,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The metrics of one rule.
#[derive(Debug)]
pub(crate) struct RuleMetrics {
    pub(crate) forwarded: Counter,
    pub(crate) retries: Counter,
    pub(crate) dropped_qos0: Counter,
    pub(crate) undecodable: Counter,
    pub(crate) spooled: Gauge,
    pub(crate) spooled_bytes: Gauge,
    pub(crate) oldest_age_seconds: Gauge,
    pub(crate) up: Gauge,
    pub(crate) full: Gauge,
    pub(crate) latency_seconds: Histogram,
    /// [`SinkState`] as a number.
    state: std::sync::atomic::AtomicU8,
}

impl RuleMetrics {
    fn set_state(&self, state: SinkState) {
        self.state
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
        self.up.set(i64::from(state == SinkState::Up));
    }

    fn state(&self) -> SinkState {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            1 => SinkState::Up,
            2 => SinkState::Down,
            _ => SinkState::Starting,
        }
    }
}

/// Where a rule's sink stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkState {
    /// Nothing was written yet.
    Starting = 0,
    /// The last write succeeded.
    Up = 1,
    /// The last write failed: records stay spooled and are retried.
    Down = 2,
}

impl SinkState {
    /// "starting", "up" or "down".
    pub fn label(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// A forwarding rule's state and spool ([`crate::BrokerHandle::forwarding`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardStatus {
    /// The rule.
    pub rule: String,
    /// Its topic filters.
    pub filters: Vec<String>,
    /// Its sink, as the sink describes itself (no secret).
    pub sink: String,
    /// The sink's state.
    pub state: SinkState,
    /// Records spooled (not yet confirmed).
    pub spooled: u64,
    /// Their bytes.
    pub spooled_bytes: u64,
    /// Age of the oldest record waiting, in seconds (0: none waits).
    pub oldest_age_seconds: u64,
    /// Records the sink confirmed (since start).
    pub forwarded: u64,
    /// Failed writes retried (since start).
    pub retries: u64,
    /// Matching QoS 0 messages dropped at a full spool (since start).
    pub dropped_qos0: u64,
    /// Whether the spool is at its bound (publishers slowed).
    pub full: bool,
}

impl Default for RuleMetrics {
    fn default() -> Self {
        Self {
            forwarded: Counter::default(),
            retries: Counter::default(),
            dropped_qos0: Counter::default(),
            undecodable: Counter::default(),
            spooled: Gauge::default(),
            spooled_bytes: Gauge::default(),
            oldest_age_seconds: Gauge::default(),
            up: Gauge::default(),
            full: Gauge::default(),
            latency_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            state: std::sync::atomic::AtomicU8::new(0),
        }
    }
}

/// Each forwarding rule's sink, by rule name, until the server runs.
#[derive(Default)]
pub(crate) struct Sinks(pub(crate) HashMap<String, Box<dyn Sink>>);

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(rule, sink)| (rule, sink.describe())))
            .finish()
    }
}

/// Forwarding's metrics, registered once per rule ([`ForwardMetrics::register`]).
#[derive(Debug, Default)]
pub(crate) struct ForwardMetrics {
    names: Vec<String>,
    filters: Vec<Vec<String>>,
    sinks: std::sync::Mutex<Vec<String>>,
    rules: Vec<RuleMetrics>,
    pub(crate) held_publishers: Gauge,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

impl ForwardMetrics {
    /// The metrics of `rules`, registered in `registry` (nothing when there is no rule).
    pub(crate) fn register(registry: &mut Registry, rules: &[ForwardRule]) -> Self {
        let mut me = Self::default();
        if rules.is_empty() {
            return me;
        }
        let counters = [
            ("forward_messages", "Messages the rule's sink confirmed."),
            (
                "forward_retries",
                "Sink writes that failed and were retried.",
            ),
            (
                "forward_dropped_qos0",
                "Matching QoS 0 messages dropped because the rule's spool was full.",
            ),
            (
                "forward_undecodable",
                "Spooled records that could not be read (removed, logged).",
            ),
        ]
        .map(|(name, help)| {
            let f = Family::<RuleLabel, Counter>::default();
            registry.register(name, help, f.clone());
            f
        });
        let gauges = [
            ("forward_spooled_messages", "Records in the rule's spool."),
            (
                "forward_spooled_bytes",
                "Bytes of records in the rule's spool.",
            ),
            (
                "forward_oldest_spooled_age_seconds",
                "Age of the oldest record the rule's sink has not confirmed (0: none waits).",
            ),
            (
                "forward_sink_up",
                "1 while the rule's last sink write succeeded, else 0.",
            ),
            (
                "forward_spool_full",
                "1 while the rule's spool is at its bound (publishers slowed), else 0.",
            ),
        ]
        .map(|(name, help)| {
            let f = Family::<RuleLabel, Gauge>::default();
            registry.register(name, help, f.clone());
            f
        });
        let latency = Family::<RuleLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "forward_sink_write_seconds",
            "Time of one successful sink write (a batch), from the call to the confirmation.",
            latency.clone(),
        );
        registry.register(
            "forward_held_publishers",
            "Connections whose acknowledgements are held by a full spool.",
            me.held_publishers.clone(),
        );
        for r in rules {
            let l = RuleLabel {
                rule: r.name.clone(),
            };
            me.names.push(r.name.clone());
            me.filters.push(r.filters.clone());
            me.sinks
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .push(String::new());
            me.rules.push(RuleMetrics {
                forwarded: counters[0].get_or_create_owned(&l),
                retries: counters[1].get_or_create_owned(&l),
                dropped_qos0: counters[2].get_or_create_owned(&l),
                undecodable: counters[3].get_or_create_owned(&l),
                spooled: gauges[0].get_or_create_owned(&l),
                spooled_bytes: gauges[1].get_or_create_owned(&l),
                oldest_age_seconds: gauges[2].get_or_create_owned(&l),
                up: gauges[3].get_or_create_owned(&l),
                full: gauges[4].get_or_create_owned(&l),
                latency_seconds: latency.get_or_create_owned(&l),
                state: std::sync::atomic::AtomicU8::new(0),
            });
        }
        me
    }

    /// Rule `i`'s metrics (every rule has them; a stray index gets a detached set).
    pub(crate) fn rule(&self, i: usize) -> &RuleMetrics {
        static NONE: std::sync::OnceLock<RuleMetrics> = std::sync::OnceLock::new();
        self.rules
            .get(i)
            .unwrap_or_else(|| NONE.get_or_init(RuleMetrics::default))
    }

    /// Notes what rule `i`'s sink writes to.
    pub(crate) fn set_sink(&self, i: usize, describe: String) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sinks.get_mut(i) {
            *s = describe;
        }
    }

    /// Every rule's state and spool.
    pub(crate) fn status(&self) -> Vec<ForwardStatus> {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let n = |g: &Gauge| u64::try_from(g.get()).unwrap_or(0);
        self.names
            .iter()
            .zip(&self.filters)
            .zip(&self.rules)
            .zip(sinks)
            .map(|(((name, filters), m), sink)| ForwardStatus {
                rule: name.clone(),
                filters: filters.clone(),
                sink,
                state: m.state(),
                spooled: n(&m.spooled),
                spooled_bytes: n(&m.spooled_bytes),
                oldest_age_seconds: n(&m.oldest_age_seconds),
                forwarded: m.forwarded.get(),
                retries: m.retries.get(),
                dropped_qos0: m.dropped_qos0.get(),
                full: m.full.get() == 1,
            })
            .collect()
    }

    /// `$SYS/broker/forward/{rule}/...` values.
    pub(crate) fn sys_values(&self, out: &mut Vec<(String, String)>) {
        for (name, m) in self.names.iter().zip(&self.rules) {
            let p = format!("forward/{}", crate::metrics::topic_level(name));
            out.push((format!("{p}/forwarded"), m.forwarded.get().to_string()));
            out.push((format!("{p}/retries"), m.retries.get().to_string()));
            out.push((format!("{p}/spooled"), m.spooled.get().to_string()));
            out.push((
                format!("{p}/spooled/bytes"),
                m.spooled_bytes.get().to_string(),
            ));
            out.push((
                format!("{p}/oldest_age_seconds"),
                m.oldest_age_seconds.get().to_string(),
            ));
            out.push((format!("{p}/sink"), m.state().label().to_owned()));
            out.push((format!("{p}/spool_full"), m.full.get().to_string()));
            out.push((
                format!("{p}/dropped_qos0"),
                m.dropped_qos0.get().to_string(),
            ));
        }
    }
}

/// Acknowledgements held for one connection while a spool is full.
const HOLD_READING_AFTER: usize = 64;

/// The router's side of forwarding: matching, spooling, counting, holding.
pub(crate) struct Forwarding {
    rules: Vec<RuleState>,
    next_key: u64,
    max_messages: u64,
    max_bytes: u64,
    /// Connections whose acknowledgements are held, with the held packets in order.
    held: FxHashMap<ConnId, VecDeque<Packet>>,
    metrics: Arc<ForwardMetrics>,
    record: Vec<u8>,
}

struct RuleState {
    name: String,
    filters: Vec<String>,
    spooled: u64,
    bytes: u64,
    full: bool,
    wake: Arc<Notify>,
    /// Records were spooled since the last wake.
    woken: bool,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("rules", &self.rules.len())
            .field("next_key", &self.next_key)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// What the rule tasks need from the router's side: their wake-ups.
pub(crate) struct RuleHandles {
    pub(crate) wakes: Vec<Arc<Notify>>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Forwarding {
    /// The router's state for `config`, with what the spool already holds (after a restart).
    pub(crate) fn new(
        config: &ForwardConfig,
        reader: &SpoolReader,
        metrics: Arc<ForwardMetrics>,
    ) -> Result<(Self, RuleHandles), moat_store::StoreError> {
        let usage = reader.usage()?;
        for (rule, n, _) in &usage {
            if !config.rules.iter().any(|r| r.name == *rule) {
                warn!(
                    rule = %rule,
                    records = n,
                    "the spool holds records of a rule that is no longer configured: they stay \
                     until a rule of that name is back"
                );
            }
        }
        let rules: Vec<RuleState> = config
            .rules
            .iter()
            .map(|r| {
                let (spooled, bytes) = usage
                    .iter()
                    .find(|(name, _, _)| *name == r.name)
                    .map_or((0, 0), |(_, n, b)| (*n, *b));
                if spooled > 0 {
                    info!(rule = %r.name, records = spooled, bytes, "spool resumes");
                }
                RuleState {
                    name: r.name.clone(),
                    filters: r.filters.clone(),
                    spooled,
                    bytes,
                    full: false,
                    wake: Arc::new(Notify::new()),
                    woken: false,
                }
            })
            .collect();
        let wakes = rules.iter().map(|r| Arc::clone(&r.wake)).collect();
        let mut f = Self {
            rules,
            next_key: reader.next_key()?,
            max_messages: config.spool_max_messages.max(1),
            max_bytes: config.spool_max_bytes.max(1),
            held: FxHashMap::default(),
            metrics,
            record: Vec::new(),
        };
        for i in 0..f.rules.len() {
            f.update(i);
        }
        Ok((f, RuleHandles { wakes }))
    }

    /// Adds the spool ops for an accepted message to `ops` (to be committed before its
    /// acknowledgement). Marks its connection held when a matching rule's spool is full.
    pub(crate) fn spool(&mut self, m: &AcceptedMessage, ops: &mut Vec<StoreOp>) {
        let topic = &m.message.topic;
        let mut encoded: Option<Bytes> = None;
        let key = self.next_key;
        let mut hold = false;
        for i in 0..self.rules.len() {
            let rule = &self.rules[i];
            if !rule
                .filters
                .iter()
                .any(|f| moat_core::topic::matches(f, topic))
            {
                continue;
            }
            if rule.full {
                if m.message.qos == QoS::AtMostOnce {
                    self.metrics.rule(i).dropped_qos0.inc();
                    continue;
                }
                hold = true;
            }
            let record = encoded
                .get_or_insert_with(|| {
                    let r = Record {
                        key,
                        topic: topic.clone(),
                        payload: m.message.payload.clone(),
                        qos: m.message.qos as u8,
                        retain: m.message.retain,
                        client_id: m.client_id.clone(),
                        username: m.username.clone(),
                        cert_identity: m.cert_identity.clone(),
                        received_at_ms: unix_ms(),
                        content_type: m.message.properties.content_type.clone(),
                        user_properties: m.message.properties.user_properties.clone(),
                    };
                    self.record.clear();
                    r.encode(&mut self.record);
                    Bytes::copy_from_slice(&self.record)
                })
                .clone();
            let rule = &mut self.rules[i];
            rule.spooled += 1;
            rule.bytes += record.len() as u64;
            rule.woken = true;
            ops.push(StoreOp::SpoolPut {
                rule: rule.name.clone(),
                key,
                record,
            });
            self.update(i);
        }
        if encoded.is_some() {
            self.next_key += 1;
        }
        if hold {
            self.held.entry(m.conn).or_default();
            self.metrics.held_publishers.set(self.held.len() as i64);
        }
    }

    /// Wakes the tasks of the rules that got records (after the commit that made them
    /// durable).
    pub(crate) fn wake(&mut self) {
        for r in &mut self.rules {
            if std::mem::take(&mut r.woken) {
                r.wake.notify_one();
            }
        }
    }

    /// A rule's sink confirmed `keys` (`bytes` of records): the spool ops to remove them.
    /// When no spool is full any more, the held acknowledgements are released into their
    /// outboxes.
    pub(crate) fn forwarded(
        &mut self,
        rule: usize,
        keys: Vec<u64>,
        bytes: u64,
        ops: &mut Vec<StoreOp>,
        outboxes: &FxHashMap<ConnId, Arc<Outbox>>,
    ) {
        let Some(r) = self.rules.get_mut(rule) else {
            return;
        };
        r.spooled = r.spooled.saturating_sub(keys.len() as u64);
        r.bytes = r.bytes.saturating_sub(bytes);
        ops.push(StoreOp::SpoolRemove {
            rule: r.name.clone(),
            keys,
        });
        self.update(rule);
        if !self.rules.iter().any(|r| r.full) && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            let publishers = held.len();
            for (conn, packets) in held {
                let Some(outbox) = outboxes.get(&conn) else {
                    continue;
                };
                for p in packets {
                    outbox.push(p);
                }
                outbox.hold_reading(false);
            }
            self.metrics.held_publishers.set(0);
            info!(
                publishers,
                "forwarding spools have room again: the held acknowledgements are released"
            );
        }
    }

    /// Parks `packet` if it is an acknowledgement of a held connection; returns it otherwise.
    pub(crate) fn park(&mut self, conn: ConnId, packet: Packet, outbox: &Outbox) -> Option<Packet> {
        if !matches!(packet, Packet::PubAck(_) | Packet::PubRec(_)) {
            return Some(packet);
        }
        let Some(queue) = self.held.get_mut(&conn) else {
            return Some(packet);
        };
        queue.push_back(packet);
        if queue.len() >= HOLD_READING_AFTER {
            // It keeps publishing without waiting for acknowledgements: stop reading it
            // (TCP pushes back) rather than spool without bound.
            outbox.hold_reading(true);
        }
        None
    }

    /// The connection closed: what was held for it goes.
    pub(crate) fn closed(&mut self, conn: ConnId) {
        if self.held.remove(&conn).is_some() {
            self.metrics.held_publishers.set(self.held.len() as i64);
        }
    }

    /// Recomputes rule `i`'s full state (logging each change) and its gauges.
    fn update(&mut self, i: usize) {
        let (max_m, max_b) = (self.max_messages, self.max_bytes);
        let r = &mut self.rules[i];
        let m = self.metrics.rule(i);
        m.spooled.set(i64::try_from(r.spooled).unwrap_or(i64::MAX));
        m.spooled_bytes
            .set(i64::try_from(r.bytes).unwrap_or(i64::MAX));
        let at_bound = r.spooled >= max_m || r.bytes >= max_b;
        let below = r.spooled * 10 < max_m * 9 && r.bytes * 10 < max_b * 9;
        if !r.full && at_bound {
            r.full = true;
            m.full.set(1);
            warn!(
                rule = %r.name,
                records = r.spooled,
                bytes = r.bytes,
                "forwarding spool full: acknowledgements of matching QoS 1/2 messages are held \
                 (publishers slowed), matching QoS 0 messages dropped, until its sink catches up"
            );
        } else if r.full && below {
            r.full = false;
            m.full.set(0);
            info!(rule = %r.name, records = r.spooled, "forwarding spool below its bound again");
        }
    }
}

/// The sink side of one rule: reads its spool in key order, writes batches, reports what the
/// sink confirmed. Runs until `stop`.
#[allow(clippy::too_many_arguments)] // each is one of the rule's parts
pub(crate) async fn run_rule(
    index: usize,
    name: String,
    mut sink: Box<dyn Sink>,
    reader: SpoolReader,
    wake: Arc<Notify>,
    router: mpsc::Sender<ToRouter>,
    config: ForwardConfig,
    metrics: Arc<ForwardMetrics>,
    stop: CancellationToken,
) {
    let m = metrics.rule(index);
    let target = sink.describe();
    info!(rule = %name, sink = %target, "forwarding");
    let mut after: Option<u64> = None;
    let mut up: Option<bool> = None;
    let batch = config.batch.max(1);
    loop {
        let read = {
            let (reader, name) = (reader.clone(), name.clone());
            tokio::task::spawn_blocking(move || reader.read(&name, after, batch)).await
        };
        let rows = match read {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                error!(rule = %name, error = %crate::Chain(&e), "cannot read the spool; retrying");
                if pause(&stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        if rows.is_empty() {
            m.oldest_age_seconds.set(0);
            tokio::select! {
                () = wake.notified() => continue,
                () = stop.cancelled() => return,
            }
        }
        let mut records = Vec::with_capacity(rows.len());
        let mut keys = Vec::with_capacity(rows.len());
        let mut bytes = 0u64;
        for (key, data) in &rows {
            keys.push(*key);
            bytes += data.len() as u64;
            match Record::decode(data) {
                Ok(r) => records.push(r),
                Err(e) => {
                    m.undecodable.inc();
                    error!(rule = %name, key, error = %e, "a spooled record cannot be read: it is removed");
                }
            }
        }
        let mut backoff = Duration::from_millis(100);
        while let Some(first) = records.first() {
            // At every attempt: while the sink stays down the oldest record keeps ageing.
            let age = unix_ms().saturating_sub(first.received_at_ms) / 1000;
            m.oldest_age_seconds
                .set(i64::try_from(age).unwrap_or(i64::MAX));
            let started = std::time::Instant::now();
            let result = tokio::select! {
                r = tokio::time::timeout(config.write_timeout, sink.write(&records)) => r,
                () = stop.cancelled() => return,
            };
            // (what happened, whether the backend refused rather than could not be reached)
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((crate::Chain(&e).to_string(), !e.is_unavailable())),
                Err(_) => Some((
                    format!("no answer within {} s", config.write_timeout.as_secs()),
                    false,
                )),
            };
            match failure {
                None => {
                    m.latency_seconds.observe(started.elapsed().as_secs_f64());
                    m.forwarded.inc_by(records.len() as u64);
                    if up != Some(true) {
                        info!(rule = %name, sink = %target, "sink is up: forwarding");
                        m.set_state(SinkState::Up);
                        up = Some(true);
                    }
                    break;
                }
                Some((why, refused)) => {
                    m.retries.inc();
                    if refused && up != Some(false) {
                        error!(
                            rule = %name,
                            sink = %target,
                            error = %why,
                            "sink refuses the records: they stay spooled and are retried; fix \
                             what the error names"
                        );
                        m.set_state(SinkState::Down);
                        up = Some(false);
                    } else if up != Some(false) {
                        warn!(
                            rule = %name,
                            sink = %target,
                            error = %why,
                            "sink unavailable: messages stay spooled and are retried"
                        );
                        m.set_state(SinkState::Down);
                        up = Some(false);
                    }
                    if pause(&stop, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        after = keys.last().copied();
        let done = ToRouter::Forwarded {
            rule: index,
            keys,
            bytes,
        };
        if router.send(done).await.is_err() {
            return;
        }
    }
}

/// Sleeps `d` unless `stop` comes first; true when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = stop.cancelled() => true,
    }
}
