//! Expiry alarms: a periodic look at everything that expires, so an operator hears about a
//! certificate weeks before clients are refused, not when they are.
//!
//! Every [`TlsAlarmsConfig::check_interval`] one task ([`run`]) gathers:
//! - every certificate the TLS listeners serve or trust (server certificates, chains, client
//!   CAs) and every CRL's next update, from the certificate sets
//!   ([`crate::BrokerHandle::expiry`]);
//! - the certificate of every connected TLS client, from the router's client listing (pages
//!   of [`CLIENT_PAGE`], each scanning at most [`moat_core::MAX_CLIENT_SCAN`] sessions; at
//!   most [`MAX_TRACKED_CLIENTS`] client certificates per check).
//!
//! For each item it finds the smallest warning threshold ([`TlsAlarmsConfig::warn_before`])
//! it is within, and warns once per item and threshold crossed (and once more, as an error,
//! when it has expired): a line in the log, a message on `$SYS/broker/tls/expiry/warning`
//! (not retained: an event), and `moat_tls_expiry_warnings_total{kind}`. An item first seen
//! already within 1 day gets one warning, not three. The state is the last level warned
//! about per item, keyed by what identifies the certificate (kind, set or client, subject
//! or fingerprint, notAfter): a renewed certificate is a new item and starts afresh, and
//! items no longer present (a client gone, a file replaced) are forgotten at the next check.
//!
//! The counts per level, for the served and trusted items and per listener for clients,
//! are kept in an [`AlarmStatus`] that the metrics ([`AlarmStatus`] is a collector) and
//! `$SYS` ([`AlarmStatus::sys_values`]) read. No metric has a label per client.
//!
//! What this module does not do: act on an expiry (the core disconnects a client at its
//! certificate's expiry, `on_client_cert_expiry`; a listener serves its certificate until
//! it is replaced) or read any file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use moat_core::ClientQuery;
use moat_pki::inspect::rfc3339;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;
use tracing::{error, warn};

use crate::certs::{ExpiryItem, ExpiryKind};
use crate::{BrokerHandle, TlsAlarmsConfig};

/// Client certificates one check tracks at most (docs/LIMITS.md). Beyond it the scan stops,
/// `moat_tls_expiry_client_scans_truncated_total` counts the check, and a warning says so
/// (once until a check fits again).
pub(crate) const MAX_TRACKED_CLIENTS: usize = 100_000;

/// Clients asked of the router per request.
const CLIENT_PAGE: usize = 1_000;

/// Requests to the router per check at most (10 M sessions at the core's scan budget).
const MAX_CLIENT_PAGES: usize = 1_000;

/// Warnings logged and published one by one per check at most; the rest are summed up in
/// one line (a fleet whose certificates were all issued the same day must not flood the
/// log). All are counted.
const MAX_WARNINGS_PER_CHECK: usize = 100;

/// The kinds of items, in the order of [`KIND_LABELS`].
const KINDS: [ExpiryKind; 6] = [
    ExpiryKind::Server,
    ExpiryKind::Chain,
    ExpiryKind::ClientCa,
    ExpiryKind::CrlNextUpdate,
    ExpiryKind::OcspNextUpdate,
    ExpiryKind::Client,
];

/// The `kind` label of each of [`KINDS`] (as the admin API's expiry list names them).
const KIND_LABELS: [&str; 6] = [
    "server",
    "chain",
    "client_ca",
    "crl_next_update",
    "ocsp_next_update",
    "client",
];

fn kind_index(kind: ExpiryKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

/// How close an item is to its expiry, against the configured thresholds. Ordered: `Ok`,
/// then `Within(0)` (the longest threshold), `Within(1)`, ..., then `Expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Beyond every threshold.
    Ok,
    /// Within threshold `i` (and every longer one), not expired.
    Within(usize),
    /// At or past its expiry.
    Expired,
}

impl Level {
    /// The level of something `seconds_left` away, for thresholds in seconds, longest first.
    pub(crate) fn of(seconds_left: i64, thresholds: &[i64]) -> Self {
        if seconds_left <= 0 {
            return Self::Expired;
        }
        thresholds
            .iter()
            .rposition(|&t| seconds_left <= t)
            .map_or(Self::Ok, Self::Within)
    }
}

/// A span of seconds as a short label: `30d`, `12h`, `15m`, `9s` (the largest unit that
/// divides it).
pub(crate) fn span_label(secs: i64) -> String {
    for (unit, name) in [(86_400, 'd'), (3_600, 'h'), (60, 'm')] {
        if secs >= unit && secs % unit == 0 {
            return format!("{}{name}", secs / unit);
        }
    }
    format!("{secs}s")
}

/// A span of seconds for a sentence: "6 days", "11 hours", "42 minutes", "9 seconds"
/// (rounded down to the largest unit).
fn human(secs: i64) -> String {
    let secs = secs.unsigned_abs();
    let (n, unit) = match secs {
        s if s >= 2 * 86_400 => (s / 86_400, "days"),
        s if s >= 2 * 3_600 => (s / 3_600, "hours"),
        s if s >= 2 * 60 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    if n == 1 {
        format!("1 {}", unit.trim_end_matches('s'))
    } else {
        format!("{n} {unit}")
    }
}

/// What identifies one item across checks: a renewed certificate (another notAfter or
/// fingerprint) is another item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ItemKey {
    kind: usize,
    /// The certificate set, or the listener and client id.
    scope: String,
    /// The subject (or CRL issuer), or the client certificate's fingerprint.
    identity: String,
    not_after: i64,
}

/// One thing that expires, as a check sees it.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    key: ItemKey,
    kind: ExpiryKind,
    subject: String,
    certificate_set: Option<String>,
    listener: Option<String>,
    client_id: Option<String>,
    serial: Option<String>,
    not_after: i64,
}

impl Observed {
    /// A served or trusted certificate, or a CRL's next update, as the certificate sets list
    /// it (`now` is the instant the list was made at).
    fn served(item: ExpiryItem, now: i64) -> Self {
        let not_after = now.saturating_add(item.seconds_left);
        let set = item.certificate_set.unwrap_or_default();
        Self {
            key: ItemKey {
                kind: kind_index(item.kind),
                scope: set.clone(),
                identity: item.subject.clone(),
                not_after,
            },
            kind: item.kind,
            subject: item.subject,
            certificate_set: Some(set),
            listener: None,
            client_id: None,
            serial: None,
            not_after,
        }
    }

    /// A connected client's certificate.
    fn client(
        listener: String,
        client_id: String,
        tls: &moat_core::TlsInfo,
        not_after: i64,
    ) -> Self {
        let subject = tls.subject.clone().unwrap_or_default();
        Self {
            key: ItemKey {
                kind: kind_index(ExpiryKind::Client),
                scope: format!("{listener}\0{client_id}"),
                identity: tls.fingerprint.clone().unwrap_or_else(|| subject.clone()),
                not_after,
            },
            kind: ExpiryKind::Client,
            subject,
            certificate_set: None,
            listener: Some(listener),
            client_id: Some(client_id),
            serial: tls.serial.clone(),
            not_after,
        }
    }
}

/// Counts of items per level. `within[i]`: not expired and within threshold `i` (so
/// cumulative: what is within 1 day is also within 7 and 30).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) within: Vec<u64>,
    pub(crate) expired: u64,
}

impl Counts {
    fn new(thresholds: usize) -> Self {
        Self {
            within: vec![0; thresholds],
            expired: 0,
        }
    }

    fn add(&mut self, level: Level) {
        match level {
            Level::Ok => {}
            Level::Within(i) => {
                for n in self.within.iter_mut().take(i + 1) {
                    *n += 1;
                }
            }
            Level::Expired => self.expired += 1,
        }
    }

    /// Within the longest threshold and not expired.
    pub(crate) fn expiring(&self) -> u64 {
        self.within.first().copied().unwrap_or(0)
    }
}

/// The clients of one listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ListenerClients {
    pub(crate) counts: Counts,
    /// The soonest notAfter among them (Unix seconds).
    pub(crate) soonest: Option<i64>,
}

/// What the last check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Served and trusted certificates and CRL next updates.
    pub(crate) certificates: Counts,
    /// Connected clients' certificates, over all listeners.
    pub(crate) clients: Counts,
    /// Per TLS listener.
    pub(crate) listeners: BTreeMap<String, ListenerClients>,
    /// The soonest expiry of anything (Unix seconds).
    pub(crate) soonest: Option<i64>,
}

/// A threshold crossed (or an expiry) by one item.
#[derive(Debug, Clone)]
pub(crate) struct Warning {
    item: Observed,
    level: Level,
    seconds_left: i64,
}

/// The state across checks: the last level warned about per item.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Thresholds in seconds, longest first.
    thresholds: Vec<i64>,
    warned: HashMap<ItemKey, Level>,
}

impl Engine {
    pub(crate) fn new(config: &TlsAlarmsConfig) -> Self {
        Self {
            thresholds: thresholds(config),
            warned: HashMap::new(),
        }
    }

    /// Looks at every item present now (`now` in Unix seconds, `listeners` the TLS
    /// listeners' names): counts them, and returns the warnings due (items that reached a
    /// level past the one last warned about). State of items not given is dropped.
    pub(crate) fn check(
        &mut self,
        items: Vec<Observed>,
        listeners: &[String],
        now: i64,
    ) -> (Summary, Vec<Warning>) {
        let n = self.thresholds.len();
        let mut summary = Summary {
            certificates: Counts::new(n),
            clients: Counts::new(n),
            listeners: listeners
                .iter()
                .map(|l| {
                    let c = ListenerClients {
                        counts: Counts::new(n),
                        soonest: None,
                    };
                    (l.clone(), c)
                })
                .collect(),
            soonest: None,
        };
        let mut before = std::mem::take(&mut self.warned);
        self.warned.reserve(items.len());
        let mut warnings = Vec::new();
        for item in items {
            let seconds_left = item.not_after.saturating_sub(now);
            let level = Level::of(seconds_left, &self.thresholds);
            summary.soonest = Some(
                summary
                    .soonest
                    .map_or(item.not_after, |s| s.min(item.not_after)),
            );
            if let Some(listener) = &item.listener {
                summary.clients.add(level);
                let l = summary
                    .listeners
                    .entry(listener.clone())
                    .or_insert_with(|| ListenerClients {
                        counts: Counts::new(n),
                        soonest: None,
                    });
                l.counts.add(level);
                l.soonest = Some(l.soonest.map_or(item.not_after, |s| s.min(item.not_after)));
            } else {
                summary.certificates.add(level);
            }
            let last = before.remove(&item.key).unwrap_or(Level::Ok);
            // An empty list turns the warnings off, the expired one included.
            let due = level > last && !self.thresholds.is_empty();
            let key = item.key.clone();
            if due {
                warnings.push(Warning {
                    item,
                    level,
                    seconds_left,
                });
            }
            // A duplicate key (the same certificate listed twice) keeps the higher level.
            let kept = self.warned.entry(key).or_insert(Level::Ok);
            *kept = (*kept).max(level.max(last));
        }
        (summary, warnings)
    }

    /// Items tracked (for tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.warned.len()
    }

    /// The warning's sentence, with what to do.
    fn message(&self, w: &Warning) -> String {
        let item = &w.item;
        let what = match item.kind {
            ExpiryKind::Server => format!("server certificate {}", item.subject),
            ExpiryKind::Chain => format!("intermediate certificate {}", item.subject),
            ExpiryKind::ClientCa => format!("client CA certificate {}", item.subject),
            ExpiryKind::CrlNextUpdate => format!("the CRL of {}", item.subject),
            ExpiryKind::OcspNextUpdate => {
                format!("the stapled OCSP response for {}", item.subject)
            }
            ExpiryKind::Client => format!(
                "client certificate {} (serial {}) of client {:?}",
                item.subject,
                item.serial.as_deref().unwrap_or("unknown"),
                item.client_id.as_deref().unwrap_or_default()
            ),
        };
        let place = match (&item.certificate_set, &item.listener) {
            (_, Some(l)) => format!("on listener {l:?}"),
            (Some(set), None) => format!("of certificate set {set:?}"),
            (None, None) => String::new(),
        };
        let when = rfc3339(item.not_after);
        let fix = match item.kind {
            ExpiryKind::Server => {
                "renew it (`moat cert server --ca DIR --host NAME`) and replace the file or \
                 upload it with the admin API: the broker serves it without a restart"
            }
            ExpiryKind::Chain => {
                "renew the intermediate, reissue what it signs and replace the chain file"
            }
            ExpiryKind::ClientCa => {
                "client certificates it signed are refused once it expires: make a new CA, \
                 add it to client_ca next to the old one and reissue the clients"
            }
            ExpiryKind::CrlNextUpdate => {
                "sign a fresh CRL (`moat cert crl --ca DIR`, or `openssl ca -gencrl`): the \
                 broker loads it within seconds"
            }
            ExpiryKind::OcspNextUpdate => {
                "fetch a fresh response (`openssl ocsp ... -respout FILE`) into the ocsp file: \
                 the broker staples it within seconds (a stale one is no longer stapled)"
            }
            ExpiryKind::Client => {
                "issue the device a new certificate (`moat cert client --ca DIR --cn ID`)"
            }
        };
        let verb = if matches!(
            item.kind,
            ExpiryKind::CrlNextUpdate | ExpiryKind::OcspNextUpdate
        ) {
            ("is due", "was due")
        } else {
            ("expires", "expired")
        };
        match w.level {
            Level::Expired => format!(
                "{what} {place} {} {} ago ({when}): {fix}",
                verb.1,
                human(w.seconds_left)
            ),
            Level::Within(i) => format!(
                "{what} {place} {} in {} ({when}; warning at {} before): {fix}",
                verb.0,
                human(w.seconds_left),
                span_label(self.thresholds.get(i).copied().unwrap_or_default())
            ),
            Level::Ok => format!("{what} {place} {} {when}", verb.0),
        }
    }

    fn level_label(&self, level: Level) -> String {
        match level {
            Level::Ok => "ok".into(),
            Level::Within(i) => span_label(self.thresholds.get(i).copied().unwrap_or_default()),
            Level::Expired => "expired".into(),
        }
    }
}

/// The thresholds in seconds, longest first.
fn thresholds(config: &TlsAlarmsConfig) -> Vec<i64> {
    let mut t: Vec<i64> = config
        .warn_before
        .iter()
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1))
        .collect();
    t.sort_unstable_by(|a, b| b.cmp(a));
    t.dedup();
    t
}

/// The payload of `$SYS/broker/tls/expiry/warning` (JSON).
#[derive(Debug, Serialize)]
struct WarningMessage<'a> {
    /// server, chain, client_ca, crl_next_update or client.
    kind: &'static str,
    /// The threshold crossed ("7d") or "expired".
    level: String,
    subject: &'a str,
    certificate_set: Option<&'a str>,
    listener: Option<&'a str>,
    client_id: Option<&'a str>,
    serial: Option<&'a str>,
    /// RFC 3339.
    not_after: String,
    seconds_left: i64,
    /// The log line's text.
    message: &'a str,
}

/// What the last check found and what was warned, for the metrics and `$SYS`.
#[derive(Debug)]
pub(crate) struct AlarmStatus {
    /// Threshold labels ("30d"), longest first.
    labels: Vec<String>,
    /// The TLS listeners (the alarms run only if there is one).
    listeners: Vec<String>,
    summary: Mutex<Option<Summary>>,
    warnings: [AtomicU64; 6],
    checks: AtomicU64,
    truncated: AtomicU64,
}

impl AlarmStatus {
    pub(crate) fn new(config: &TlsAlarmsConfig, tls_listeners: Vec<String>) -> Self {
        Self {
            labels: thresholds(config).into_iter().map(span_label).collect(),
            listeners: tls_listeners,
            summary: Mutex::new(None),
            warnings: Default::default(),
            checks: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Summary>> {
        self.summary.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether there is anything to watch (a TLS listener).
    pub(crate) fn enabled(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// The `$SYS/broker/tls/expiry/...` values (see [`crate::metrics::SysValues`]).
    pub(crate) fn sys_values(&self, out: &mut Vec<(String, String)>) {
        if !self.enabled() {
            return;
        }
        let summary = self.lock().clone().unwrap_or_default();
        for (name, counts) in [
            ("certificates", &summary.certificates),
            ("clients", &summary.clients),
        ] {
            let prefix = format!("tls/expiry/{name}");
            out.push((format!("{prefix}/expiring"), counts.expiring().to_string()));
            out.push((format!("{prefix}/expired"), counts.expired.to_string()));
            for (i, label) in self.labels.iter().enumerate() {
                let n = counts.within.get(i).copied().unwrap_or(0);
                out.push((format!("{prefix}/within/{label}"), n.to_string()));
            }
        }
        out.push((
            "tls/expiry/soonest".into(),
            summary.soonest.map_or_else(|| "none".into(), rfc3339),
        ));
        let total: u64 = self
            .warnings
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .sum();
        out.push(("tls/expiry/warnings".into(), total.to_string()));
    }
}

impl Collector for AlarmStatus {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        if !self.enabled() {
            return Ok(());
        }
        let summary = self.lock().clone();
        {
            let mut family = encoder.encode_descriptor(
                "tls_expiry_warnings",
                "Expiry warnings given (one per item and warn_days threshold crossed, one \
                 more at expiry), by kind of item.",
                None,
                MetricType::Counter,
            )?;
            for (label, n) in KIND_LABELS.iter().zip(&self.warnings) {
                ConstCounter::new(n.load(Ordering::Relaxed))
                    .encode(family.encode_family(&[("kind", *label)])?)?;
            }
        }
        {
            let e = encoder.encode_descriptor(
                "tls_expiry_checks",
                "Expiry checks run (every tls_alarms.check_interval_secs).",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(self.checks.load(Ordering::Relaxed)).encode(e)?;
        }
        {
            let e = encoder.encode_descriptor(
                "tls_expiry_client_scans_truncated",
                "Expiry checks that stopped at the most client certificates one check tracks \
                 (docs/LIMITS.md).",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(self.truncated.load(Ordering::Relaxed)).encode(e)?;
        }
        let Some(summary) = summary else {
            return Ok(());
        };
        let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        {
            let mut family = encoder.encode_descriptor(
                "tls_client_certificates_expiring",
                "Connected clients' certificates within each warn_days threshold (cumulative, \
                 not expired) or expired, by listener, as of the last check.",
                None,
                MetricType::Gauge,
            )?;
            for (listener, l) in &summary.listeners {
                for (i, label) in self.labels.iter().enumerate() {
                    let n = l.counts.within.get(i).copied().unwrap_or(0);
                    let labels = [("listener", listener.as_str()), ("within", label.as_str())];
                    gauge(n).encode(family.encode_family(&labels)?)?;
                }
                let labels = [("listener", listener.as_str()), ("within", "expired")];
                gauge(l.counts.expired).encode(family.encode_family(&labels)?)?;
            }
        }
        let now = unix(SystemTime::now());
        let mut family = encoder.encode_descriptor(
            "tls_client_certificate_soonest_expiry_seconds",
            "Seconds until the soonest-expiring certificate of a client connected at the last \
             check expires (negative once expired), by listener; absent without such clients.",
            None,
            MetricType::Gauge,
        )?;
        for (listener, l) in &summary.listeners {
            if let Some(soonest) = l.soonest {
                let labels = [("listener", listener.as_str())];
                ConstGauge::new(soonest.saturating_sub(now))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Connected clients' certificates, at most [`MAX_TRACKED_CLIENTS`]; `true` when that (or
/// the page budget) cut the scan short.
async fn client_certificates(
    handle: &BrokerHandle,
) -> Result<(Vec<Observed>, bool), crate::Stopped> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..MAX_CLIENT_PAGES {
        let page = handle
            .clients(ClientQuery {
                after: after.take(),
                limit: CLIENT_PAGE,
                ..ClientQuery::default()
            })
            .await?;
        for c in page.items {
            let Some(tls) = &c.tls else { continue };
            let Some(not_after) = tls.not_after else {
                continue;
            };
            if out.len() == MAX_TRACKED_CLIENTS {
                return Ok((out, true));
            }
            out.push(Observed::client(c.listener, c.client_id, tls, not_after));
        }
        match page.next_after {
            Some(next) if page.more => after = Some(next),
            _ => return Ok((out, false)),
        }
    }
    Ok((out, true))
}

/// Checks every `check_interval` until the broker stops (the caller drops this future).
pub(crate) async fn run(handle: BrokerHandle, status: Arc<AlarmStatus>, config: TlsAlarmsConfig) {
    let mut engine = Engine::new(&config);
    let interval = config.check_interval.max(Duration::from_secs(1));
    let mut was_truncated = false;
    loop {
        let now = SystemTime::now();
        let unix_now = unix(now);
        let mut items: Vec<Observed> = handle
            .expiry_at(now)
            .into_iter()
            .map(|i| Observed::served(i, unix_now))
            .collect();
        let Ok((clients, truncated)) = client_certificates(&handle).await else {
            return; // the router is gone: the broker is stopping
        };
        if truncated {
            status.truncated.fetch_add(1, Ordering::Relaxed);
            if !was_truncated {
                warn!(
                    max = MAX_TRACKED_CLIENTS,
                    "expiry alarms: more connected client certificates than one check \
                     tracks; the rest are not counted or warned about this time"
                );
            }
        }
        was_truncated = truncated;
        items.extend(clients);
        let (summary, warnings) = engine.check(items, &status.listeners, unix_now);
        *status.lock() = Some(summary);
        let total = warnings.len();
        for (i, w) in warnings.iter().enumerate() {
            status.warnings[kind_index(w.item.kind)].fetch_add(1, Ordering::Relaxed);
            if i >= MAX_WARNINGS_PER_CHECK {
                continue;
            }
            let message = engine.message(w);
            let kind = KIND_LABELS[kind_index(w.item.kind)];
            let level = engine.level_label(w.level);
            if w.level == Level::Expired {
                error!(kind, level = %level, "{message}");
            } else {
                warn!(kind, level = %level, "{message}");
            }
            let payload = WarningMessage {
                kind,
                level,
                subject: &w.item.subject,
                certificate_set: w.item.certificate_set.as_deref(),
                listener: w.item.listener.as_deref(),
                client_id: w.item.client_id.as_deref(),
                serial: w.item.serial.as_deref(),
                not_after: rfc3339(w.item.not_after),
                seconds_left: w.seconds_left,
                message: &message,
            };
            if let Ok(json) = serde_json::to_string(&payload) {
                if handle
                    .publish_sys_event("tls/expiry/warning", json)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        // Counted once done: a check counted has published its warnings.
        status.checks.fetch_add(1, Ordering::Relaxed);
        if total > MAX_WARNINGS_PER_CHECK {
            warn!(
                more = total - MAX_WARNINGS_PER_CHECK,
                "expiry alarms: more certificates reached a warning threshold than are logged \
                 one by one; `moat cert inventory` lists them all"
            );
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn config(days: &[u64]) -> TlsAlarmsConfig {
        TlsAlarmsConfig {
            warn_before: days
                .iter()
                .map(|d| Duration::from_secs(d * 86_400))
                .collect(),
            check_interval: Duration::from_secs(60),
        }
    }

    fn served(subject: &str, not_after: i64) -> Observed {
        let item = ExpiryItem {
            kind: ExpiryKind::Server,
            certificate_set: Some("mqtts".into()),
            client_id: None,
            subject: subject.into(),
            not_after: rfc3339(not_after),
            seconds_left: not_after,
            days_left: not_after.div_euclid(DAY),
            level: crate::ExpiryLevel::of(not_after),
        };
        Observed::served(item, 0)
    }

    fn client(id: &str, fingerprint: &str, not_after: i64) -> Observed {
        let tls = moat_core::TlsInfo {
            subject: Some(format!("CN={id}")),
            fingerprint: Some(fingerprint.into()),
            serial: Some("01:02".into()),
            not_after: Some(not_after),
            ..moat_core::TlsInfo::default()
        };
        Observed::client("mqtts".into(), id.into(), &tls, not_after)
    }

    #[test]
    fn levels_against_thresholds() {
        let t = [30 * DAY, 7 * DAY, DAY];
        let table = [
            (-5, Level::Expired),
            (0, Level::Expired),
            (1, Level::Within(2)),
            (DAY, Level::Within(2)),
            (DAY + 1, Level::Within(1)),
            (7 * DAY, Level::Within(1)),
            (8 * DAY, Level::Within(0)),
            (30 * DAY, Level::Within(0)),
            (30 * DAY + 1, Level::Ok),
        ];
        for (left, level) in table {
            assert_eq!(Level::of(left, &t), level, "{left}");
        }
        assert_eq!(Level::of(5, &[]), Level::Ok);
        assert_eq!(Level::of(0, &[]), Level::Expired);
        assert!(Level::Ok < Level::Within(0));
        assert!(Level::Within(0) < Level::Within(2));
        assert!(Level::Within(2) < Level::Expired);
    }

    #[test]
    fn labels() {
        for (secs, label) in [
            (30 * DAY, "30d"),
            (DAY / 2, "12h"),
            (90, "90s"),
            (120, "2m"),
            (9, "9s"),
        ] {
            assert_eq!(span_label(secs), label);
        }
        assert_eq!(human(6 * DAY + 5), "6 days");
        assert_eq!(human(DAY + 5), "24 hours");
        assert_eq!(human(60), "60 seconds");
        assert_eq!(human(1), "1 second");
        assert_eq!(human(-3 * 3_600), "3 hours");
    }

    #[test]
    fn thresholds_are_sorted_and_deduplicated() {
        let mut c = config(&[1, 30, 7, 7]);
        c.warn_before.push(Duration::from_millis(10));
        assert_eq!(thresholds(&c), vec![30 * DAY, 7 * DAY, DAY, 1]);
    }

    #[test]
    fn one_warning_per_threshold_crossed_and_one_at_expiry() {
        let mut e = Engine::new(&config(&[30, 7, 1]));
        let listeners = ["mqtts".to_owned()];
        let not_after = 40 * DAY;
        let mut warned = Vec::new();
        // Every hour for 41 days.
        for hour in 0..41 * 24 {
            let now = hour * 3_600;
            let (_, w) = e.check(vec![served("CN=broker", not_after)], &listeners, now);
            warned.extend(w.into_iter().map(|w| (now, w.level)));
        }
        let levels: Vec<Level> = warned.iter().map(|w| w.1).collect();
        assert_eq!(
            levels,
            [
                Level::Within(0),
                Level::Within(1),
                Level::Within(2),
                Level::Expired
            ]
        );
        assert_eq!(warned[0].0, 10 * DAY);
        assert_eq!(warned[3].0, 40 * DAY);
    }

    #[test]
    fn first_seen_close_to_expiry_warns_once() {
        let mut e = Engine::new(&config(&[30, 7, 1]));
        let (s, w) = e.check(vec![served("CN=broker", DAY / 2)], &[], 0);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].level, Level::Within(2));
        assert_eq!(s.certificates.within, vec![1, 1, 1]);
        assert_eq!(s.certificates.expiring(), 1);
        let msg = e.message(&w[0]);
        assert!(
            msg.contains("server certificate CN=broker")
                && msg.contains("expires in 12 hours")
                && msg.contains("moat cert server"),
            "{msg}"
        );
        let (_, w) = e.check(vec![served("CN=broker", DAY / 2)], &[], 60);
        assert!(w.is_empty());
    }

    #[test]
    fn a_renewed_certificate_starts_afresh_and_gone_items_are_forgotten() {
        let mut e = Engine::new(&config(&[30, 7, 1]));
        let (_, w) = e.check(vec![served("CN=broker", DAY / 2)], &[], 0);
        assert_eq!(w.len(), 1);
        // Renewed for a year: nothing to say, the old item is gone.
        let (s, w) = e.check(vec![served("CN=broker", 365 * DAY)], &[], 10);
        assert!(w.is_empty());
        assert_eq!(s.certificates.expiring(), 0);
        assert_eq!(e.tracked(), 1);
        // Replaced again by a short one: warned again.
        let (_, w) = e.check(vec![served("CN=broker", DAY / 3)], &[], 20);
        assert_eq!(w.len(), 1);
        let (_, _) = e.check(Vec::new(), &[], 30);
        assert_eq!(e.tracked(), 0);
    }

    #[test]
    fn clients_are_counted_per_listener() {
        let mut e = Engine::new(&config(&[30, 7, 1]));
        let listeners = ["mqtts".to_owned(), "wss".to_owned()];
        let items = vec![
            client("a", "fa", 3 * DAY),
            client("b", "fb", -5),
            client("c", "fc", 100 * DAY),
        ];
        let (s, w) = e.check(items, &listeners, 0);
        assert_eq!(w.len(), 2);
        assert_eq!(s.clients.within, vec![1, 1, 0]);
        assert_eq!(s.clients.expired, 1);
        assert_eq!(s.listeners["mqtts"].counts, s.clients);
        assert_eq!(s.listeners["mqtts"].soonest, Some(-5));
        assert_eq!(s.listeners["wss"].counts, Counts::new(3));
        assert_eq!(s.soonest, Some(-5));
        let msg = e.message(&w[1]);
        assert!(
            msg.contains("client certificate CN=b (serial 01:02) of client \"b\"")
                && msg.contains("expired"),
            "{msg}"
        );
        // The same client with a new certificate is a new item.
        let (_, w) = e.check(vec![client("a", "fa2", 3 * DAY)], &listeners, 1);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn an_empty_list_warns_about_nothing_but_still_counts() {
        let mut e = Engine::new(&config(&[]));
        let (s, w) = e.check(vec![served("CN=broker", -1), client("a", "f", 5)], &[], 0);
        assert!(w.is_empty());
        assert_eq!(s.certificates.expired, 1);
        assert_eq!(s.clients.expiring(), 0);
    }
}
