//! The live TLS state of one listener: replaced or removed while running.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use moat_pki::lint::Finding;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{error, info, warn};
use zeroize::Zeroizing;

use crate::anchor::ClientCa;
use crate::failure::FailureCounters;
use crate::identity::PeerIdentity;
use crate::material::{CertificateExpiry, Files, Material, MissingSet, Pem, Served, TlsError};
use crate::ocsp::OcspCertStatus;
use crate::{CrlStalePolicy, IdentitySource, TlsSettings};

struct State {
    /// Replaced with the material when an install changes them (client_auth, a new path).
    settings: TlsSettings,
    material: Option<Arc<Material>>,
    acceptor: Option<TlsAcceptor>,
    /// Cancelled when the certificate is removed; every connection's token is a child.
    generation: CancellationToken,
}

struct Registered {
    serial: Option<(Vec<u8>, Vec<u8>)>,
    /// The fingerprint of the client CA its certificate chains to.
    ca: Option<String>,
    /// The SNI set its handshake chose (index in the settings); `None`: the default.
    set: Option<usize>,
    token: CancellationToken,
    /// Why `token` was cancelled ([`CloseCause`] as a number, set before the cancel; 0: the
    /// listener's certificate was removed).
    cause: Arc<AtomicU8>,
}

impl Registered {
    fn close(&self, cause: CloseCause) {
        self.cause.store(cause as u8, Ordering::SeqCst);
        self.token.cancel();
    }
}

/// How many connected clients chain to one of a listener's client CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCaUse {
    /// The CA.
    pub ca: ClientCa,
    /// Connected clients whose certificate chains to it.
    pub clients: usize,
}

/// Why a registered connection must close ([`ConnectionGuard::closing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCause {
    /// The listener's certificate (or the SNI set the connection's handshake chose) was
    /// removed.
    CertificateRemoved = 0,
    /// A CRL now revokes the client's certificate.
    Revoked = 1,
    /// The client CA its certificate chains to is no longer trusted by the listener.
    CaRemoved = 2,
    /// An operator disconnected the clients of a client CA.
    Disconnected = 3,
}

impl CloseCause {
    fn of(n: u8) -> Self {
        match n {
            1 => Self::Revoked,
            2 => Self::CaRemoved,
            3 => Self::Disconnected,
            _ => Self::CertificateRemoved,
        }
    }
}

/// One CRL of a listener and whether it is past its next update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlStatus {
    /// The file.
    pub path: PathBuf,
    /// Its issuer, RFC 4514 style.
    pub issuer: String,
    /// Its next update (Unix seconds), if it names one.
    pub next_update: Option<i64>,
    /// Whether `now` is past the next update.
    pub stale: bool,
}

/// One OCSP response of a listener and whether it is stapled now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspStatus {
    /// The response file.
    pub path: PathBuf,
    /// The subject of the certificate it is for.
    pub subject: String,
    /// Which certificate: "default" or "SNI set N (names)".
    pub set: String,
    /// What it says (`None` when it was refused).
    pub status: Option<OcspCertStatus>,
    /// Its nextUpdate (Unix seconds), if it names one.
    pub next_update: Option<i64>,
    /// Whether handshakes get it now (checked and not past its nextUpdate).
    pub stapled: bool,
}

/// What [`LiveTls::reload`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The files did not change.
    Unchanged,
    /// New material is in use for new handshakes; `revoked` connections were closed because a
    /// new CRL revokes their certificates, `untrusted` because the client CA they chain to is
    /// no longer trusted.
    Replaced {
        /// Lint warnings of the new material.
        warnings: Vec<Finding>,
        /// Connections closed by the new CRLs.
        revoked: usize,
        /// Connections closed because their client CA was removed.
        untrusted: usize,
        /// The SNI sets whose files are gone (their names now get the default certificate).
        sets_removed: Vec<String>,
        /// Connections closed because the SNI set their handshake chose was removed.
        closed: usize,
    },
    /// The certificate or key file is gone: TLS clients were closed, handshakes are refused.
    Removed {
        /// Connections closed.
        closed: usize,
    },
    /// The new files are invalid: the old material stays in use.
    Failed(TlsError),
}

/// An acceptor on a listener's certificates for another service on another port (the admin
/// API's HTTPS), from [`LiveTls::borrow_certificates`]. It keeps the material it was built
/// from, to tell when the listener has changed its certificates.
#[derive(Clone)]
pub struct Borrowed {
    material: Arc<Material>,
    acceptor: TlsAcceptor,
}

impl Borrowed {
    /// The acceptor for a handshake.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The certificate it serves (DER).
    pub fn leaf(&self) -> &[u8] {
        &self.material.served.leaf
    }
}

impl std::fmt::Debug for Borrowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Borrowed")
            .field("certificate", &self.material.summary)
            .finish_non_exhaustive()
    }
}

/// The TLS material of one listener, shared by its accept loop and its connections.
pub struct LiveTls {
    name: String,
    state: RwLock<State>,
    registry: Mutex<HashMap<u64, Registered>>,
    /// Held while the files are read for a reload or written by an install, so a reload never
    /// sees half an install.
    files: Mutex<()>,
    next_id: AtomicU64,
    /// (CRL file, issuer) -> stale when last checked: a warning is logged on each change.
    crl_stale: Mutex<HashMap<(PathBuf, String), bool>>,
    /// OCSP response file -> stapled when last checked: a warning is logged when one stops.
    ocsp_stapled: Mutex<HashMap<PathBuf, bool>>,
    /// Handshake failures by reason.
    pub failures: FailureCounters,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("name", &self.name)
            .field("settings", &self.read_state().settings)
            .finish()
    }
}

impl LiveTls {
    /// Loads the listener's material at start-up.
    ///
    /// # Errors
    /// [`TlsError`]: the broker must not start with this listener.
    pub fn load(name: &str, settings: TlsSettings, now: SystemTime) -> Result<Arc<Self>, TlsError> {
        let material = Material::load(&settings, now)?;
        for w in &material.warnings {
            warn!(listener = name, "{w}");
        }
        info!(listener = name, certificate = %material.summary, "TLS material loaded");
        log_ocsp(name, &material);
        Ok(Self::with(name, settings, Some(material)))
    }

    /// A listener whose certificate was removed (by the admin API, before a restart): it
    /// refuses handshakes until material is installed, and reads no file now.
    pub fn removed(name: &str, settings: TlsSettings) -> Arc<Self> {
        Self::with(name, settings, None)
    }

    fn with(name: &str, settings: TlsSettings, material: Option<Material>) -> Arc<Self> {
        let acceptor = material
            .as_ref()
            .map(|m| TlsAcceptor::from(Arc::clone(&m.config)));
        Arc::new(Self {
            name: name.to_owned(),
            state: RwLock::new(State {
                settings,
                material: material.map(Arc::new),
                acceptor,
                generation: CancellationToken::new(),
            }),
            registry: Mutex::new(HashMap::new()),
            files: Mutex::new(()),
            next_id: AtomicU64::new(1),
            crl_stale: Mutex::new(HashMap::new()),
            ocsp_stapled: Mutex::new(HashMap::new()),
            failures: FailureCounters::default(),
        })
    }

    /// The listener's settings now (an install may have changed them).
    pub fn settings(&self) -> TlsSettings {
        self.read_state().settings.clone()
    }

    /// Which certificate name becomes the username (read once per handshake: no copy of the
    /// settings).
    pub fn identity_source(&self) -> IdentitySource {
        self.read_state().settings.identity
    }

    /// What the listener serves now; `None` while its certificate is removed.
    pub fn served(&self) -> Option<Served> {
        self.read_state()
            .material
            .as_ref()
            .map(|m| m.served.clone())
    }

    /// The acceptor for a new handshake; `None` while the certificate is removed.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.read_state().acceptor.clone()
    }

    /// For another service on another port that serves this listener's certificates (the
    /// admin API's HTTPS): an acceptor with the certificates (and SNI sets) served now, asking
    /// for no client certificate and offering `alpn`. While the listener still serves the
    /// material `previous` was built from, `previous` comes back as it is, so a caller can ask
    /// on every connection and follows every reload, upload and rotation. `None` while the
    /// certificate is removed.
    ///
    /// # Errors
    /// [`TlsError::Config`] if rustls refuses the configuration.
    pub fn borrow_certificates(
        &self,
        previous: Option<&Borrowed>,
        alpn: &[Vec<u8>],
    ) -> Result<Option<Borrowed>, TlsError> {
        let Some(material) = self.read_state().material.clone() else {
            return Ok(None);
        };
        if let Some(p) = previous.filter(|p| Arc::ptr_eq(&p.material, &material)) {
            return Ok(Some(p.clone()));
        }
        let acceptor = TlsAcceptor::from(Arc::new(material.one_way_config(alpn)?));
        Ok(Some(Borrowed { material, acceptor }))
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Registered>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the files again and swaps in what changed. A missing certificate or key file
    /// removes the certificate; an invalid file keeps the old material.
    pub fn reload(&self, now: SystemTime) -> ReloadOutcome {
        let settings = self.settings();
        let guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let read = Files::read(&settings, MissingSet::Remove);
        drop(guard);
        let files = match read {
            Ok(f) => f,
            Err(TlsError::Read { path, source })
                if source.kind() == ErrorKind::NotFound
                    && (path == settings.cert || path == settings.key) =>
            {
                if self.read_state().material.is_none() {
                    return ReloadOutcome::Unchanged;
                }
                let closed = self.remove();
                return ReloadOutcome::Removed { closed };
            }
            Err(e) => return ReloadOutcome::Failed(e),
        };
        let digest = files.digest();
        if self
            .read_state()
            .material
            .as_ref()
            .is_some_and(|m| m.digest == digest)
        {
            return ReloadOutcome::Unchanged;
        }
        let material = match Material::build(&settings, &files, now) {
            Ok(m) => m,
            Err(e) => return ReloadOutcome::Failed(e),
        };
        self.swap_in(material, None)
    }

    /// Installs new material given as bytes: checked with the same lint and build as files
    /// (nothing changes if it fails: the error names each finding), then written atomically
    /// to the files the listener's settings name (the key 0600), then served to new
    /// handshakes. Connected clients stay, except those a CRL now revokes. Parts not given (a
    /// chain, a client CA, CRLs) are kept from the listener's files.
    ///
    /// # Errors
    /// [`TlsError::Lint`] with the findings, [`TlsError::NoPath`] for a part the settings
    /// have no file for, [`TlsError::Write`] if the files cannot be written.
    pub fn install(&self, pem: &Pem, now: SystemTime) -> Result<ReloadOutcome, TlsError> {
        self.install_with(self.settings(), pem, now)
    }

    /// [`install`](Self::install) with new settings (another client_auth, a client CA file
    /// where there was none): the rustls configuration is built from them, and they stay the
    /// listener's settings (for its reloads and [`settings`](Self::settings)).
    ///
    /// # Errors
    /// As [`install`](Self::install); nothing changes on error.
    pub fn install_with(
        &self,
        settings: TlsSettings,
        pem: &Pem,
        now: SystemTime,
    ) -> Result<ReloadOutcome, TlsError> {
        let files = Files::with_pem(&settings, pem)?;
        let material = Material::build(&settings, &files, now)?;
        {
            let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
            Files::write(&settings, pem)?;
        }
        info!(listener = %self.name, certificate = %material.summary, "TLS material installed");
        Ok(self.swap_in(material, Some(settings)))
    }

    /// What the listener serves and the bytes of its files now, to put back exactly with
    /// [`restore`](Self::restore) (a failed activation rolls back with it).
    pub fn snapshot(&self) -> TlsSnapshot {
        let (settings, material) = {
            let state = self.read_state();
            (state.settings.clone(), state.material.clone())
        };
        let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let read = |p: &std::path::Path| std::fs::read(p).ok().map(Zeroizing::new);
        let mut files = vec![
            (settings.cert.clone(), read(&settings.cert), false),
            (settings.key.clone(), read(&settings.key), true),
        ];
        for p in [&settings.chain, &settings.client_ca].into_iter().flatten() {
            files.push((p.clone(), read(p), false));
        }
        let passphrase = settings
            .key_passphrase_file
            .as_deref()
            .and_then(|p| moat_pki::store::read_passphrase_file(p).ok());
        TlsSnapshot {
            settings,
            material,
            files,
            passphrase,
        }
    }

    /// Puts back what [`snapshot`](Self::snapshot) saw: the files' bytes (a file that did not
    /// exist is removed), the settings and the material, without checking them again. If
    /// the certificate was removed then, it is removed again (connections made since are
    /// closed).
    ///
    /// # Errors
    /// [`TlsError::Write`] if a file cannot be written back (the others are still tried).
    pub fn restore(&self, snapshot: TlsSnapshot) -> Result<(), TlsError> {
        let mut result = Ok(());
        {
            let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
            for (path, data, secret) in &snapshot.files {
                let done = match data {
                    Some(d) => moat_pki::store::replace_file(path, d, *secret),
                    None => match std::fs::remove_file(path) {
                        Err(e) if e.kind() != ErrorKind::NotFound => {
                            Err(moat_pki::error::Error::Io {
                                path: path.clone(),
                                source: e,
                            })
                        }
                        _ => Ok(()),
                    },
                };
                if let Err(source) = done {
                    result = Err(TlsError::Write { source });
                }
            }
        }
        let removed = snapshot.material.is_none();
        {
            let mut state = self.write_state();
            state.settings = snapshot.settings;
            state.acceptor = snapshot
                .material
                .as_ref()
                .map(|m| TlsAcceptor::from(Arc::clone(&m.config)));
            state.material = snapshot.material;
        }
        if removed {
            self.remove();
        }
        info!(listener = %self.name, "TLS material put back as it was");
        result
    }

    /// Serves `material` to new handshakes (with `settings`, when they change); connected
    /// clients whose certificate a CRL in it revokes are disconnected.
    fn swap_in(&self, material: Material, settings: Option<TlsSettings>) -> ReloadOutcome {
        let warnings = material.warnings.clone();
        let revoked_lists = Arc::clone(&material.revoked);
        let client_cas = Arc::clone(&material.client_cas);
        log_ocsp(&self.name, &material);
        let gone = {
            let mut state = self.write_state();
            if let Some(s) = settings {
                state.settings = s;
            }
            let gone = removed_sets(state.material.as_deref(), &material);
            state.acceptor = Some(TlsAcceptor::from(Arc::clone(&material.config)));
            state.material = Some(Arc::new(material));
            gone
        };
        let registry = self.registry();
        // The clients of an SNI set whose files are gone are disconnected; the others stay.
        let mut closed = 0;
        for (index, label) in &gone {
            let mine: Vec<_> = registry
                .values()
                .filter(|r| r.set == Some(*index))
                .collect();
            warn!(
                listener = %self.name,
                set = %label,
                clients = mine.len(),
                "the certificate or key file of an SNI set is gone: its clients are \
                 disconnected and its names get the default certificate until the files are back"
            );
            for reg in mine {
                reg.token.cancel();
                closed += 1;
            }
        }
        // A CRL that now revokes a connected client's certificate disconnects it.
        let mut revoked = 0;
        for reg in registry.values() {
            let Some((serial, issuer)) = &reg.serial else {
                continue;
            };
            if let Some(r) = revoked_lists
                .iter()
                .find(|r| r.issuer == *issuer && r.serials.contains(serial))
            {
                warn!(
                    listener = %self.name,
                    serial = %moat_pki::crl::serial_hex(serial),
                    issuer = %r.issuer_name,
                    crl = %r.path.display(),
                    "a connected client's certificate is now revoked: disconnecting it"
                );
                reg.close(CloseCause::Revoked);
                revoked += 1;
            }
        }
        // A client CA no longer trusted disconnects the clients that chain to it (a listener
        // that stopped verifying client certificates trusts no CA and closes no one).
        let mut untrusted = 0;
        if !client_cas.is_empty() {
            for reg in registry.values() {
                let Some(ca) = &reg.ca else { continue };
                if reg.token.is_cancelled() || client_cas.iter().any(|c| c.fingerprint == *ca) {
                    continue;
                }
                reg.close(CloseCause::CaRemoved);
                untrusted += 1;
            }
            if untrusted > 0 {
                warn!(
                    listener = %self.name,
                    clients = untrusted,
                    "a client CA is no longer trusted: the clients chaining to it were disconnected"
                );
            }
        }
        ReloadOutcome::Replaced {
            warnings,
            revoked,
            untrusted,
            sets_removed: gone.into_iter().map(|(_, label)| label).collect(),
            closed,
        }
    }

    /// The identity of a verified client certificate chain (leaf first, then the
    /// intermediates the client sent), with the trusted client CA it chains to.
    pub fn identify(&self, presented: &[&[u8]]) -> Option<PeerIdentity> {
        let mut identity = PeerIdentity::from_der(presented.first()?)?;
        if let Some(material) = self.read_state().material.as_ref() {
            if let Some(i) = crate::anchor::anchor_of(&material.client_cas, presented) {
                let ca = &material.client_cas[i];
                identity.ca_subject = Some(ca.subject.clone());
                identity.ca_fingerprint = Some(ca.fingerprint.clone());
            }
        }
        Some(identity)
    }

    /// The client CAs the listener trusts now, each with the number of connected clients whose
    /// certificate chains to it: a CA being rotated out can be removed once it has none.
    pub fn client_cas(&self) -> Vec<ClientCaUse> {
        let cas = self
            .read_state()
            .material
            .as_ref()
            .map(|m| Arc::clone(&m.client_cas))
            .unwrap_or_default();
        let mut uses: Vec<ClientCaUse> = cas
            .iter()
            .map(|ca| ClientCaUse {
                ca: ca.clone(),
                clients: 0,
            })
            .collect();
        for reg in self.registry().values() {
            if let Some(u) = uses
                .iter_mut()
                .find(|u| reg.ca.as_deref() == Some(u.ca.fingerprint.as_str()))
            {
                u.clients += 1;
            }
        }
        uses
    }

    /// Disconnects the connected clients whose certificate chains to the client CA with this
    /// fingerprint (v5: DISCONNECT 0x98, administrative action). Returns how many.
    pub fn disconnect_ca(&self, fingerprint: &str) -> usize {
        let mut closed = 0;
        for reg in self.registry().values() {
            if reg.ca.as_deref() == Some(fingerprint) && !reg.token.is_cancelled() {
                reg.close(CloseCause::Disconnected);
                closed += 1;
            }
        }
        if closed > 0 {
            info!(listener = %self.name, ca = fingerprint, clients = closed, "clients of a client CA disconnected");
        }
        closed
    }

    /// Removes the certificate: new handshakes are refused and every TLS connection of this
    /// listener is closed. Returns how many were open.
    pub fn remove(&self) -> usize {
        let old = {
            let mut state = self.write_state();
            state.material = None;
            state.acceptor = None;
            std::mem::replace(&mut state.generation, CancellationToken::new())
        };
        // Counted before the cancellation: the connections unregister as they close.
        let open = self.registry().len();
        old.cancel();
        open
    }

    /// Registers a connection that completed its handshake, with the name it asked for
    /// (`server_name()` of the accepted connection: it tells which SNI set served it). The
    /// guard's token is cancelled when the certificate (or that SNI set) is removed or a CRL
    /// revokes the peer's certificate; dropping the guard unregisters.
    pub fn register(
        self: &Arc<Self>,
        peer: Option<&PeerIdentity>,
        server_name: Option<&str>,
    ) -> ConnectionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (token, set) = {
            let state = self.read_state();
            let set = state
                .material
                .as_ref()
                .and_then(|m| m.resolver.chosen(server_name));
            (state.generation.child_token(), set)
        };
        let cause = Arc::new(AtomicU8::new(CloseCause::CertificateRemoved as u8));
        self.registry().insert(
            id,
            Registered {
                serial: peer.map(|p| (p.serial.clone(), p.issuer.clone())),
                ca: peer.and_then(|p| p.ca_fingerprint.clone()),
                set,
                token: token.clone(),
                cause: Arc::clone(&cause),
            },
        );
        ConnectionGuard {
            live: Arc::clone(self),
            id,
            token,
            cause,
        }
    }

    /// The listener's CRLs and whether each is past its next update at `now`.
    pub fn crl_status(&self, now: SystemTime) -> Vec<CrlStatus> {
        let now = unix(now);
        self.read_state()
            .material
            .as_ref()
            .map(|m| {
                m.served
                    .crls
                    .iter()
                    .map(|c| CrlStatus {
                        path: c.path.clone(),
                        issuer: c.issuer.clone(),
                        next_update: c.next_update,
                        stale: c.next_update.is_some_and(|t| t < now),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks the CRLs' next updates (at start, after each reload and on the reload timer: a
    /// CRL goes stale while nothing changes) and logs each change: a warning when one goes
    /// stale, a note when it is fresh again. Returns the status now.
    pub fn check_crls(&self, now: SystemTime) -> Vec<CrlStatus> {
        let status = self.crl_status(now);
        let policy = self.read_state().settings.crl_stale;
        let mut seen = self.crl_stale.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|(p, i), _| status.iter().any(|s| s.path == *p && s.issuer == *i));
        for s in &status {
            let before = seen.insert((s.path.clone(), s.issuer.clone()), s.stale);
            let next = s
                .next_update
                .map_or_else(|| "none".into(), moat_pki::inspect::rfc3339);
            match (before, s.stale) {
                (Some(true), false) => info!(
                    listener = %self.name,
                    crl = %s.path.display(),
                    issuer = %s.issuer,
                    next_update = %next,
                    "CRL is fresh again"
                ),
                (Some(false) | None, true) => {
                    let effect = match policy {
                        CrlStalePolicy::Warn => {
                            "it is still applied (crl_stale = \"warn\"); sign a fresh one"
                        }
                        CrlStalePolicy::FailClosed => {
                            "every handshake is refused until a fresh one is loaded \
                             (crl_stale = \"fail_closed\")"
                        }
                    };
                    warn!(
                        listener = %self.name,
                        crl = %s.path.display(),
                        issuer = %s.issuer,
                        next_update = %next,
                        "CRL is past its next update (stale): {effect}; `moat cert crl --ca DIR` \
                         or `openssl ca -gencrl` makes a new one"
                    );
                }
                _ => {}
            }
        }
        status
    }

    /// The listener's OCSP responses and whether each is stapled at `now`.
    pub fn ocsp_status(&self, now: SystemTime) -> Vec<OcspStatus> {
        let now = unix(now);
        let state = self.read_state();
        let Some(m) = state.material.as_ref() else {
            return Vec::new();
        };
        m.ocsp
            .iter()
            .map(|o| {
                let (status, next_update) = match &o.result {
                    Ok((status, next)) => (Some(*status), *next),
                    Err(_) => (None, None),
                };
                OcspStatus {
                    path: o.path.clone(),
                    subject: o.subject.clone(),
                    set: o.set.clone(),
                    status,
                    next_update,
                    stapled: status.is_some() && next_update.is_none_or(|n| n >= now),
                }
            })
            .collect()
    }

    /// Checks the stapled OCSP responses' nextUpdate (on the reload timer: a response goes
    /// stale while nothing changes; handshakes stop getting it at its nextUpdate) and logs a
    /// warning when one stops being stapled. Returns the status now.
    pub fn check_ocsp(&self, now: SystemTime) -> Vec<OcspStatus> {
        let status = self.ocsp_status(now);
        let mut seen = self.ocsp_stapled.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|p, _| status.iter().any(|s| s.path == *p));
        for s in &status {
            let before = seen.insert(s.path.clone(), s.stapled);
            if before == Some(true) && !s.stapled {
                warn!(
                    listener = %self.name,
                    ocsp = %s.path.display(),
                    set = %s.set,
                    subject = %s.subject,
                    next_update = %s.next_update.map_or_else(|| "none".into(), moat_pki::inspect::rfc3339),
                    "the stapled OCSP response is past its nextUpdate: it is no longer stapled;                      write a fresh response to the file"
                );
            }
        }
        status
    }

    /// Why a new handshake must be refused because a CRL is stale: `Some` only when the
    /// listener's `crl_stale` is `fail_closed` and a CRL is past its next update at `now`.
    pub fn crl_refusal(&self, now: SystemTime) -> Option<String> {
        if self.read_state().settings.crl_stale != CrlStalePolicy::FailClosed {
            return None;
        }
        let stale = self.crl_status(now).into_iter().find(|s| s.stale)?;
        Some(format!(
            "the CRL of {} in {} is past its next update ({}) and crl_stale = \"fail_closed\"",
            stale.issuer,
            stale.path.display(),
            stale
                .next_update
                .map_or_else(|| "none".into(), moat_pki::inspect::rfc3339)
        ))
    }

    /// The certificates in use (served and trusted for clients) with their expiry; none while
    /// the certificate is removed.
    pub fn certificates(&self) -> Vec<CertificateExpiry> {
        self.read_state()
            .material
            .as_ref()
            .map(|m| m.certificates.clone())
            .unwrap_or_default()
    }

    /// Number of registered TLS connections.
    pub fn connections(&self) -> usize {
        self.registry().len()
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// (path, bytes or `None` when absent, secret).
type SavedFile = (PathBuf, Option<Zeroizing<Vec<u8>>>, bool);

/// A listener's settings, material and file bytes at one moment ([`LiveTls::snapshot`]).
/// Its `Debug` shows the paths only.
pub struct TlsSnapshot {
    settings: TlsSettings,
    material: Option<Arc<Material>>,
    files: Vec<SavedFile>,
    passphrase: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for TlsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSnapshot")
            .field("settings", &self.settings)
            .field("served", &self.material.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsSnapshot {
    /// The settings then.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether a certificate was served then (not removed).
    pub fn served(&self) -> bool {
        self.material.is_some()
    }

    fn file(&self, path: Option<&std::path::Path>) -> Option<&[u8]> {
        let path = path?;
        self.files
            .iter()
            .find(|(p, _, _)| p == path)
            .and_then(|(_, d, _)| d.as_deref().map(Vec::as_slice))
    }

    /// The files' contents as material to install again: the key decrypted (PKCS#8 PEM)
    /// when the settings name a passphrase file. `None` when the certificate or key file was
    /// missing.
    ///
    /// # Errors
    /// [`TlsError::File`] if the key cannot be decrypted.
    pub fn pem(&self) -> Result<Option<Pem>, TlsError> {
        let s = &self.settings;
        let (Some(cert), Some(key)) = (self.file(Some(&s.cert)), self.file(Some(&s.key))) else {
            return Ok(None);
        };
        let key = match &self.passphrase {
            Some(p) => {
                let k = moat_pki::key::load(key, Some(p)).map_err(|e| TlsError::File {
                    path: s.key.clone(),
                    source: e.into(),
                })?;
                Zeroizing::new(k.to_pkcs8_pem().as_bytes().to_vec())
            }
            None => Zeroizing::new(key.to_vec()),
        };
        Ok(Some(Pem {
            cert: cert.to_vec(),
            chain: self.file(s.chain.as_deref()).map(<[u8]>::to_vec),
            key,
            client_ca: self.file(s.client_ca.as_deref()).map(<[u8]>::to_vec),
        }))
    }
}

/// Logs why each OCSP response of `material` that is configured is not stapled.
fn log_ocsp(listener: &str, material: &Material) {
    for o in &material.ocsp {
        match &o.result {
            Ok((status, next)) => info!(
                listener,
                ocsp = %o.path.display(),
                set = %o.set,
                status = status.label(),
                next_update = %next.map_or_else(|| "none".into(), moat_pki::inspect::rfc3339),
                "OCSP response stapled"
            ),
            Err(why) if why.is_severe() => error!(
                listener,
                ocsp = %o.path.display(),
                set = %o.set,
                subject = %o.subject,
                "OCSP response not stapled: {why}"
            ),
            Err(why) => warn!(
                listener,
                ocsp = %o.path.display(),
                set = %o.set,
                subject = %o.subject,
                "OCSP response not stapled (the certificate is served without it): {why}"
            ),
        }
    }
}

/// The SNI sets `old` served that `new` does not (their files are gone): index and label.
fn removed_sets(old: Option<&Material>, new: &Material) -> Vec<(usize, String)> {
    let Some(old) = old else {
        return Vec::new();
    };
    old.served
        .sni
        .iter()
        .filter(|o| !new.served.sni.iter().any(|n| n.index == o.index))
        .map(|o| {
            (
                o.index,
                format!("SNI set {} ({})", o.index, o.names.join(", ")),
            )
        })
        .collect()
}

pub(crate) fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A TLS connection's registration; unregisters on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    live: Arc<LiveTls>,
    id: u64,
    token: CancellationToken,
    cause: Arc<AtomicU8>,
}

impl ConnectionGuard {
    /// Completes when the connection must close (certificate removed or revoked).
    pub fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Completes when the connection must close, with why.
    pub fn closing(&self) -> impl std::future::Future<Output = CloseCause> + Send + 'static {
        let token = self.token.clone();
        let cause = Arc::clone(&self.cause);
        async move {
            token.cancelled().await;
            CloseCause::of(cause.load(Ordering::SeqCst))
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.live.registry().remove(&self.id);
    }
}
