//! Authentication and authorization state shared by every connection: the password file and
//! the ACL, reloaded on change without dropping anyone, plus failure counters, the
//! per-address slow-down and the bounds on password checks.
//!
//! A password check (argon2id: slow and 19 MiB of memory, on purpose) runs on the blocking
//! pool, and:
//! - at most `max_concurrent_auth` run at once over the whole server, each in one of at most
//!   that many argon2 working memories kept for reuse ([`CheckMemory`]: allocating 19 MiB per
//!   check leaves the allocator holding hundreds of MiB), so the memory and the blocking
//!   threads checks take are bounded whatever the number of connections;
//! - the checks of one address (IPv6: one /64) run one at a time, and each first waits out the
//!   delay the address's failures earned ([`FailureTracker::wait_before`]): parallel
//!   connections from one address guess no faster than one client trying again and again;
//! - a CONNECT that cannot start its check within the CONNECT timeout (waiting for its
//!   address's turn, the earned delay and a free slot) is refused with "server busy" (v5 0x89,
//!   v3 3) and counted as `server_busy`, without looking at its credentials.
//!
//! Clients without a password (anonymous, certificate only) take none of these waits.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use moat_auth::{
    address_key, Acl, AuthFailure, AuthRequest, CheckMemory, FailureCounters, FailureKind,
    FailureTracker, ListenerPolicy, LoadError, PasswordFile, Principal, Subject,
};
use moat_core::{Authorizer, ClientInfo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
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
    checks: CheckGate,
}

/// The bounds on password checks (see the module docs).
#[derive(Debug)]
struct CheckGate {
    /// One permit per check allowed to run at once.
    slots: Arc<Semaphore>,
    /// The addresses with a CONNECT waiting for or running a check: at most one entry per
    /// connection in authentication (so at most `max_connections`), removed when its last
    /// connection leaves.
    queues: Mutex<HashMap<IpAddr, AddressQueue>>,
    /// argon2's working memory, lent to each running check: never more than `slots` allows.
    memory: Mutex<Vec<CheckMemory>>,
    /// How long a CONNECT may wait for its check to start.
    max_wait: Duration,
    running: AtomicUsize,
    peak: AtomicUsize,
    done: AtomicU64,
}

#[derive(Debug)]
struct AddressQueue {
    /// One permit: the address's checks run one at a time, in arrival order.
    turn: Arc<Semaphore>,
    members: usize,
}

/// A connection's place in its address's queue; the last one to leave removes the queue.
struct Member {
    state: Arc<AuthState>,
    key: IpAddr,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut queues = self.state.checks.queues();
        if let Some(q) = queues.get_mut(&self.key) {
            q.members = q.members.saturating_sub(1);
            if q.members == 0 {
                queues.remove(&self.key);
            }
        }
    }
}

/// What a running check holds until it has been counted: its slot, its address's turn and
/// its place in the queue.
struct Held {
    _slot: OwnedSemaphorePermit,
    _turn: OwnedSemaphorePermit,
    _member: Member,
}

impl CheckGate {
    fn new(max_concurrent: usize, max_wait: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            queues: Mutex::new(HashMap::new()),
            memory: Mutex::new(Vec::new()),
            max_wait,
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, AddressQueue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A working memory for a check that holds a slot (a new, empty one if none is free).
    fn take_memory(&self) -> CheckMemory {
        let mut pool = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn give_back(&self, memory: CheckMemory) {
        let mut pool = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(memory);
    }
}

fn fingerprint(path: &Path) -> Option<u64> {
    let data = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    Some(h.finish())
}

impl AuthState {
    /// Loads both files; an invalid file refuses to start (`path:line: reason`). At most
    /// `max_concurrent_checks` password checks run at once; a CONNECT waits at most
    /// `max_wait` for its check to start.
    pub(crate) fn load(
        config: AuthConfig,
        max_concurrent_checks: usize,
        max_wait: Duration,
    ) -> Result<Self, LoadError> {
        let state = Self {
            config,
            passwords: RwLock::new(Watched::default()),
            acl: RwLock::new(Watched::default()),
            counters: FailureCounters::default(),
            tracker: Mutex::new(FailureTracker::default()),
            checks: CheckGate::new(max_concurrent_checks, max_wait),
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

    /// Re-reads both files now, changed or not; the first invalid one is returned (the old
    /// contents stay in use).
    pub(crate) fn reload_now(&self) -> Result<(), LoadError> {
        self.reload_passwords(true)?;
        self.reload_acl(true)
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

    /// Decides a CONNECT. A password is checked on the blocking pool within the bounds of
    /// the module docs; a failure is counted, logged with the peer, and makes the next check
    /// from that address wait (after the free ones).
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
        let decided = match passwords {
            // A user name and a password with a file to check them in: the slow path.
            Some(passwords) if username.is_some() && password.is_some() => {
                let held = match self.wait_for_check(peer).await {
                    Ok(held) => held,
                    Err(busy) => {
                        self.counters.record(&busy);
                        warn!(%peer, reason = busy.counter_name(), "authentication refused: password checks busy");
                        return Err(busy);
                    }
                };
                let state = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    let req = AuthRequest {
                        username: username.as_deref(),
                        password: password.as_deref(),
                        cert_identity: cert_identity.as_deref(),
                        peer_ip: peer,
                    };
                    let gate = &state.checks;
                    let running = gate.running.fetch_add(1, Ordering::Relaxed) + 1;
                    gate.peak.fetch_max(running, Ordering::Relaxed);
                    let mut memory = gate.take_memory();
                    let decided =
                        policy.authenticate_in(&req, Some(&passwords), acl.as_deref(), &mut memory);
                    gate.give_back(memory);
                    gate.running.fetch_sub(1, Ordering::Relaxed);
                    gate.done.fetch_add(1, Ordering::Relaxed);
                    // Counted before the address's turn is given up (`held` drops after this),
                    // even when the connection is gone: the next check sees this one.
                    state.record(&decided, peer);
                    drop(held);
                    decided
                })
                .await
                .unwrap_or_else(|_| {
                    // The runtime is shutting down (or the check panicked): not counted yet.
                    self.counters.record(&AuthFailure::ServerBusy);
                    Err(AuthFailure::ServerBusy)
                })
            }
            passwords => {
                let req = AuthRequest {
                    username: username.as_deref(),
                    password: password.as_deref(),
                    cert_identity: cert_identity.as_deref(),
                    peer_ip: peer,
                };
                // No password to verify: the rest is cheap (no argon2), fine on the reactor.
                let decided = policy.authenticate(&req, passwords.as_deref(), acl.as_deref());
                self.record(&decided, peer);
                decided
            }
        };
        if let Err(failure) = &decided {
            warn!(%peer, reason = failure.counter_name(), detail = %failure.reason(), "authentication failed");
        }
        decided
    }

    /// Waits for `peer`'s turn among its address's checks, then for the delay its failures
    /// earned, then for a free slot: all within the gate's `max_wait`, else
    /// [`AuthFailure::ServerBusy`].
    async fn wait_for_check(self: &Arc<Self>, peer: IpAddr) -> Result<Held, AuthFailure> {
        let gate = &self.checks;
        let deadline = Instant::now() + gate.max_wait;
        let key = address_key(peer);
        let turn = {
            let mut queues = gate.queues();
            let q = queues.entry(key).or_insert_with(|| AddressQueue {
                turn: Arc::new(Semaphore::new(1)),
                members: 0,
            });
            q.members += 1;
            Arc::clone(&q.turn)
        };
        let member = Member {
            state: Arc::clone(self),
            key,
        };
        let Ok(Ok(turn)) = tokio::time::timeout_at(deadline, turn.acquire_owned()).await else {
            return Err(AuthFailure::ServerBusy);
        };
        let earned = self
            .tracker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wait_before(peer, std::time::Instant::now());
        if earned > Duration::ZERO {
            // Refused at once when the delay ends past the deadline: the next in line then
            // decides for itself.
            if Instant::now() + earned > deadline {
                return Err(AuthFailure::ServerBusy);
            }
            tokio::time::sleep(earned).await;
        }
        let Ok(Ok(slot)) =
            tokio::time::timeout_at(deadline, Arc::clone(&gate.slots).acquire_owned()).await
        else {
            return Err(AuthFailure::ServerBusy);
        };
        Ok(Held {
            _slot: slot,
            _turn: turn,
            _member: member,
        })
    }

    /// Password checks finished so far (right or wrong).
    pub(crate) fn password_checks(&self) -> u64 {
        self.checks.done.load(Ordering::Relaxed)
    }

    /// Password checks running now.
    pub(crate) fn password_checks_running(&self) -> usize {
        self.checks.running.load(Ordering::Relaxed)
    }

    /// Counts a decision: a failure by kind and for its address's slow-down, a success
    /// forgets the address's failures.
    fn record(&self, decided: &Result<Principal, AuthFailure>, peer: IpAddr) {
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        match decided {
            Ok(_) => tracker.record_success(peer),
            Err(failure) => {
                self.counters.record(failure);
                tracker.record_failure(peer, std::time::Instant::now());
            }
        }
    }
}

/// Counters of authentication, readable while the server runs
/// ([`Server::auth_stats`](crate::Server::auth_stats)).
#[derive(Debug, Clone)]
pub struct AuthStats(pub(crate) Arc<AuthState>);

impl AuthStats {
    /// CONNECTs refused for this reason so far.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        self.0.counters.get(kind)
    }

    /// Password checks finished so far (right or wrong).
    pub fn password_checks(&self) -> u64 {
        self.0.password_checks()
    }

    /// The most password checks that ran at the same time so far.
    pub fn peak_concurrent_checks(&self) -> usize {
        self.0.checks.peak.load(Ordering::Relaxed)
    }

    /// Addresses with a CONNECT waiting for or running a password check now.
    pub fn queued_addresses(&self) -> usize {
        self.0.checks.queues().len()
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
