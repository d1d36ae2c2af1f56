//! The server's metrics: one registry ([`prometheus_client`]) that every counter feeds, read
//! by the Prometheus text exporter ([`crate::BrokerHandle::metrics_text`]) and by `$SYS`
//! ([`SysValues`], handed to the core).
//!
//! Where each value lives, and what it costs:
//! - per listener, open and accepted connections and bytes in and out: atomics the accept
//!   loop and the connection tasks add to (one per accepted connection, one per read and per
//!   write batch: never per message, never a lock);
//! - the store's size and commit latency: set by the router after each commit (one per
//!   batch, beside an fsync);
//! - authentication failures by reason and password checks: the auth state's own atomics,
//!   read at scrape time (every increment shows);
//! - TLS handshake failures by reason and the expiry of each served and trusted certificate:
//!   read from each TLS listener's live state at scrape time;
//! - the core's counters and sizes (messages in and out, drops by reason, sessions, queued
//!   and retained messages): asked of the router at scrape time (one admin request, so the
//!   router copies nothing while it routes).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use moat_auth::FailureKind;
use moat_core::{StatsSnapshot, SysSource};
use moat_tls::{HandshakeFailure, LiveTls};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::OwnedSemaphorePermit;

use crate::alarms::AlarmStatus;
use crate::auth::AuthState;

/// The `Content-Type` of [`crate::BrokerHandle::metrics_text`]'s output.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

/// Every metric of a running server.
pub(crate) struct Metrics {
    registry: Registry,
    listeners: Vec<Arc<ListenerMetrics>>,
    auth: Arc<AuthCollector>,
    tls: Arc<TlsCollector>,
    core: Arc<CoreCollector>,
    store: StoreMetrics,
    forward: Arc<crate::forward::ForwardMetrics>,
    /// What the expiry alarms found (also a collector).
    alarms: Arc<AlarmStatus>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

/// The counters of one listener, shared by its accept loop and its connections.
#[derive(Debug)]
pub(crate) struct ListenerMetrics {
    /// The listener's name (shared by its connections: logs, `ClientInfo`).
    pub(crate) name: Arc<str>,
    open: Gauge,
    accepted: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl ListenerMetrics {
    /// Counts a connection accepted; it counts as open until the slot is dropped.
    pub(crate) fn admit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConnectionSlot {
        self.accepted.inc();
        self.open.inc();
        ConnectionSlot {
            _permit: permit,
            listener: Arc::clone(self),
        }
    }

    /// Connections open now.
    pub(crate) fn open_connections(&self) -> u64 {
        u64::try_from(self.open.get()).unwrap_or(0)
    }

    /// Counts bytes read from a client (MQTT bytes: after TLS and WebSocket framing).
    pub(crate) fn received(&self, n: usize) {
        self.bytes_in.inc_by(n as u64);
    }

    /// Counts bytes written to a client (MQTT bytes).
    pub(crate) fn sent(&self, n: usize) {
        self.bytes_out.inc_by(n as u64);
    }
}

/// A connection's place: under `max_connections` and among its listener's open connections.
/// Both are given back when it is dropped (however the connection task ends).
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    pub(crate) listener: Arc<ListenerMetrics>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.listener.open.dec();
    }
}

/// What the router records about the durable store.
#[derive(Debug, Clone)]
pub(crate) struct StoreMetrics {
    bytes: Gauge,
    commit_seconds: Histogram,
}

impl StoreMetrics {
    /// Records one commit (its ops made durable, one fsync) and the store's size after it.
    pub(crate) fn committed(&self, took: Duration, bytes: u64) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.set_bytes(bytes);
    }

    /// The store's size on disk.
    pub(crate) fn set_bytes(&self, bytes: u64) {
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    /// The registry for a server with these listeners (name and TLS state, in order);
    /// returns each listener's counters, in the same order.
    pub(crate) fn new(
        auth: Arc<AuthState>,
        listeners: &[(&str, Option<Arc<LiveTls>>)],
        alarms: Arc<AlarmStatus>,
    ) -> (Self, Vec<Arc<ListenerMetrics>>) {
        let mut registry = Registry::with_prefix("moat");
        let open = Family::<ListenerLabel, Gauge>::default();
        let accepted = Family::<ListenerLabel, Counter>::default();
        let bytes_in = Family::<ListenerLabel, Counter>::default();
        let bytes_out = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections",
            "Open network connections (from accept to close, handshakes included)",
            open.clone(),
        );
        registry.register(
            "connections_accepted",
            "Network connections accepted",
            accepted.clone(),
        );
        registry.register(
            "bytes_received",
            "MQTT bytes read from clients (after TLS and WebSocket framing)",
            bytes_in.clone(),
        );
        registry.register(
            "bytes_sent",
            "MQTT bytes written to clients (before TLS and WebSocket framing)",
            bytes_out.clone(),
        );
        let per_listener: Vec<_> = listeners
            .iter()
            .map(|(name, _)| {
                let label = ListenerLabel {
                    listener: (*name).to_owned(),
                };
                Arc::new(ListenerMetrics {
                    name: Arc::from(*name),
                    open: open.get_or_create_owned(&label),
                    accepted: accepted.get_or_create_owned(&label),
                    bytes_in: bytes_in.get_or_create_owned(&label),
                    bytes_out: bytes_out.get_or_create_owned(&label),
                })
            })
            .collect();

        let store = StoreMetrics {
            bytes: Gauge::default(),
            // 100 µs to 1.6 s, doubling.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        };
        registry.register(
            "store_bytes",
            "Bytes of the durable store on disk",
            store.bytes.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "Time to make a batch of store ops durable (one fsync), as the router waits for it",
            store.commit_seconds.clone(),
        );

        let auth = Arc::new(AuthCollector(auth));
        let tls = Arc::new(TlsCollector {
            listeners: listeners
                .iter()
                .filter_map(|(name, tls)| Some(((*name).to_owned(), Arc::clone(tls.as_ref()?))))
                .collect(),
        });
        let core = Arc::new(CoreCollector::default());
        registry.register_collector(Box::new(Arc::clone(&core)));
        registry.register_collector(Box::new(Arc::clone(&auth)));
        registry.register_collector(Box::new(Arc::clone(&tls)));
        registry.register_collector(Box::new(Arc::clone(&alarms)));
        let metrics = Self {
            registry,
            listeners: per_listener.clone(),
            auth,
            tls,
            core,
            store,
            forward: Arc::default(),
            alarms,
        };
        (metrics, per_listener)
    }

    /// Registers the forwarding rules' metrics (once, before the server runs).
    pub(crate) fn register_forward(&mut self, rules: &[crate::ForwardRule]) {
        self.forward = Arc::new(crate::forward::ForwardMetrics::register(
            &mut self.registry,
            rules,
        ));
    }

    /// Forwarding's metrics.
    pub(crate) fn forward(&self) -> Arc<crate::forward::ForwardMetrics> {
        Arc::clone(&self.forward)
    }

    /// What the expiry alarms found and warned, shared with their task.
    pub(crate) fn alarms(&self) -> Arc<AlarmStatus> {
        Arc::clone(&self.alarms)
    }

    /// What the router records about the store.
    pub(crate) fn store(&self) -> StoreMetrics {
        self.store.clone()
    }

    /// Keeps the core's counters and sizes for the next encoding.
    pub(crate) fn set_core(&self, snapshot: StatsSnapshot) {
        *self.core.lock() = Some(snapshot);
    }

    /// The Prometheus text format (version 0.0.4).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String fails only if an encoder reports an error, which ours never do.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Encodes one unlabelled value.
fn encode_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> fmt::Result {
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

/// The core's counters and sizes, as last asked of the router.
#[derive(Debug, Default)]
struct CoreCollector(Mutex<Option<StatsSnapshot>>);

impl CoreCollector {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<StatsSnapshot>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(snap) = *self.lock() else {
            return Ok(());
        };
        let st = snap.stats;
        let e = &mut encoder;
        let counter = ConstCounter::new;
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        let connected = i64::try_from(st.clients_connected).unwrap_or(i64::MAX);
        encode_one(
            e,
            "clients_connected",
            "MQTT clients connected (after CONNACK).",
            &ConstGauge::new(connected),
        )?;
        encode_one(
            e,
            "messages_received",
            "PUBLISH packets received from clients.",
            &counter(st.messages_received),
        )?;
        encode_one(
            e,
            "messages_sent",
            "PUBLISH packets sent to clients.",
            &counter(st.messages_sent),
        )?;
        {
            let mut family = e.encode_descriptor(
                "messages_dropped",
                "Messages dropped, by reason (slow_subscriber: QoS 0 to a client whose outbox \
                 was full).",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("queue_full", st.dropped_queue_full),
                ("too_large", st.dropped_too_large),
                ("expired", st.dropped_expired),
                ("slow_subscriber", st.dropped_slow_subscriber),
            ] {
                counter(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        encode_one(
            e,
            "publishes_refused",
            "PUBLISH packets refused for their topic (topic limits).",
            &counter(st.publishes_refused_topic),
        )?;
        encode_one(
            e,
            "subscriptions_refused",
            "Filters refused in SUBSCRIBE (topic limits, max_subscriptions_per_client).",
            &counter(st.subscriptions_refused),
        )?;
        encode_one(
            e,
            "retained_dropped",
            "Retained messages not stored (max_retained_messages or _bytes reached).",
            &counter(st.retained_dropped),
        )?;
        {
            let mut family = e.encode_descriptor(
                "connects_refused_client_id",
                "CONNECTs refused on client_id = \"certificate\" listeners, by reason \
                 (no_certificate_identity: CONNACK 0x87; not_certificate_identity: another \
                 client id, CONNACK 0x85).",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                (
                    "no_certificate_identity",
                    st.refused_no_certificate_identity,
                ),
                (
                    "not_certificate_identity",
                    st.refused_client_id_not_certificate,
                ),
            ] {
                counter(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "client_certificates_expired",
                "Client certificates that expired while connected, by what was done \
                 (disconnect: DISCONNECT 0x87; warn: logged, kept).",
                None,
                MetricType::Counter,
            )?;
            for (action, n) in [
                ("disconnect", st.disconnected_certificate_expired),
                ("warn", st.certificate_expired_warned),
            ] {
                counter(n).encode(family.encode_family(&[("action", action)])?)?;
            }
        }
        encode_one(
            e,
            "sessions",
            "Sessions, connected or not.",
            &gauge(snap.sessions),
        )?;
        encode_one(
            e,
            "subscriptions",
            "Subscriptions.",
            &gauge(snap.subscriptions),
        )?;
        encode_one(
            e,
            "retained_messages",
            "Retained messages.",
            &gauge(snap.retained),
        )?;
        encode_one(
            e,
            "retained_bytes",
            "Topic and payload bytes of the retained messages.",
            &gauge(snap.retained_bytes),
        )?;
        encode_one(
            e,
            "queued_messages",
            "Messages waiting in session queues.",
            &gauge(snap.queued),
        )
    }
}

/// Authentication counters, read from the auth state at each scrape.
#[derive(Debug)]
struct AuthCollector(Arc<AuthState>);

impl Collector for AuthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        {
            let mut family = encoder.encode_descriptor(
                "auth_failures",
                "CONNECTs refused by authentication, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (kind, n) in self.0.counters.snapshot() {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", kind.name())])?)?;
            }
        }
        encode_one(
            &mut encoder,
            "auth_password_checks",
            "Password checks (argon2id) finished, right or wrong.",
            &ConstCounter::new(self.0.password_checks()),
        )?;
        let running = i64::try_from(self.0.password_checks_running()).unwrap_or(i64::MAX);
        encode_one(
            &mut encoder,
            "auth_password_checks_running",
            "Password checks running now.",
            &ConstGauge::new(running),
        )
    }
}

/// TLS counters and certificates, read from each TLS listener's live state at each scrape.
#[derive(Debug)]
struct TlsCollector {
    listeners: Vec<(String, Arc<LiveTls>)>,
}

impl Collector for TlsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        if self.listeners.is_empty() {
            return Ok(());
        }
        {
            let mut family = encoder.encode_descriptor(
                "tls_handshake_failures",
                "TLS handshakes that failed, by listener and reason.",
                None,
                MetricType::Counter,
            )?;
            for (name, live) in &self.listeners {
                for (reason, n) in live.failures.snapshot() {
                    let labels = [("listener", name.as_str()), ("reason", reason.label())];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let now = unix_now();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap_or(0));
        let crls: Vec<_> = self
            .listeners
            .iter()
            .map(|(name, live)| (name, live.crl_status(at)))
            .collect();
        {
            let mut family = encoder.encode_descriptor(
                "tls_crl_stale",
                "1 while a CRL of the listener is past its next update (still applied unless \
                 the listener's crl_stale is fail_closed), else 0.",
                None,
                MetricType::Gauge,
            )?;
            for (name, status) in &crls {
                for s in status {
                    let labels = [("listener", name.as_str()), ("issuer", s.issuer.as_str())];
                    ConstGauge::new(i64::from(s.stale)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "tls_crl_next_update_seconds",
                "Seconds until each CRL's next update (negative once stale).",
                None,
                MetricType::Gauge,
            )?;
            for (name, status) in &crls {
                for s in status {
                    let Some(next) = s.next_update else { continue };
                    let labels = [("listener", name.as_str()), ("issuer", s.issuer.as_str())];
                    ConstGauge::new(next.saturating_sub(now))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "tls_client_ca_clients",
                "Connected clients whose certificate chains to each client CA a listener \
                 trusts (0: the CA can be rotated out).",
                None,
                MetricType::Gauge,
            )?;
            for (name, live) in &self.listeners {
                for u in live.client_cas() {
                    let labels = [
                        ("listener", name.as_str()),
                        ("subject", u.ca.subject.as_str()),
                        ("fingerprint", u.ca.fingerprint.as_str()),
                    ];
                    let n = i64::try_from(u.clients).unwrap_or(i64::MAX);
                    ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let ocsp: Vec<_> = self
            .listeners
            .iter()
            .map(|(name, live)| (name, live.ocsp_status(at)))
            .collect();
        {
            let mut family = encoder.encode_descriptor(
                "tls_ocsp_stapled",
                "1 while a configured OCSP response is stapled to handshakes (it checked out \
                 and is not past its nextUpdate), else 0.",
                None,
                MetricType::Gauge,
            )?;
            for (name, status) in &ocsp {
                for s in status {
                    let labels = [("listener", name.as_str()), ("subject", s.subject.as_str())];
                    ConstGauge::new(i64::from(s.stapled)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "tls_ocsp_next_update_seconds",
                "Seconds until each stapled OCSP response's nextUpdate (negative once past: it \
                 is then no longer stapled).",
                None,
                MetricType::Gauge,
            )?;
            for (name, status) in &ocsp {
                for s in status {
                    let (Some(next), Some(_)) = (s.next_update, s.status) else {
                        continue;
                    };
                    let labels = [("listener", name.as_str()), ("subject", s.subject.as_str())];
                    ConstGauge::new(next.saturating_sub(now))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "tls_certificate_expiry_seconds",
            "Seconds until each certificate a listener serves or trusts for clients expires \
             (negative once expired).",
            None,
            MetricType::Gauge,
        )?;
        for (name, live) in &self.listeners {
            for cert in live.certificates() {
                let labels = [
                    ("listener", name.as_str()),
                    ("role", cert.role.label()),
                    ("subject", cert.subject.as_str()),
                ];
                let left = cert.not_after.saturating_sub(now);
                ConstGauge::new(left).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The wall clock in Unix seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The server's metrics as `$SYS/broker/...` values, published by the core with its own.
///
/// Topics (below `$SYS/broker/`; `{listener}` is the listener's name with `/`, `+` and `#`
/// replaced by `_`; reasons are the metric labels):
/// - `bytes/received`, `bytes/sent`: over all listeners;
/// - `listeners/{listener}/connections`: open now; `.../connections/total`: accepted;
/// - `listeners/{listener}/bytes/received`, `.../bytes/sent`;
/// - `listeners/{listener}/tls/failures/{reason}`: TLS listeners only;
/// - `listeners/{listener}/tls/crl/stale`: how many of its CRLs are past their next update;
///   `listeners/{listener}/tls/crl/{issuer}/stale` (0/1) and `.../next_update` (RFC 3339);
/// - `auth/failures`: the total; `auth/failures/{reason}`: by reason;
/// - `auth/password checks`;
/// - with a TLS listener, the expiry alarms' counts as of their last check (`crate::alarms`;
///   `{within}` is each `[tls_alarms] warn_days` threshold as `30d`, `12h`...):
///   `tls/expiry/certificates/expiring` (served and trusted certificates and CRL next
///   updates within the longest threshold, not expired), `tls/expiry/certificates/expired`,
///   `tls/expiry/certificates/within/{within}` (cumulative), the same three under
///   `tls/expiry/clients/` for connected clients' certificates, `tls/expiry/soonest` (RFC
///   3339, or `none`) and `tls/expiry/warnings` (warnings given so far).
///
/// Not a value but an event, published by the alarms when they warn (QoS 0, not retained):
/// `tls/expiry/warning`, a JSON object with `kind`, `level`, `subject`, `certificate_set`,
/// `listener`, `client_id`, `serial`, `not_after`, `seconds_left` and `message` (the log
/// line).
///
/// The core publishes the store's size (`store/bytes`) itself.
#[derive(Debug)]
pub(crate) struct SysValues(pub(crate) Arc<Metrics>);

impl SysSource for SysValues {
    fn sys_values(&self, out: &mut Vec<(String, String)>) {
        let m = &self.0;
        let (mut total_in, mut total_out) = (0, 0);
        for l in &m.listeners {
            let name = topic_level(&l.name);
            let (bytes_in, bytes_out) = (l.bytes_in.get(), l.bytes_out.get());
            total_in += bytes_in;
            total_out += bytes_out;
            let prefix = format!("listeners/{name}");
            out.push((format!("{prefix}/connections"), l.open.get().to_string()));
            out.push((
                format!("{prefix}/connections/total"),
                l.accepted.get().to_string(),
            ));
            out.push((format!("{prefix}/bytes/received"), bytes_in.to_string()));
            out.push((format!("{prefix}/bytes/sent"), bytes_out.to_string()));
        }
        out.push(("bytes/received".into(), total_in.to_string()));
        out.push(("bytes/sent".into(), total_out.to_string()));
        for (name, live) in &m.tls.listeners {
            let name = topic_level(name);
            for reason in HandshakeFailure::ALL {
                let n = live.failures.get(reason);
                let topic = format!("listeners/{name}/tls/failures/{}", reason.label());
                out.push((topic, n.to_string()));
            }
            let status = live.crl_status(SystemTime::now());
            let stale = status.iter().filter(|s| s.stale).count();
            out.push((format!("listeners/{name}/tls/crl/stale"), stale.to_string()));
            for s in status {
                let prefix = format!("listeners/{name}/tls/crl/{}", topic_level(&s.issuer));
                out.push((format!("{prefix}/stale"), u8::from(s.stale).to_string()));
                if let Some(next) = s.next_update {
                    let next = moat_pki::inspect::rfc3339(next);
                    out.push((format!("{prefix}/next_update"), next));
                }
            }
        }
        let auth = &m.auth.0;
        let mut failures = 0;
        for kind in FailureKind::ALL {
            let n = auth.counters.get(kind);
            failures += n;
            out.push((format!("auth/failures/{}", kind.name()), n.to_string()));
        }
        out.push(("auth/failures".into(), failures.to_string()));
        m.forward.sys_values(out);
        out.push((
            "auth/password checks".into(),
            auth.password_checks().to_string(),
        ));
        m.alarms.sys_values(out);
    }
}

/// A name as one topic level: no separators, no wildcards.
pub(crate) fn topic_level(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::topic_level;

    #[test]
    fn listener_names_become_one_topic_level() {
        for (name, level) in [
            ("tcp", "tcp"),
            ("a/b", "a_b"),
            ("x+#", "x__"),
            ("public 1", "public 1"),
        ] {
            assert_eq!(topic_level(name), level, "{name}");
        }
    }
}
