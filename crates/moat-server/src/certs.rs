//! Certificate sets: the TLS material that one or more TLS listeners serve from the same
//! certificate file, managed as one thing by the admin API (stage, activate with a test
//! handshake, restore the previous material, delete).
//!
//! A set's `id` is the name of its first listener in configuration order. Its state on disk
//! lives under `tls_state_dir/<id>/`:
//! - `previous/` holds the material before the last activation or deletion (`cert.pem`,
//!   `chain.pem`, `key.pem` (0600), `client_ca.pem`, `client_auth`), for [`restore`];
//! - `removed` marks a deleted set: after a restart its listeners bind but refuse handshakes;
//! - `active/` holds what the last activation installed (`cert.pem`, `chain.pem`, `key.pem`
//!   (0600), `client_ca.pem`); the listeners' settings (and the config file, written by the
//!   admin API) point there, so an upload never overwrites a file kept elsewhere.
//!
//! A staged (pending) set lives in memory only. Activation installs it on every listener of
//! the set, then connects to each listener from inside the broker and completes a TLS
//! handshake that accepts only the new certificate and checks the handshake signature with
//! it; if one fails, every listener gets its old files, settings and material back.
//!
//! [`restore`]: crate::BrokerHandle::restore_previous

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use moat_pki::decode::{self, Encoding};
use moat_pki::inspect::{rfc3339, CertInfo, San};
use moat_pki::key::KeyAlgorithm;
use moat_pki::lint::{Finding, Severity};
use moat_pki::{KeyError, LintCode};
use moat_tls::{ClientAuth, LiveTls, Material, Pem, TlsError, TlsSettings, TlsSnapshot};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::Chain;

/// New material for a certificate set, as uploaded. Parts not given are kept from the active
/// set. Its `Debug` never shows the key or the passphrase.
#[derive(Clone, Default)]
pub struct CertUpload {
    /// The server certificate, PEM or DER. Several certificates are split: the leaf stays,
    /// the others go to the chain.
    pub cert: Vec<u8>,
    /// Intermediates, PEM or DER.
    pub chain: Option<Vec<u8>>,
    /// The private key, PEM or DER, possibly encrypted.
    pub key: Zeroizing<Vec<u8>>,
    /// The passphrase of an encrypted key.
    pub key_passphrase: Option<Zeroizing<String>>,
    /// The CA bundle client certificates are verified against.
    pub client_ca: Option<Vec<u8>>,
    /// The client certificate policy; `None` keeps the current one.
    pub client_auth: Option<ClientAuth>,
}

impl std::fmt::Debug for CertUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertUpload")
            .field("cert", &self.cert.len())
            .field("chain", &self.chain.as_ref().map(Vec::len))
            .field("key", &"<redacted>")
            .field(
                "key_passphrase",
                &self.key_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .field("client_auth", &self.client_auth)
            .finish()
    }
}

/// Why a certificate set operation failed. Each message describes one level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// No certificate set has that id.
    #[error("no certificate set {0:?}")]
    NoSet(String),
    /// The material was refused: nothing was staged or changed.
    #[error("the certificate set was refused ({} errors)", findings.iter().filter(|f| f.severity == Severity::Error).count())]
    Refused {
        /// Every finding (errors, warnings, infos), each with the fact and the fix.
        findings: Vec<Finding>,
        /// What was done to the input (split, converted, decrypted).
        notes: Vec<String>,
    },
    /// The set has no pending material.
    #[error("no pending certificate set")]
    NoPending,
    /// The set has no previous material.
    #[error("no previous certificate set")]
    NoPrevious,
    /// The upload is inconsistent (e.g. client_auth required without any client CA).
    #[error("{0}")]
    Invalid(String),
    /// The test handshake with a listener failed: every listener was rolled back.
    #[error(
        "the test handshake with listener {listener:?} failed ({reason}); the previous \
         material was put back (rolled back)"
    )]
    TestHandshakeFailed {
        /// The listener.
        listener: String,
        /// What the handshake said.
        reason: String,
    },
    /// The new material could not be installed on a listener (every listener was rolled
    /// back).
    #[error("listener {listener:?}: the new material could not be installed")]
    Install {
        /// The listener.
        listener: String,
        /// Why.
        source: TlsError,
    },
    /// The set's state could not be written.
    #[error("cannot write {}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The broker is stopping.
    #[error("the broker is not running")]
    Stopped,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One certificate, described for the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertDetail {
    /// Subject, RFC 4514 style.
    pub subject: String,
    /// Subject alternative names.
    pub sans: Vec<String>,
    /// Issuer, RFC 4514 style.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Whole days until `not_after` (negative when expired).
    pub days_left: i64,
    /// "P-256", "RSA 2048", "Ed25519"...
    pub key_type: String,
    /// SHA-256 of the DER, hex with colons (as openssl prints it).
    pub fingerprint_sha256: String,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl CertDetail {
    /// Describes a DER certificate at `now`; `None` if it does not parse.
    pub fn of(der: &[u8], now: SystemTime) -> Option<Self> {
        let info = CertInfo::from_der(der).ok()?;
        Some(Self {
            sans: info.sans.iter().map(San::value).collect(),
            serial: info.serial.clone(),
            not_before: rfc3339(info.not_before_unix),
            not_after: rfc3339(info.not_after_unix),
            days_left: (info.not_after_unix - unix(now)).div_euclid(86_400),
            key_type: match &info.key {
                KeyAlgorithm::Ec { curve } => curve.clone(),
                other => other.to_string(),
            },
            fingerprint_sha256: info.sha256_fingerprint.clone(),
            is_ca: info.is_ca(),
            issuer: info.issuer,
            subject: info.subject,
        })
    }
}

/// One certificate revocation list of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrlDetail {
    /// Its issuer.
    pub issuer: String,
    /// When the next one is due, RFC 3339.
    pub next_update: Option<String>,
    /// How many certificates it revokes.
    pub revoked: usize,
}

/// Whether a set serves material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetState {
    /// Its listeners serve it.
    Active,
    /// Deleted: its listeners refuse handshakes.
    Removed,
}

/// A certificate set as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSet {
    /// The name of its first listener.
    pub id: String,
    /// Its listeners, in configuration order.
    pub listeners: Vec<String>,
    /// Active or removed.
    pub state: SetState,
    /// The client certificate policy of its first listener.
    #[serde(serialize_with = "client_auth_name")]
    pub client_auth: ClientAuth,
    /// The server certificate (none when removed).
    pub certificate: Option<CertDetail>,
    /// The intermediates served after it.
    pub chain: Vec<CertDetail>,
    /// The CAs client certificates are verified against.
    pub client_ca: Vec<CertDetail>,
    /// The CRLs in force.
    pub crls: Vec<CrlDetail>,
    /// Lint warnings of the material served.
    pub warnings: Vec<Finding>,
    /// Material staged and not yet activated.
    pub pending: Option<PendingSet>,
    /// Whether there is previous material to restore.
    pub previous: bool,
    /// TLS clients connected over its listeners.
    pub connected_clients: usize,
}

/// Staged material, checked and ready to activate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingSet {
    /// The server certificate.
    pub certificate: CertDetail,
    /// The intermediates.
    pub chain: Vec<CertDetail>,
    /// The client CAs.
    pub client_ca: Vec<CertDetail>,
    /// The client certificate policy it will have.
    #[serde(serialize_with = "client_auth_name")]
    pub client_auth: ClientAuth,
    /// Findings that did not refuse it (warnings, infos).
    pub warnings: Vec<Finding>,
    /// What was done to the input: split, converted from DER, decrypted.
    pub notes: Vec<String>,
    /// When it was staged, RFC 3339.
    pub uploaded_at: String,
}

/// One listener's test handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestHandshake {
    /// The listener.
    pub listener: String,
    /// Whether the handshake completed with the new certificate.
    pub ok: bool,
}

/// What an activation (or restore) did.
#[derive(Debug, Clone, Serialize)]
pub struct Activation {
    /// Always true (a failed activation is an error).
    pub activated: bool,
    /// The listeners now serving the material.
    pub listeners: Vec<String>,
    /// The test handshake of each.
    pub test_handshake: Vec<TestHandshake>,
    /// Lint warnings of the material.
    pub warnings: Vec<Finding>,
    /// The settings in force per listener now (to write into moat.toml: paths, client_auth).
    #[serde(skip)]
    pub settings: Vec<(String, TlsSettings)>,
}

/// TLS clients of one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerClients {
    /// The listener.
    pub name: String,
    /// Its TLS clients (connected now, or disconnected by the deletion).
    pub clients: usize,
}

/// The clients a deletion disconnects (or would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteReport {
    /// Per listener.
    pub listeners: Vec<ListenerClients>,
    /// Over all.
    pub total: usize,
}

/// What an expiry item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryKind {
    /// A server certificate.
    Server,
    /// An intermediate served after it.
    Chain,
    /// A CA client certificates are verified against.
    ClientCa,
    /// When a CRL's next update is due.
    CrlNextUpdate,
    /// When a stapled OCSP response's nextUpdate is due (it stops being stapled then).
    OcspNextUpdate,
    /// A connected client's certificate.
    Client,
}

/// How close an expiry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ExpiryLevel {
    /// More than 30 days.
    #[serde(rename = "ok")]
    Ok,
    /// Within 30 days.
    #[serde(rename = "30d")]
    Days30,
    /// Within 7 days.
    #[serde(rename = "7d")]
    Days7,
    /// Within a day.
    #[serde(rename = "1d")]
    Days1,
    /// Past.
    #[serde(rename = "expired")]
    Expired,
}

impl ExpiryLevel {
    /// The level of something `seconds_left` away.
    pub fn of(seconds_left: i64) -> Self {
        match seconds_left {
            s if s <= 0 => Self::Expired,
            s if s <= 86_400 => Self::Days1,
            s if s <= 7 * 86_400 => Self::Days7,
            s if s <= 30 * 86_400 => Self::Days30,
            _ => Self::Ok,
        }
    }
}

/// Something that expires: a certificate, or a CRL's next update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiryItem {
    /// What it is.
    pub kind: ExpiryKind,
    /// The set it belongs to (not for clients).
    pub certificate_set: Option<String>,
    /// The client (for client certificates).
    pub client_id: Option<String>,
    /// The certificate's subject, or the CRL's issuer.
    pub subject: String,
    /// When, RFC 3339.
    pub not_after: String,
    /// Seconds from now (negative when past).
    pub seconds_left: i64,
    /// Whole days from now (negative when past).
    pub days_left: i64,
    /// How close.
    pub level: ExpiryLevel,
}

impl ExpiryItem {
    fn new(
        kind: ExpiryKind,
        set: Option<&str>,
        subject: String,
        not_after: i64,
        now: SystemTime,
    ) -> Self {
        let seconds_left = not_after - unix(now);
        Self {
            kind,
            certificate_set: set.map(str::to_owned),
            client_id: None,
            subject,
            not_after: rfc3339(not_after),
            seconds_left,
            days_left: seconds_left.div_euclid(86_400),
            level: ExpiryLevel::of(seconds_left),
        }
    }

    /// A connected client's certificate (`not_after` in Unix seconds), for the admin API to
    /// add to [`BrokerHandle::expiry`](crate::BrokerHandle::expiry).
    pub fn client(client_id: &str, subject: &str, not_after: i64, now: SystemTime) -> Self {
        let mut item = Self::new(ExpiryKind::Client, None, subject.to_owned(), not_after, now);
        item.client_id = Some(client_id.to_owned());
        item
    }
}

/// Handshake failures over every TLS listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeFailures {
    /// Counts by reason label (reasons never seen are left out).
    pub by_reason: BTreeMap<String, u64>,
    /// The last failures, newest first.
    pub recent: Vec<RecentFailure>,
}

/// One failed handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentFailure {
    /// When, RFC 3339.
    pub at: String,
    /// The listener.
    pub listener: String,
    /// The client's address.
    pub peer: String,
    /// The reason label.
    pub reason: String,
    /// What rustls said.
    pub detail: String,
}

fn client_auth_name<S: serde::Serializer>(auth: &ClientAuth, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match auth {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    })
}

fn parse_client_auth(text: &str) -> Option<ClientAuth> {
    match text.trim() {
        "none" => Some(ClientAuth::None),
        "optional" => Some(ClientAuth::Optional),
        "required" => Some(ClientAuth::Required),
        _ => None,
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The marker file of a deleted set.
pub(crate) fn removed_marker(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(id).join("removed")
}

/// The ids of the deleted certificate sets under `tls_state_dir` (those whose listeners
/// refuse handshakes until material is installed again). Start-up code that makes
/// certificates (the first run's local PKI) must leave them alone.
pub fn removed_certificate_sets(tls_state_dir: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(tls_state_dir) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = dir
        .flatten()
        .filter(|e| e.path().join("removed").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// One listener of a set.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) live: Arc<LiveTls>,
}

#[derive(Debug)]
struct Set {
    id: String,
    members: Vec<Member>,
}

/// Checked material waiting for activation.
#[derive(Debug)]
struct Staged {
    pem: Pem,
    client_auth: ClientAuth,
    leaf: Vec<u8>,
    view: PendingSet,
}

/// Every certificate set of a server.
#[derive(Debug)]
pub(crate) struct CertSets {
    state_dir: PathBuf,
    sets: Vec<Set>,
    pending: Mutex<HashMap<String, Arc<Staged>>>,
    /// One activation, restore or deletion at a time.
    changing: tokio::sync::Mutex<()>,
    handshake_timeout: Duration,
}

/// Groups TLS listeners (in configuration order) by certificate file: each group's id is
/// its first listener's name.
pub(crate) fn group(members: Vec<(Member, PathBuf)>) -> Vec<(String, Vec<Member>)> {
    let mut sets: Vec<(PathBuf, String, Vec<Member>)> = Vec::new();
    for (m, cert) in members {
        match sets.iter_mut().find(|(c, _, _)| *c == cert) {
            Some((_, _, ms)) => ms.push(m),
            None => sets.push((cert, m.name.clone(), vec![m])),
        }
    }
    sets.into_iter().map(|(_, id, ms)| (id, ms)).collect()
}

/// The loopback address of the same family for a wildcard bind.
fn dial_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// A finding about an uploaded part, made here (lint sees the part after it was fixed).
fn finding(
    code: LintCode,
    severity: Severity,
    file: &str,
    message: String,
    fix: Option<&str>,
) -> Finding {
    Finding {
        code,
        severity,
        file: file.to_owned(),
        message,
        fix: fix.map(str::to_owned),
    }
}

/// Whether `chain` (PEM) starts with the issuer of the first certificate in `cert`.
fn chain_fits(cert: &[u8], chain: &[u8]) -> bool {
    let first = |data: &[u8]| {
        decode::decode(data)
            .ok()
            .and_then(|d| d.certificates().into_iter().next())
            .and_then(|der| CertInfo::from_der(&der).ok())
    };
    match (first(cert), first(chain)) {
        (Some(leaf), Some(top)) => leaf.issuer == top.subject,
        _ => false,
    }
}

/// A warning when a certificate is served without a chain and its issuer is not a root this
/// set knows (its client CAs): if that issuer is an intermediate, clients cannot build the
/// chain. Lint cannot tell an intermediate from a root it has never seen, so the warning says
/// both cases.
fn incomplete_chain(leaf: &[u8], chain: &[Vec<u8>], client_ca: Option<&[u8]>) -> Option<Finding> {
    // A chain that was given ends, as it should, below a root that is left out.
    if !chain.is_empty() {
        return None;
    }
    let top = CertInfo::from_der(leaf).ok()?;
    if top.self_signed {
        return None;
    }
    let known_root = client_ca
        .and_then(|d| decode::decode(d).ok())
        .map(|d| d.certificates())
        .unwrap_or_default()
        .iter()
        .filter_map(|der| CertInfo::from_der(der).ok())
        .any(|ca| ca.self_signed && ca.subject == top.issuer);
    if known_root {
        return None;
    }
    Some(finding(
        LintCode::ChainIncomplete,
        Severity::Warning,
        "chain",
        format!(
            "{} was issued by {}, which is not in the chain: clients that do not already have \
             {} cannot verify the broker's certificate",
            top.subject, top.issuer, top.issuer
        ),
        Some(
            "if the issuer is an intermediate CA, add its certificate to the chain (or paste \
             the whole bundle into the certificate field); if it is a root CA your clients \
             trust, nothing to do",
        ),
    ))
}

/// The certificates of one uploaded part, as DER. DER input gets a finding and a note.
/// `None` when nothing decodes (the raw bytes then go to lint, which says what they are).
fn part_certs(
    part: &str,
    data: &[u8],
    findings: &mut Vec<Finding>,
    notes: &mut Vec<String>,
) -> Option<Vec<Vec<u8>>> {
    let decoded = decode::decode(data).ok()?;
    let certs = decoded.certificates();
    if certs.is_empty() {
        return None;
    }
    if decoded.encoding == Encoding::Der {
        findings.push(finding(
            LintCode::FileDer,
            Severity::Info,
            part,
            format!("{part} was given as DER (binary); it was converted to PEM"),
            Some("nothing to do; PEM is what the broker stores"),
        ));
        notes.push(format!("{part}: DER converted to PEM"));
    }
    Some(certs)
}

fn pem_of(certs: &[Vec<u8>]) -> Vec<u8> {
    certs
        .iter()
        .map(|c| decode::cert_pem(c))
        .collect::<String>()
        .into_bytes()
}

fn short(der: &[u8]) -> String {
    CertInfo::from_der(der).map_or_else(|_| "a certificate".into(), |i| i.short_name())
}

/// Reads an optional file; a missing file is `None`.
fn read_opt(path: Option<&Path>) -> Option<Vec<u8>> {
    path.and_then(|p| std::fs::read(p).ok())
}

impl CertSets {
    pub(crate) fn new(
        state_dir: PathBuf,
        groups: Vec<(String, Vec<Member>)>,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            state_dir,
            sets: groups
                .into_iter()
                .map(|(id, members)| Set { id, members })
                .collect(),
            pending: Mutex::new(HashMap::new()),
            changing: tokio::sync::Mutex::new(()),
            handshake_timeout,
        }
    }

    fn set(&self, id: &str) -> Result<&Set, CertError> {
        self.sets
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| CertError::NoSet(id.to_owned()))
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Staged>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    fn previous_dir(&self, id: &str) -> PathBuf {
        self.set_dir(id).join("previous")
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.sets.iter().map(|s| s.id.clone()).collect()
    }

    /// The set whose listener this is.
    pub(crate) fn set_of(&self, listener: &str) -> Option<String> {
        self.sets
            .iter()
            .find(|s| s.members.iter().any(|m| m.name == listener))
            .map(|s| s.id.clone())
    }

    pub(crate) fn view(&self, id: &str, now: SystemTime) -> Result<CertSet, CertError> {
        let set = self.set(id)?;
        let first = &set.members[0];
        let served = first.live.served();
        let details =
            |ders: &[Vec<u8>]| ders.iter().filter_map(|d| CertDetail::of(d, now)).collect();
        Ok(CertSet {
            id: set.id.clone(),
            listeners: set.members.iter().map(|m| m.name.clone()).collect(),
            state: if served.is_some() {
                SetState::Active
            } else {
                SetState::Removed
            },
            client_auth: first.live.settings().client_auth,
            certificate: served.as_ref().and_then(|s| CertDetail::of(&s.leaf, now)),
            chain: served
                .as_ref()
                .map(|s| details(&s.chain))
                .unwrap_or_default(),
            client_ca: served
                .as_ref()
                .map(|s| details(&s.client_ca))
                .unwrap_or_default(),
            crls: served
                .as_ref()
                .map(|s| {
                    s.crls
                        .iter()
                        .map(|c| CrlDetail {
                            issuer: c.issuer.clone(),
                            next_update: c.next_update.map(rfc3339),
                            revoked: c.revoked,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            warnings: served.map(|s| s.warnings).unwrap_or_default(),
            pending: self.pending_map().get(id).map(|p| p.view.clone()),
            previous: self.previous_dir(id).join("cert.pem").exists(),
            connected_clients: set.members.iter().map(|m| m.live.connections()).sum(),
        })
    }

    pub(crate) fn expiry(&self, now: SystemTime) -> Vec<ExpiryItem> {
        let mut items = Vec::new();
        for set in &self.sets {
            let Some(served) = set.members[0].live.served() else {
                continue;
            };
            let id = Some(set.id.as_str());
            let mut cert = |kind, der: &[u8]| {
                if let Ok(info) = CertInfo::from_der(der) {
                    items.push(ExpiryItem::new(
                        kind,
                        id,
                        info.subject,
                        info.not_after_unix,
                        now,
                    ));
                }
            };
            cert(ExpiryKind::Server, &served.leaf);
            for c in &served.chain {
                cert(ExpiryKind::Chain, c);
            }
            // SNI sets: recognisable by their subjects; an intermediate they share with the
            // default (or each other) is listed once.
            let mut listed: Vec<&[u8]> = served.chain.iter().map(Vec::as_slice).collect();
            for set in &served.sni {
                cert(ExpiryKind::Server, &set.leaf);
                for c in &set.chain {
                    if !listed.contains(&c.as_slice()) {
                        listed.push(c);
                        cert(ExpiryKind::Chain, c);
                    }
                }
            }
            for c in &served.client_ca {
                cert(ExpiryKind::ClientCa, c);
            }
            for ocsp in set.members[0].live.ocsp_status(now) {
                if let (Some(next), Some(_)) = (ocsp.next_update, ocsp.status) {
                    items.push(ExpiryItem::new(
                        ExpiryKind::OcspNextUpdate,
                        id,
                        ocsp.subject,
                        next,
                        now,
                    ));
                }
            }
            for crl in &served.crls {
                if let Some(next) = crl.next_update {
                    items.push(ExpiryItem::new(
                        ExpiryKind::CrlNextUpdate,
                        id,
                        crl.issuer.clone(),
                        next,
                        now,
                    ));
                }
            }
        }
        items.sort_by_key(|i| i.seconds_left);
        items
    }

    pub(crate) fn delete_preview(&self, id: &str) -> Result<DeleteReport, CertError> {
        let set = self.set(id)?;
        let listeners: Vec<ListenerClients> = set
            .members
            .iter()
            .map(|m| ListenerClients {
                name: m.name.clone(),
                clients: m.live.connections(),
            })
            .collect();
        let total = listeners.iter().map(|l| l.clients).sum();
        Ok(DeleteReport { listeners, total })
    }

    pub(crate) fn discard(&self, id: &str) -> Result<(), CertError> {
        self.set(id)?;
        match self.pending_map().remove(id) {
            Some(_) => Ok(()),
            None => Err(CertError::NoPending),
        }
    }

    /// The settings a listener gets with `pem`: every part in the set's own folder under the
    /// data dir (`tls/<id>/active/`), so that what the console installs never overwrites a
    /// file the operator keeps elsewhere (the local CA of the first run, /etc/ssl), and the
    /// configuration is pointed at it; the key is stored decrypted (0600).
    fn target_settings(
        &self,
        id: &str,
        current: &TlsSettings,
        pem: &Pem,
        client_auth: ClientAuth,
    ) -> TlsSettings {
        let mut s = current.clone();
        s.client_auth = client_auth;
        s.key_passphrase_file = None;
        let own = |name: &str| self.set_dir(id).join("active").join(name);
        s.cert = own("cert.pem");
        s.key = own("key.pem");
        s.chain = pem.chain.as_ref().map(|_| own("chain.pem"));
        s.client_ca = pem.client_ca.as_ref().map(|_| own("client_ca.pem"));
        s
    }

    /// Checks an upload against the active set (blocking: reads files, lints, builds).
    fn check(&self, id: &str, upload: CertUpload, now: SystemTime) -> Result<Staged, CertError> {
        let set = self.set(id)?;
        let current = set.members[0].live.settings();
        let mut findings = Vec::new();
        let mut notes = Vec::new();

        // The key first: it tells which pasted certificate is the leaf.
        let passphrase = upload.key_passphrase.as_ref().map(|p| p.as_bytes());
        let key = match moat_pki::key::load(&upload.key, None) {
            Ok(k) => Some(k),
            Err(KeyError::Encrypted(how)) => match passphrase {
                None => {
                    findings.push(finding(
                        LintCode::KeyEncrypted,
                        Severity::Error,
                        "key",
                        format!("the key is encrypted ({how}): give its passphrase"),
                        Some("send key_passphrase with the key, or upload the key decrypted"),
                    ));
                    None
                }
                Some(p) => match moat_pki::key::load(&upload.key, Some(p)) {
                    Ok(k) => {
                        notes.push(
                            "the key was decrypted with its passphrase and is stored \
                             decrypted (file mode 0600); the passphrase is not kept"
                                .into(),
                        );
                        Some(k)
                    }
                    Err(e) => {
                        findings.push(finding(
                            LintCode::KeyWrongPassphrase,
                            Severity::Error,
                            "key",
                            format!("the key cannot be decrypted: {e}"),
                            Some("give the passphrase the key was encrypted with"),
                        ));
                        None
                    }
                },
            },
            // Lint says what is wrong with it.
            Err(_) => None,
        };
        if key.is_some() && decode::decode(&upload.key).is_ok_and(|d| d.encoding == Encoding::Der) {
            findings.push(finding(
                LintCode::FileDer,
                Severity::Info,
                "key",
                "key was given as DER (binary); it was converted to PEM".into(),
                Some("nothing to do; PEM is what the broker stores"),
            ));
            notes.push("key: DER converted to PEM".into());
        }
        if findings.iter().any(|f| f.severity == Severity::Error) {
            return Err(CertError::Refused { findings, notes });
        }
        let key_pem = match &key {
            Some(k) => Zeroizing::new(k.to_pkcs8_pem().as_bytes().to_vec()),
            None => upload.key.clone(),
        };

        // The certificate field: a bundle is split (the leaf stays, the rest is chain).
        let mut moved = Vec::new();
        let cert = match part_certs("cert", &upload.cert, &mut findings, &mut notes) {
            Some(certs) if certs.len() > 1 => {
                let leaf_at = certs
                    .iter()
                    .position(|c| key.as_ref().and_then(|k| k.matches_certificate(c)) == Some(true))
                    .or_else(|| {
                        certs
                            .iter()
                            .position(|c| CertInfo::from_der(c).is_ok_and(|i| !i.is_ca()))
                    })
                    .unwrap_or(0);
                let mut certs = certs;
                let leaf = certs.remove(leaf_at);
                let names: Vec<String> = certs.iter().map(|c| short(c)).collect();
                let message = format!(
                    "{} certificates were pasted into the certificate field and split: {} \
                     is the certificate, {} moved to the chain",
                    certs.len() + 1,
                    short(&leaf),
                    names.join(", ")
                );
                findings.push(finding(
                    LintCode::CertMultiple,
                    Severity::Info,
                    "cert",
                    message.clone(),
                    Some("nothing to do; next time give the intermediates as the chain"),
                ));
                notes.push(message);
                moved = certs;
                pem_of(&[leaf])
            }
            Some(certs) => pem_of(&certs),
            None => upload.cert.clone(),
        };

        // The chain: what was moved, then the chain given; with neither, the active one.
        let given_chain = match &upload.chain {
            Some(data) => Some(
                part_certs("chain", data, &mut findings, &mut notes)
                    .map_or_else(|| data.clone(), |c| pem_of(&c)),
            ),
            // Only a chain that still fits the new certificate is kept.
            None if moved.is_empty() => match read_opt(current.chain.as_deref()) {
                Some(old) if chain_fits(&upload.cert, &old) => Some(old),
                Some(_) => {
                    notes.push(
                        "the chain served until now was left out: the new certificate was not \
                         issued by its first certificate"
                            .into(),
                    );
                    None
                }
                None => None,
            },
            None => None,
        };
        let chain = match (moved.is_empty(), given_chain) {
            (true, given) => given,
            (false, None) => Some(pem_of(&moved)),
            (false, Some(given)) => {
                let mut all = pem_of(&moved);
                all.extend_from_slice(&given);
                Some(all)
            }
        };
        let client_ca = match &upload.client_ca {
            Some(data) => Some(
                part_certs("client_ca", data, &mut findings, &mut notes)
                    .map_or_else(|| data.clone(), |c| pem_of(&c)),
            ),
            None => read_opt(current.client_ca.as_deref()),
        };
        let client_auth = upload.client_auth.unwrap_or(current.client_auth);
        if client_auth != ClientAuth::None && client_ca.is_none() {
            return Err(CertError::Invalid(format!(
                "client_auth {:?} needs a client CA: upload client_ca (the CA bundle that \
                 signed the client certificates) or set client_auth to none",
                match client_auth {
                    ClientAuth::Required => "required",
                    _ => "optional",
                }
            )));
        }
        let pem = Pem {
            cert,
            chain,
            key: key_pem,
            client_ca,
        };

        // The same lint and build as the broker's own files.
        let target = self.target_settings(id, &current, &pem, client_auth);
        let names = [
            (Some(target.cert.as_path()), "cert"),
            (target.chain.as_deref(), "chain"),
            (Some(target.key.as_path()), "key"),
            (target.client_ca.as_deref(), "client_ca"),
        ];
        let rename = |mut f: Finding| {
            for (path, part) in names {
                let Some(path) = path else { continue };
                let path = path.display().to_string();
                if f.file == path {
                    f.file = part.to_owned();
                }
                f.message = f.message.replace(&path, part);
            }
            f
        };
        let material = match Material::check(&target, &pem, now) {
            Ok(m) => m,
            Err(TlsError::Lint { findings: lint }) => {
                findings.extend(lint.into_iter().map(rename));
                findings.sort_by_key(|f| f.severity);
                return Err(CertError::Refused { findings, notes });
            }
            Err(e) => return Err(CertError::Invalid(Chain(&e).to_string())),
        };
        let served = material.served();
        findings.extend(served.warnings.iter().cloned().map(rename));
        if let Some(f) = incomplete_chain(&served.leaf, &served.chain, pem.client_ca.as_deref()) {
            findings.push(f);
        }
        findings.sort_by_key(|f| f.severity);
        let details =
            |ders: &[Vec<u8>]| ders.iter().filter_map(|d| CertDetail::of(d, now)).collect();
        let Some(certificate) = CertDetail::of(&served.leaf, now) else {
            return Err(CertError::Invalid("the certificate cannot be read".into()));
        };
        // The client CAs as described, whether or not this policy verifies with them.
        let client_ca_ders = pem
            .client_ca
            .as_deref()
            .and_then(|d| decode::decode(d).ok())
            .map(|d| d.certificates())
            .unwrap_or_default();
        let view = PendingSet {
            certificate,
            chain: details(&served.chain),
            client_ca: details(&client_ca_ders),
            client_auth,
            warnings: findings,
            notes,
            uploaded_at: rfc3339(unix(now)),
        };
        Ok(Staged {
            leaf: served.leaf.clone(),
            pem,
            client_auth,
            view,
        })
    }

    pub(crate) async fn stage(
        self: &Arc<Self>,
        id: &str,
        upload: CertUpload,
    ) -> Result<PendingSet, CertError> {
        self.set(id)?;
        let me = Arc::clone(self);
        let owned = id.to_owned();
        let staged =
            tokio::task::spawn_blocking(move || me.check(&owned, upload, SystemTime::now()))
                .await
                .map_err(|_| CertError::Stopped)??;
        let view = staged.view.clone();
        self.pending_map().insert(id.to_owned(), Arc::new(staged));
        info!(set = id, certificate = %view.certificate.subject, "certificate set staged");
        Ok(view)
    }

    pub(crate) async fn activate_pending(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Activation, CertError> {
        self.set(id)?;
        let _one = self.changing.lock().await;
        let staged = self
            .pending_map()
            .get(id)
            .cloned()
            .ok_or(CertError::NoPending)?;
        let activation = self.activate(id, Arc::clone(&staged)).await?;
        let mut pending = self.pending_map();
        if pending.get(id).is_some_and(|p| Arc::ptr_eq(p, &staged)) {
            pending.remove(id);
        }
        Ok(activation)
    }

    pub(crate) async fn restore_previous(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Activation, CertError> {
        self.set(id)?;
        let _one = self.changing.lock().await;
        let dir = self.previous_dir(id);
        let me = Arc::clone(self);
        let owned = id.to_owned();
        let staged = tokio::task::spawn_blocking(move || {
            let read = |name: &str| std::fs::read(dir.join(name)).ok();
            let (Some(cert), Some(key)) = (read("cert.pem"), read("key.pem")) else {
                return Err(CertError::NoPrevious);
            };
            let upload = CertUpload {
                cert,
                chain: read("chain.pem"),
                key: Zeroizing::new(key),
                key_passphrase: None,
                client_ca: read("client_ca.pem"),
                client_auth: read("client_auth")
                    .and_then(|t| parse_client_auth(&String::from_utf8_lossy(&t))),
            };
            me.check(&owned, upload, SystemTime::now())
        })
        .await
        .map_err(|_| CertError::Stopped)??;
        self.activate(id, Arc::new(staged)).await
    }

    /// Installs `staged` on every listener of the set, runs the test handshakes, and rolls
    /// everything back if one fails.
    async fn activate(
        self: &Arc<Self>,
        id: &str,
        staged: Arc<Staged>,
    ) -> Result<Activation, CertError> {
        let set = self.set(id)?;
        let members = set.members.clone();
        let me = Arc::clone(self);
        let owned = id.to_owned();
        let job = Arc::clone(&staged);
        let installed = tokio::task::spawn_blocking(move || me.install(&owned, &members, &job))
            .await
            .map_err(|_| CertError::Stopped)?;
        let (snapshots, warnings) = installed?;

        let mut results = Vec::new();
        let mut failed = None;
        for m in &set.members {
            let outcome = self.test_handshake(m, &staged.leaf).await;
            if let Err(reason) = &outcome {
                warn!(set = id, listener = %m.name, %reason, "test handshake failed; rolling back");
                failed.get_or_insert((m.name.clone(), reason.clone()));
            }
            results.push(TestHandshake {
                listener: m.name.clone(),
                ok: outcome.is_ok(),
            });
        }
        let me = Arc::clone(self);
        let owned = id.to_owned();
        let members = set.members.clone();
        let ok = failed.is_none();
        tokio::task::spawn_blocking(move || me.finish(&owned, &members, snapshots, ok))
            .await
            .map_err(|_| CertError::Stopped)??;
        if let Some((listener, reason)) = failed {
            return Err(CertError::TestHandshakeFailed { listener, reason });
        }
        info!(set = id, certificate = %staged.view.certificate.subject, "certificate set activated");
        Ok(Activation {
            activated: true,
            listeners: set.members.iter().map(|m| m.name.clone()).collect(),
            test_handshake: results,
            warnings,
            settings: set
                .members
                .iter()
                .map(|m| (m.name.clone(), m.live.settings()))
                .collect(),
        })
    }

    /// Saves the current material as `previous.new` and installs `staged` on every member
    /// (blocking). On error every member is put back.
    #[allow(clippy::type_complexity)]
    fn install(
        &self,
        id: &str,
        members: &[Member],
        staged: &Staged,
    ) -> Result<(Vec<TlsSnapshot>, Vec<Finding>), CertError> {
        let snapshots: Vec<TlsSnapshot> = members.iter().map(|m| m.live.snapshot()).collect();
        let set_dir = self.set_dir(id);
        let next = set_dir.join("previous.new");
        let _ = std::fs::remove_dir_all(&next);
        // Only material that is there becomes previous (after a deletion, the deleted one
        // stays previous).
        if let Ok(Some(pem)) = snapshots[0].pem() {
            write_material(&next, &pem, snapshots[0].settings().client_auth)?;
        }
        let now = SystemTime::now();
        let mut warnings = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let target =
                self.target_settings(id, snapshots[i].settings(), &staged.pem, staged.client_auth);
            for dir in [
                Some(&target.cert),
                target.chain.as_ref(),
                target.client_ca.as_ref(),
            ]
            .into_iter()
            .flatten()
            .filter_map(|p| p.parent())
            {
                create_private_dir(dir)?;
            }
            match m.live.install_with(target, &staged.pem, now) {
                Ok(moat_tls::ReloadOutcome::Replaced { warnings: w, .. }) if i == 0 => {
                    warnings = w;
                }
                Ok(_) => {}
                Err(source) => {
                    self.put_back(members, snapshots);
                    let _ = std::fs::remove_dir_all(&next);
                    return Err(CertError::Install {
                        listener: m.name.clone(),
                        source,
                    });
                }
            }
        }
        Ok((snapshots, warnings))
    }

    fn put_back(&self, members: &[Member], snapshots: Vec<TlsSnapshot>) {
        for (m, snap) in members.iter().zip(snapshots) {
            if let Err(e) = m.live.restore(snap) {
                warn!(listener = %m.name, error = %Chain(&e), "could not put the old TLS files back");
            }
        }
    }

    /// After the test handshakes (blocking): keep (previous.new becomes previous, the removed
    /// marker goes) or roll back.
    fn finish(
        &self,
        id: &str,
        members: &[Member],
        snapshots: Vec<TlsSnapshot>,
        ok: bool,
    ) -> Result<(), CertError> {
        let set_dir = self.set_dir(id);
        let next = set_dir.join("previous.new");
        if !ok {
            self.put_back(members, snapshots);
            let _ = std::fs::remove_dir_all(&next);
            return Ok(());
        }
        if next.exists() {
            let previous = self.previous_dir(id);
            let _ = std::fs::remove_dir_all(&previous);
            std::fs::rename(&next, &previous).map_err(io_error(&previous))?;
        }
        let marker = removed_marker(&self.state_dir, id);
        match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&marker)(e)),
            _ => Ok(()),
        }
    }

    /// Connects to the listener and completes a TLS 1.3 handshake that accepts only `leaf`
    /// and checks the handshake signature with it.
    async fn test_handshake(&self, member: &Member, leaf: &[u8]) -> Result<(), String> {
        let settings = member.live.settings();
        let config = moat_tls::pinned_client_config(leaf, settings.alpn.clone())
            .map_err(|e| Chain(&e).to_string())?;
        let addr = dial_address(member.addr);
        let name = CertInfo::from_der(leaf)
            .ok()
            .and_then(|i| {
                i.sans.iter().find_map(|s| match s {
                    San::Dns(d) => ServerName::try_from(d.clone()).ok(),
                    _ => None,
                })
            })
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let mut tls = TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            Ok(())
        };
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| format!("no TLS handshake with {addr} within the timeout"))?
    }

    pub(crate) async fn delete(self: &Arc<Self>, id: &str) -> Result<DeleteReport, CertError> {
        let set = self.set(id)?;
        let _one = self.changing.lock().await;
        let me = Arc::clone(self);
        let owned = id.to_owned();
        let members = set.members.clone();
        tokio::task::spawn_blocking(move || me.remove(&owned, &members))
            .await
            .map_err(|_| CertError::Stopped)?
    }

    /// Blocking part of [`delete`](Self::delete).
    fn remove(&self, id: &str, members: &[Member]) -> Result<DeleteReport, CertError> {
        let snapshot = members[0].live.snapshot();
        let marker = removed_marker(&self.state_dir, id);
        create_private_dir(&self.set_dir(id))?;
        // The marker first: a crash after it leaves a removed set, never a half one.
        std::fs::write(&marker, "removed by the admin API: stage and activate new material, or restore the previous one\n")
            .map_err(io_error(&marker))?;
        let mut listeners = Vec::new();
        for m in members {
            let clients = m.live.remove();
            listeners.push(ListenerClients {
                name: m.name.clone(),
                clients,
            });
        }
        if let Ok(Some(pem)) = snapshot.pem() {
            let next = self.set_dir(id).join("previous.new");
            let _ = std::fs::remove_dir_all(&next);
            write_material(&next, &pem, snapshot.settings().client_auth)?;
            let previous = self.previous_dir(id);
            let _ = std::fs::remove_dir_all(&previous);
            std::fs::rename(&next, &previous).map_err(io_error(&previous))?;
        }
        // The certificate and key leave the listeners' files (so neither the file watcher
        // nor a restart serves them); a shared chain or client CA stays where it is.
        for m in members {
            let s = m.live.settings();
            for p in [&s.cert, &s.key] {
                match std::fs::remove_file(p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_error(p)(e));
                    }
                    _ => {}
                }
            }
        }
        let total = listeners.iter().map(|l| l.clients).sum();
        warn!(
            set = id,
            total, "certificate set deleted: its listeners refuse handshakes"
        );
        Ok(DeleteReport { listeners, total })
    }
}

/// Creates `dir` (and its parents) with mode 0700 where the platform has modes.
fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Writes material as `cert.pem`, `chain.pem`, `key.pem` (0600), `client_ca.pem` and
/// `client_auth` into a new folder `dir`.
fn write_material(dir: &Path, pem: &Pem, client_auth: ClientAuth) -> Result<(), CertError> {
    create_private_dir(dir)?;
    let write = |name: &str, data: &[u8], secret: bool| {
        let path = dir.join(name);
        moat_pki::store::write_file(&path, data, secret, true).map_err(|e| CertError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        })
    };
    write("cert.pem", &pem.cert, false)?;
    write("key.pem", &pem.key, true)?;
    if let Some(c) = &pem.chain {
        write("chain.pem", c, false)?;
    }
    if let Some(c) = &pem.client_ca {
        write("client_ca.pem", c, false)?;
    }
    let auth = match client_auth {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    };
    write("client_auth", auth.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_levels() {
        let table = [
            (-1, ExpiryLevel::Expired),
            (0, ExpiryLevel::Expired),
            (3_600, ExpiryLevel::Days1),
            (3 * 86_400, ExpiryLevel::Days7),
            (20 * 86_400, ExpiryLevel::Days30),
            (31 * 86_400, ExpiryLevel::Ok),
        ];
        for (secs, level) in table {
            assert_eq!(ExpiryLevel::of(secs), level, "{secs}");
        }
    }

    #[test]
    fn wildcard_binds_are_dialled_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:8883".parse().unwrap();
        let v6: SocketAddr = "[::]:8883".parse().unwrap();
        let at: SocketAddr = "10.0.0.1:8883".parse().unwrap();
        assert_eq!(dial_address(v4), "127.0.0.1:8883".parse().unwrap());
        assert_eq!(dial_address(v6), "[::1]:8883".parse().unwrap());
        assert_eq!(dial_address(at), at);
    }

    #[test]
    fn upload_debug_hides_the_key_and_passphrase() {
        let upload = CertUpload {
            key: Zeroizing::new(b"-----BEGIN PRIVATE KEY-----SECRET".to_vec()),
            key_passphrase: Some(Zeroizing::new("hunter2".into())),
            ..CertUpload::default()
        };
        let text = format!("{upload:?}");
        assert!(
            !text.contains("SECRET") && !text.contains("hunter2"),
            "{text}"
        );
    }
}
