//! Authentication and authorization state shared by every connection: the password file and
//! the ACL, reloaded on change without dropping anyone, plus failure counters and the
//! per-address slow-down.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use moat_auth::{
    Acl, AuthFailure, AuthRequest, FailureCounters, FailureTracker, ListenerPolicy, LoadError,
    PasswordFile, Principal, Subject,
};
use moat_core::{Authorizer, ClientInfo};
use tracing::{error, info, warn};

/// Where the password file and the ACL are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// The password file (`moat user add` writes it). A missing file means "no users yet":
    /// it is picked up when it appears.
    pub password_file: Option<PathBuf>,
    /// The ACL file. Without one, every authenticated client may publish and subscribe to
    /// anything.
    pub acl_file: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Watched<T> {
    value: Option<Arc<T>>,
    fingerprint: Option<u64>,
}

/// The live auth state.
#[derive(Debug)]
pub(crate) struct AuthState {
    config: AuthConfig,
    passwords: RwLock<Watched<PasswordFile>>,
    acl: RwLock<Watched<Acl>>,
    pub(crate) counters: FailureCounters,
    tracker: Mutex<FailureTracker>,
}

fn fingerprint(path: &Path) -> Option<u64> {
    let data = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    Some(h.finish())
}

impl AuthState {
    /// Loads both files; an invalid file refuses to start (`path:line: reason`).
    pub(crate) fn load(config: AuthConfig) -> Result<Self, LoadError> {
        let state = Self {
            config,
            passwords: RwLock::new(Watched::default()),
            acl: RwLock::new(Watched::default()),
            counters: FailureCounters::default(),
            tracker: Mutex::new(FailureTracker::default()),
        };
        state.reload_passwords(true)?;
        state.reload_acl(true)?;
        Ok(state)
    }

    /// Re-reads files that changed; an invalid new file is logged and the old one stays.
    pub(crate) fn reload(&self) {
        if let Err(e) = self.reload_passwords(false) {
            error!(error = %e, "new password file refused; the old one stays in use");
        }
        if let Err(e) = self.reload_acl(false) {
            error!(error = %e, "new ACL file refused; the old one stays in use");
        }
    }

    fn reload_passwords(&self, first: bool) -> Result<(), LoadError> {
        let Some(path) = &self.config.password_file else {
            return Ok(());
        };
        let fp = fingerprint(path);
        let mut w = self.passwords.write().unwrap_or_else(|e| e.into_inner());
        if !first && fp == w.fingerprint {
            return Ok(());
        }
        match PasswordFile::load(path) {
            Ok(file) => {
                info!(path = %path.display(), users = file.len(), "password file loaded");
                w.value = Some(Arc::new(file));
            }
            Err(e) if e.is_not_found() => {
                if first || w.value.is_some() {
                    warn!(path = %path.display(), "no password file: password logins are refused until `moat user add` makes it");
                }
                w.value = None;
            }
            Err(e) => {
                w.fingerprint = fp;
                return Err(e);
            }
        }
        w.fingerprint = fp;
        Ok(())
    }

    fn reload_acl(&self, first: bool) -> Result<(), LoadError> {
        let Some(path) = &self.config.acl_file else {
            return Ok(());
        };
        let fp = fingerprint(path);
        let mut w = self.acl.write().unwrap_or_else(|e| e.into_inner());
        if !first && fp == w.fingerprint {
            return Ok(());
        }
        match Acl::load(path) {
            Ok(acl) => {
                info!(path = %path.display(), rules = acl.rule_count(), "ACL loaded");
                w.value = Some(Arc::new(acl));
            }
            Err(e) => {
                w.fingerprint = fp;
                return Err(e);
            }
        }
        w.fingerprint = fp;
        Ok(())
    }

    pub(crate) fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.passwords
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .value
            .clone()
    }

    pub(crate) fn acl(&self) -> Option<Arc<Acl>> {
        self.acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .value
            .clone()
    }

    /// Decides a CONNECT. Runs the password check on the blocking pool (argon2id is slow on
    /// purpose); a failure is counted, logged with the peer, and answered after the slow-down
    /// for repeated failures from that address.
    pub(crate) async fn authenticate(
        self: &Arc<Self>,
        policy: ListenerPolicy,
        username: Option<String>,
        password: Option<bytes::Bytes>,
        cert_identity: Option<String>,
        peer: IpAddr,
    ) -> Result<Principal, AuthFailure> {
        let passwords = self.passwords();
        // On a listener open to anonymous clients with no password file, credentials cannot
        // be checked: the client is admitted as anonymous (its claimed name is not trusted).
        if policy.allow_anonymous
            && cert_identity.is_none()
            && (passwords.is_none() || password.is_none())
        {
            return Ok(Principal {
                username: None,
                cert_identity: None,
                groups: Vec::new(),
            });
        }
        let acl = self.acl();
        let decided = tokio::task::spawn_blocking(move || {
            let req = AuthRequest {
                username: username.as_deref(),
                password: password.as_deref(),
                cert_identity: cert_identity.as_deref(),
                peer_ip: peer,
            };
            policy.authenticate(&req, passwords.as_deref(), acl.as_deref())
        })
        .await;
        let decided = decided.unwrap_or(Err(AuthFailure::NoPasswordFile));
        match &decided {
            Ok(_) => self
                .tracker
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_success(peer),
            Err(failure) => {
                self.counters.record(failure);
                let delay = self
                    .tracker
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record_failure(peer, Instant::now());
                warn!(%peer, reason = failure.counter_name(), detail = %failure.reason(), "authentication failed");
                if delay > Duration::ZERO {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        decided
    }
}

/// The broker core's authorizer: the ACL in force, per client.
#[derive(Debug)]
pub(crate) struct AclAuthorizer(pub(crate) Arc<AuthState>);

impl Authorizer for AclAuthorizer {
    fn can_publish(&self, client_id: &str, info: &ClientInfo, topic: &str) -> bool {
        match self.0.acl() {
            None => true,
            Some(acl) => {
                acl.check_publish(&Subject::new(info.username.as_deref(), client_id), topic)
            }
        }
    }

    fn can_subscribe(&self, client_id: &str, info: &ClientInfo, filter: &str) -> bool {
        match self.0.acl() {
            None => true,
            Some(acl) => {
                acl.check_subscribe(&Subject::new(info.username.as_deref(), client_id), filter)
            }
        }
    }

    fn can_receive(&self, client_id: &str, info: &ClientInfo, topic: &str) -> bool {
        match self.0.acl() {
            None => true,
            Some(acl) => {
                acl.check_receive(&Subject::new(info.username.as_deref(), client_id), topic)
            }
        }
    }
}
