//! Which CRL revoked a client certificate, for the handshake's log line.
//!
//! rustls reports a revoked certificate as `CertificateError::Revoked` (which also picks the
//! right TLS alert for the client) and nothing more. The verifier knows the serial and the
//! CRL; it leaves them in a note of the task running the handshake, which
//! [`noting_revocation`] reads after the handshake future ends. The verifier runs inside that
//! future's `poll`, so the note is the task's own: no connection sees another's.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::material::Revoked;

/// A certificate a CRL revokes: what the handshake failure's log line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedBy {
    /// The revoked certificate's serial, hex with colons.
    pub serial: String,
    /// Its subject, RFC 4514 style.
    pub subject: String,
    /// The CRL's issuer, RFC 4514 style.
    pub issuer: String,
    /// The CRL file.
    pub crl: PathBuf,
}

impl std::fmt::Display for RevokedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "certificate {} (serial {}) is revoked by the CRL of {} in {}",
            self.subject,
            self.serial,
            self.issuer,
            self.crl.display()
        )
    }
}

type Note = Arc<Mutex<Option<RevokedBy>>>;

tokio::task_local! {
    static NOTE: Note;
}

/// Runs a TLS accept (or any future) and returns, with its output, the certificate a CRL
/// revoked during it, if one did.
pub async fn noting_revocation<F: Future>(fut: F) -> (F::Output, Option<RevokedBy>) {
    let note = Note::default();
    let out = NOTE.scope(Arc::clone(&note), fut).await;
    let found = note.lock().unwrap_or_else(|e| e.into_inner()).take();
    (out, found)
}

/// Finds which of `certs` (the leaf first, then the intermediates the client sent) a list in
/// `revoked` names, and leaves it in the running handshake's note.
pub(crate) fn note(revoked: &[Revoked], certs: &[&[u8]]) {
    let Some(found) = find(revoked, certs) else {
        return;
    };
    let _ = NOTE.try_with(|n| *n.lock().unwrap_or_else(|e| e.into_inner()) = Some(found));
}

pub(crate) fn find(revoked: &[Revoked], certs: &[&[u8]]) -> Option<RevokedBy> {
    for der in certs {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            continue;
        };
        let (issuer, serial) = (cert.issuer().as_raw(), cert.raw_serial());
        if let Some(r) = revoked
            .iter()
            .find(|r| r.issuer == issuer && r.serials.contains(serial))
        {
            return Some(RevokedBy {
                serial: moat_pki::crl::serial_hex(serial),
                subject: cert.subject().to_string(),
                issuer: r.issuer_name.clone(),
                crl: r.path.clone(),
            });
        }
    }
    None
}
