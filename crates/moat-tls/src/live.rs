//! The live TLS state of one listener: replaced or removed while running.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use moat_pki::lint::Finding;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{info, warn};

use crate::failure::FailureCounters;
use crate::identity::PeerIdentity;
use crate::material::{CertificateExpiry, Files, Material, Pem, TlsError};
use crate::TlsSettings;

struct State {
    material: Option<Arc<Material>>,
    acceptor: Option<TlsAcceptor>,
    /// Cancelled when the certificate is removed; every connection's token is a child.
    generation: CancellationToken,
}

struct Registered {
    serial: Option<(Vec<u8>, Vec<u8>)>,
    token: CancellationToken,
}

/// What [`LiveTls::reload`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The files did not change.
    Unchanged,
    /// New material is in use for new handshakes; `revoked` connections were closed because a
    /// new CRL revokes their certificates.
    Replaced {
        /// Lint warnings of the new material.
        warnings: Vec<Finding>,
        /// Connections closed by the new CRLs.
        revoked: usize,
    },
    /// The certificate or key file is gone: TLS clients were closed, handshakes are refused.
    Removed {
        /// Connections closed.
        closed: usize,
    },
    /// The new files are invalid: the old material stays in use.
    Failed(TlsError),
}

/// The TLS material of one listener, shared by its accept loop and its connections.
pub struct LiveTls {
    name: String,
    settings: TlsSettings,
    state: RwLock<State>,
    registry: Mutex<HashMap<u64, Registered>>,
    /// Held while the files are read for a reload or written by an install, so a reload never
    /// sees half an install.
    files: Mutex<()>,
    next_id: AtomicU64,
    /// Handshake failures by reason.
    pub failures: FailureCounters,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("name", &self.name)
            .field("settings", &self.settings)
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
        let acceptor = TlsAcceptor::from(Arc::clone(&material.config));
        Ok(Arc::new(Self {
            name: name.to_owned(),
            settings,
            state: RwLock::new(State {
                material: Some(Arc::new(material)),
                acceptor: Some(acceptor),
                generation: CancellationToken::new(),
            }),
            registry: Mutex::new(HashMap::new()),
            files: Mutex::new(()),
            next_id: AtomicU64::new(1),
            failures: FailureCounters::default(),
        }))
    }

    /// The listener's settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The acceptor for a new handshake; `None` while the certificate is removed.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.read_state().acceptor.clone()
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
        let guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let read = Files::read(&self.settings);
        drop(guard);
        let files = match read {
            Ok(f) => f,
            Err(TlsError::Read { path, source })
                if source.kind() == ErrorKind::NotFound
                    && (path == self.settings.cert || path == self.settings.key) =>
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
        let material = match Material::build(&self.settings, &files, now) {
            Ok(m) => m,
            Err(e) => return ReloadOutcome::Failed(e),
        };
        self.swap_in(material)
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
        let files = Files::with_pem(&self.settings, pem)?;
        let material = Material::build(&self.settings, &files, now)?;
        {
            let _guard = self.files.lock().unwrap_or_else(|e| e.into_inner());
            Files::write(&self.settings, pem)?;
        }
        info!(listener = %self.name, certificate = %material.summary, "TLS material installed");
        Ok(self.swap_in(material))
    }

    /// Serves `material` to new handshakes; connected clients whose certificate a CRL in it
    /// revokes are disconnected.
    fn swap_in(&self, material: Material) -> ReloadOutcome {
        let warnings = material.warnings.clone();
        let revoked_lists = Arc::clone(&material.revoked);
        {
            let mut state = self.write_state();
            state.acceptor = Some(TlsAcceptor::from(Arc::clone(&material.config)));
            state.material = Some(Arc::new(material));
        }
        // A CRL that now revokes a connected client's certificate disconnects it.
        let mut revoked = 0;
        for reg in self.registry().values() {
            let Some((serial, issuer)) = &reg.serial else {
                continue;
            };
            if revoked_lists
                .iter()
                .any(|r| r.issuer == *issuer && r.serials.contains(serial))
            {
                reg.token.cancel();
                revoked += 1;
            }
        }
        ReloadOutcome::Replaced { warnings, revoked }
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
        old.cancel();
        self.registry().len()
    }

    /// Registers a connection that completed its handshake. The guard's token is cancelled when
    /// the certificate is removed or a CRL revokes the peer's certificate; dropping the guard
    /// unregisters.
    pub fn register(self: &Arc<Self>, peer: Option<&PeerIdentity>) -> ConnectionGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = self.read_state().generation.child_token();
        self.registry().insert(
            id,
            Registered {
                serial: peer.map(|p| (p.serial.clone(), p.issuer.clone())),
                token: token.clone(),
            },
        );
        ConnectionGuard {
            live: Arc::clone(self),
            id,
            token,
        }
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

/// A TLS connection's registration; unregisters on drop.
#[derive(Debug)]
pub struct ConnectionGuard {
    live: Arc<LiveTls>,
    id: u64,
    token: CancellationToken,
}

impl ConnectionGuard {
    /// Completes when the connection must close (certificate removed or revoked).
    pub fn cancelled(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.live.registry().remove(&self.id);
    }
}
