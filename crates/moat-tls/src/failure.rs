//! Why a TLS handshake failed: one reason per failure, a counter per reason.
//!
//! Where a reason is a fact about the client's certificate (expired, unknown CA, v1, none
//! sent...), its hint is moat-pki's diagnosis of that fact ([`moat_pki::diagnose::rejection`]):
//! the same code, cause and fix that `moat check` prints on the client's side.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use moat_pki::diagnose::{self, Rejection};
use moat_pki::{LintCode, Purpose};
use rustls::{AlertDescription, CertificateError};

use crate::verifier::V1ClientCertificate;

/// The reason a handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The client certificate was not issued by the client CA.
    UnknownCa,
    /// The client certificate has expired.
    Expired,
    /// The client certificate is not valid yet.
    NotYetValid,
    /// The client certificate is revoked by a CRL.
    Revoked,
    /// The certificate's name or usage is not allowed (e.g. no clientAuth).
    NotAllowed,
    /// Client authentication is required and no certificate was presented.
    NoClientCertificate,
    /// An X.509 v1 client certificate on a listener that does not accept them.
    V1Certificate,
    /// The client offers no TLS version or cipher this server speaks.
    ProtocolVersion,
    /// The client refused the server's certificate (it sent an alert).
    ClientRejectedServerCertificate,
    /// The handshake did not finish in time.
    Timeout,
    /// The listener has no certificate (it was removed).
    NoServerCertificate,
    /// A CRL of the listener is past its next update and the listener's `crl_stale` is
    /// `fail_closed`: every handshake is refused until a fresh CRL is loaded.
    CrlStale,
    /// Anything else: not TLS at all, connection reset, bad signature...
    Other,
}

impl HandshakeFailure {
    /// Every reason, in counter order.
    pub const ALL: [Self; 13] = [
        Self::UnknownCa,
        Self::Expired,
        Self::NotYetValid,
        Self::Revoked,
        Self::NotAllowed,
        Self::NoClientCertificate,
        Self::V1Certificate,
        Self::ProtocolVersion,
        Self::ClientRejectedServerCertificate,
        Self::Timeout,
        Self::NoServerCertificate,
        Self::CrlStale,
        Self::Other,
    ];

    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::NotAllowed => "not_allowed",
            Self::NoClientCertificate => "no_client_certificate",
            Self::V1Certificate => "v1_certificate",
            Self::ProtocolVersion => "protocol_version",
            Self::ClientRejectedServerCertificate => "client_rejected_server_certificate",
            Self::Timeout => "handshake_timeout",
            Self::NoServerCertificate => "no_server_certificate",
            Self::CrlStale => "crl_stale",
            Self::Other => "other",
        }
    }

    /// Classifies the error tokio-rustls returned from a failed accept.
    pub fn classify(err: &std::io::Error) -> Self {
        let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return Self::Other;
        };
        match tls {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => Self::UnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::NotYetValid
                }
                CertificateError::Revoked => Self::Revoked,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. }
                | CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. }
                | CertificateError::ApplicationVerificationFailure => Self::NotAllowed,
                CertificateError::Other(o)
                    if o.0.downcast_ref::<V1ClientCertificate>().is_some() =>
                {
                    Self::V1Certificate
                }
                _ => Self::Other,
            },
            rustls::Error::NoCertificatesPresented => Self::NoClientCertificate,
            rustls::Error::PeerIncompatible(_) => Self::ProtocolVersion,
            rustls::Error::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRevoked
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::DecryptError,
            ) => Self::ClientRejectedServerCertificate,
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => {
                Self::ProtocolVersion
            }
            _ => Self::Other,
        }
    }

    /// The fact about the client certificate this reason is, when it is one.
    pub fn rejection(self) -> Option<Rejection> {
        match self {
            Self::UnknownCa => Some(Rejection::UnknownIssuer),
            Self::Expired => Some(Rejection::Expired),
            Self::NotYetValid => Some(Rejection::NotYetValid),
            Self::Revoked => Some(Rejection::Revoked),
            Self::NoClientCertificate => Some(Rejection::NoCertificate),
            Self::V1Certificate => Some(Rejection::V1),
            _ => None,
        }
    }

    /// The code `moat check` and `moat cert lint` use for the same fact, when there is one.
    pub fn code(self) -> Option<LintCode> {
        self.rejection()
            .map(|r| diagnose::rejection(Purpose::Client, r).code)
    }

    /// The cause and fix to give in the log line: `[code] cause; fix: ...` for a fact about
    /// the client certificate (moat-pki's words), else a few words.
    pub fn hint(self) -> String {
        if let Some(r) = self.rejection() {
            return diagnose::rejection(Purpose::Client, r).to_string();
        }
        match self {
            Self::NotAllowed => "the certificate may not be used here (missing clientAuth?)",
            Self::ProtocolVersion => "the client offers no TLS 1.2/1.3 cipher this server speaks",
            Self::ClientRejectedServerCertificate => {
                "the client refused our certificate: give it the right CA file (--cafile) and \
                 dial a name in the certificate's SAN; `moat check` on the client's side says why"
            }
            Self::Timeout => "the client did not finish the handshake in time",
            Self::NoServerCertificate => "the listener's certificate was removed",
            Self::CrlStale => {
                "a CRL of this listener is past its next update and crl_stale = \"fail_closed\": \
                 sign a fresh one (`moat cert crl --ca DIR`, or `openssl ca -gencrl`); the \
                 broker loads it within seconds"
            }
            _ => "not a TLS client, or the connection broke",
        }
        .to_owned()
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How many failed handshakes [`FailureCounters::recent`] remembers per listener.
pub const RECENT_FAILURES: usize = 20;

/// One failed handshake, as remembered for the admin API and the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRecord {
    /// When it failed.
    pub at: SystemTime,
    /// The client's address.
    pub peer: SocketAddr,
    /// Why.
    pub reason: HandshakeFailure,
    /// What rustls (or the timeout) said: never key material, only the error's text.
    pub detail: String,
}

/// Handshake failure counters of one listener, and its last [`RECENT_FAILURES`] failures.
#[derive(Debug, Default)]
pub struct FailureCounters {
    counts: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Oldest first; a std mutex, held for a push or a copy only.
    recent: Mutex<VecDeque<FailureRecord>>,
}

impl FailureCounters {
    /// Counts one failure and remembers it (the oldest remembered one goes when
    /// [`RECENT_FAILURES`] are kept).
    pub fn record(&self, failure: FailureRecord) {
        if let Some(i) = HandshakeFailure::ALL
            .iter()
            .position(|r| *r == failure.reason)
        {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_FAILURES {
            recent.pop_front();
        }
        recent.push_back(failure);
    }

    /// The count for one reason.
    pub fn get(&self, reason: HandshakeFailure) -> u64 {
        HandshakeFailure::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Every (reason, count) pair.
    pub fn snapshot(&self) -> Vec<(HandshakeFailure, u64)> {
        HandshakeFailure::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .collect()
    }

    /// The last failures, oldest first.
    pub fn recent(&self) -> Vec<FailureRecord> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_about_the_client_certificate_carry_moat_pki_codes() {
        let table = [
            (
                HandshakeFailure::UnknownCa,
                Some(LintCode::ChainNotAnchored),
            ),
            (HandshakeFailure::Expired, Some(LintCode::CertExpired)),
            (
                HandshakeFailure::NotYetValid,
                Some(LintCode::CertNotYetValid),
            ),
            (HandshakeFailure::Revoked, Some(LintCode::CertRevoked)),
            (
                HandshakeFailure::NoClientCertificate,
                Some(LintCode::CertMissing),
            ),
            (HandshakeFailure::V1Certificate, Some(LintCode::CertV1)),
            (HandshakeFailure::Timeout, None),
            (HandshakeFailure::Other, None),
        ];
        for (reason, code) in table {
            assert_eq!(reason.code(), code, "{reason}");
            match code {
                Some(c) => assert!(reason.hint().starts_with(&format!("[{c}] ")), "{reason}"),
                None => assert!(!reason.hint().starts_with('['), "{reason}"),
            }
        }
        assert_eq!(
            HandshakeFailure::NoClientCertificate.hint(),
            diagnose::rejection(Purpose::Client, Rejection::NoCertificate).to_string()
        );
    }

    #[test]
    fn recent_failures_keep_the_last_twenty() {
        let counters = FailureCounters::default();
        let peer = SocketAddr::from(([127, 0, 0, 1], 5555));
        for i in 0..25 {
            counters.record(FailureRecord {
                at: SystemTime::UNIX_EPOCH,
                peer,
                reason: HandshakeFailure::UnknownCa,
                detail: format!("failure {i}"),
            });
        }
        assert_eq!(counters.get(HandshakeFailure::UnknownCa), 25);
        let recent = counters.recent();
        assert_eq!(recent.len(), RECENT_FAILURES);
        assert_eq!(recent[0].detail, "failure 5");
        assert_eq!(recent[19].detail, "failure 24");
    }
}
