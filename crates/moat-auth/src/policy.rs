//! Per-listener authentication: which proofs a client must bring, and the decision for one
//! CONNECT.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use moat_codec::ReasonCode;

use crate::acl::Acl;
use crate::password::{CheckMemory, PasswordFile, Verdict};

/// The proofs a listener requires from a client that is not anonymous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proof {
    /// A user name and a password that verifies.
    Password,
    /// A verified client certificate.
    Certificate,
    /// One of the two (a password, if given, must verify).
    #[default]
    Either,
    /// Both.
    Both,
}

/// The authentication settings of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerPolicy {
    /// The proofs required.
    pub proof: Proof,
    /// May a client that brings no user name, no password and no certificate connect?
    /// By default only the loopback tcp listener allows it (the server's settings decide).
    pub allow_anonymous: bool,
    /// Does the certificate identity become the user name (`identity = "cn" | "san" | "dn"`)?
    pub identity_as_username: bool,
}

/// What the server knows after the TLS handshake and the CONNECT packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthRequest<'a> {
    /// The CONNECT user name.
    pub username: Option<&'a str>,
    /// The CONNECT password.
    pub password: Option<&'a [u8]>,
    /// The identity of the verified client certificate (the name the listener's `identity`
    /// setting picks, CN by default), or `None` without a verified certificate.
    pub cert_identity: Option<&'a str>,
    /// The peer's address.
    pub peer_ip: IpAddr,
}

impl fmt::Debug for AuthRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("cert_identity", &self.cert_identity)
            .field("peer_ip", &self.peer_ip)
            .finish()
    }
}

/// Who connected: the name the ACL and the logs use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The effective user name: the certificate identity on a listener that maps it, else the
    /// user name whose password verified; `None` for an anonymous client, or a certificate
    /// client on a listener that does not map identities.
    pub username: Option<String>,
    /// The identity of the client certificate, if any.
    pub cert_identity: Option<String>,
    /// The groups of `username` in the ACL.
    pub groups: Vec<String>,
}

impl Principal {
    /// Is this an anonymous client (no user name)?
    pub fn is_anonymous(&self) -> bool {
        self.username.is_none()
    }
}

/// Why a CONNECT was refused. Every variant maps to exactly one reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The user is not in the password file.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The password does not verify.
    #[error("wrong password for user {0:?}")]
    WrongPassword(String),
    /// A user name without a password, or a password without a user name.
    #[error("incomplete credentials (a user name needs a password and the reverse)")]
    IncompleteCredentials,
    /// No password file is configured, and a password was needed.
    #[error("password given but no password file is configured")]
    NoPasswordFile,
    /// No credentials at all on a listener without anonymous access.
    #[error("anonymous access is not allowed on this listener")]
    AnonymousNotAllowed,
    /// The listener needs a password and none was given.
    #[error("this listener requires a user name and password")]
    PasswordRequired,
    /// The listener needs a client certificate and none was verified.
    #[error("this listener requires a client certificate")]
    CertificateRequired,
    /// The user name differs from the certificate identity that the listener maps.
    #[error("user name {username:?} differs from certificate identity {identity:?}")]
    IdentityMismatch {
        /// The CONNECT user name.
        username: String,
        /// The certificate identity.
        identity: String,
    },
    /// The identity is bound to other addresses.
    #[error("identity {identity:?} may not connect from {ip}")]
    AddressNotAllowed {
        /// The bound identity.
        identity: String,
        /// The peer address.
        ip: IpAddr,
    },
    /// The password could not be checked in time: the server's password checks were all busy,
    /// or this address's earlier checks and the delay its failures earned took too long. The
    /// credentials were not looked at.
    #[error("no password check slot in time (too many password checks at once)")]
    ServerBusy,
}

impl AuthFailure {
    /// The MQTT 5 CONNACK reason code: 0x86 (bad user name or password) for credentials that
    /// do not verify, 0x89 (server busy) for [`AuthFailure::ServerBusy`], 0x87 (not
    /// authorized) for the rest.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::UnknownUser(_)
            | Self::WrongPassword(_)
            | Self::IncompleteCredentials
            | Self::NoPasswordFile => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            Self::ServerBusy => ReasonCode::SERVER_BUSY,
            _ => ReasonCode::NOT_AUTHORIZED,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code: 4, 5, or 3 (server unavailable) when busy.
    pub fn v3_return_code(&self) -> u8 {
        self.reason_code().to_v3_connack()
    }

    /// The reason, for a log line (never sent to the client).
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// A stable name for a failure counter (`moat_auth_failures_total{reason="..."}`).
    pub fn counter_name(&self) -> &'static str {
        FailureKind::of(self).name()
    }
}

/// The kind of an [`AuthFailure`], without its data: one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// [`AuthFailure::UnknownUser`]
    UnknownUser,
    /// [`AuthFailure::WrongPassword`]
    WrongPassword,
    /// [`AuthFailure::IncompleteCredentials`]
    IncompleteCredentials,
    /// [`AuthFailure::NoPasswordFile`]
    NoPasswordFile,
    /// [`AuthFailure::AnonymousNotAllowed`]
    AnonymousNotAllowed,
    /// [`AuthFailure::PasswordRequired`]
    PasswordRequired,
    /// [`AuthFailure::CertificateRequired`]
    CertificateRequired,
    /// [`AuthFailure::IdentityMismatch`]
    IdentityMismatch,
    /// [`AuthFailure::AddressNotAllowed`]
    AddressNotAllowed,
    /// [`AuthFailure::ServerBusy`]
    ServerBusy,
}

impl FailureKind {
    /// Every kind, in counter order.
    pub const ALL: [Self; 10] = [
        Self::UnknownUser,
        Self::WrongPassword,
        Self::IncompleteCredentials,
        Self::NoPasswordFile,
        Self::AnonymousNotAllowed,
        Self::PasswordRequired,
        Self::CertificateRequired,
        Self::IdentityMismatch,
        Self::AddressNotAllowed,
        Self::ServerBusy,
    ];

    /// The kind of a failure.
    pub fn of(f: &AuthFailure) -> Self {
        match f {
            AuthFailure::UnknownUser(_) => Self::UnknownUser,
            AuthFailure::WrongPassword(_) => Self::WrongPassword,
            AuthFailure::IncompleteCredentials => Self::IncompleteCredentials,
            AuthFailure::NoPasswordFile => Self::NoPasswordFile,
            AuthFailure::AnonymousNotAllowed => Self::AnonymousNotAllowed,
            AuthFailure::PasswordRequired => Self::PasswordRequired,
            AuthFailure::CertificateRequired => Self::CertificateRequired,
            AuthFailure::IdentityMismatch { .. } => Self::IdentityMismatch,
            AuthFailure::AddressNotAllowed { .. } => Self::AddressNotAllowed,
            AuthFailure::ServerBusy => Self::ServerBusy,
        }
    }

    /// The counter label.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::IncompleteCredentials => "incomplete_credentials",
            Self::NoPasswordFile => "no_password_file",
            Self::AnonymousNotAllowed => "anonymous_not_allowed",
            Self::PasswordRequired => "password_required",
            Self::CertificateRequired => "certificate_required",
            Self::IdentityMismatch => "identity_mismatch",
            Self::AddressNotAllowed => "address_not_allowed",
            Self::ServerBusy => "server_busy",
        }
    }
}

/// Failure counters, one per [`FailureKind`]; share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct FailureCounters {
    counts: [AtomicU64; FailureKind::ALL.len()],
}

impl FailureCounters {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one failure.
    pub fn record(&self, f: &AuthFailure) {
        self.counts[FailureKind::of(f) as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of one kind.
    pub fn get(&self, kind: FailureKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Every kind with its count.
    pub fn snapshot(&self) -> Vec<(FailureKind, u64)> {
        FailureKind::ALL.iter().map(|&k| (k, self.get(k))).collect()
    }
}

impl ListenerPolicy {
    /// Decides one CONNECT.
    ///
    /// `passwords` is `None` when no password file is configured; `acl` gives the bindings and
    /// the groups (`None`: no bindings, no groups). A password, when one is given, is always
    /// verified, so this is slow (call it in a blocking pool); an unknown user costs the same
    /// as a wrong password.
    ///
    /// # Errors
    /// The [`AuthFailure`] to count, log with the peer address, and answer with
    /// [`AuthFailure::reason_code`].
    pub fn authenticate(
        &self,
        req: &AuthRequest<'_>,
        passwords: Option<&PasswordFile>,
        acl: Option<&Acl>,
    ) -> Result<Principal, AuthFailure> {
        self.authenticate_in(req, passwords, acl, &mut CheckMemory::new())
    }

    /// [`ListenerPolicy::authenticate`] with a password check's working memory taken from
    /// (and left in) `memory` (see [`CheckMemory`]).
    ///
    /// # Errors
    /// As [`ListenerPolicy::authenticate`].
    pub fn authenticate_in(
        &self,
        req: &AuthRequest<'_>,
        passwords: Option<&PasswordFile>,
        acl: Option<&Acl>,
        memory: &mut CheckMemory,
    ) -> Result<Principal, AuthFailure> {
        let cert = req.cert_identity;
        if req.username.is_none() && req.password.is_none() && cert.is_none() {
            return if self.allow_anonymous {
                Ok(Principal {
                    username: None,
                    cert_identity: None,
                    groups: Vec::new(),
                })
            } else {
                Err(AuthFailure::AnonymousNotAllowed)
            };
        }

        // A password that is given is checked, whatever the listener requires.
        let password_user = match (req.username, req.password) {
            (Some(user), Some(pw)) => {
                let Some(file) = passwords else {
                    return Err(AuthFailure::NoPasswordFile);
                };
                match file.verify_in(user, pw, memory) {
                    Verdict::Ok => Some(user),
                    Verdict::WrongPassword => {
                        return Err(AuthFailure::WrongPassword(user.to_owned()))
                    }
                    Verdict::UnknownUser => return Err(AuthFailure::UnknownUser(user.to_owned())),
                }
            }
            (None, None) => None,
            // A certificate client on a mapping listener may send its name without a password.
            (Some(_), None) if cert.is_some() && self.identity_as_username => None,
            _ => return Err(AuthFailure::IncompleteCredentials),
        };

        let need_password = matches!(self.proof, Proof::Password | Proof::Both);
        let need_cert = matches!(self.proof, Proof::Certificate | Proof::Both);
        if need_cert && cert.is_none() {
            return Err(AuthFailure::CertificateRequired);
        }
        if need_password && password_user.is_none() {
            return Err(AuthFailure::PasswordRequired);
        }
        if self.proof == Proof::Either && password_user.is_none() && cert.is_none() {
            return Err(AuthFailure::PasswordRequired);
        }

        // The effective user name: a mapped certificate identity, else the verified user.
        let mapped = cert.filter(|_| self.identity_as_username);
        let username = match (mapped, password_user, req.username) {
            (Some(id), Some(user), _) if id != user => {
                return Err(AuthFailure::IdentityMismatch {
                    username: user.to_owned(),
                    identity: id.to_owned(),
                })
            }
            (Some(id), _, Some(user)) if id != user => {
                return Err(AuthFailure::IdentityMismatch {
                    username: user.to_owned(),
                    identity: id.to_owned(),
                })
            }
            (Some(id), _, _) => Some(id),
            (None, user, _) => user,
        };

        if let Some(acl) = acl {
            let b = acl.bindings();
            for id in [cert, username].into_iter().flatten() {
                if !b.check(id, req.peer_ip) {
                    return Err(AuthFailure::AddressNotAllowed {
                        identity: id.to_owned(),
                        ip: req.peer_ip,
                    });
                }
            }
        }

        let groups = match (acl, username) {
            (Some(acl), Some(u)) => acl.groups_of(u).iter().map(|g| g.to_string()).collect(),
            _ => Vec::new(),
        };
        Ok(Principal {
            username: username.map(str::to_owned),
            cert_identity: cert.map(str::to_owned),
            groups,
        })
    }
}

#[cfg(test)]
mod tests;
