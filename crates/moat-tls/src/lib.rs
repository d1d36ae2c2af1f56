//! TLS for Moat's listeners: rustls server configurations built from certificate files that
//! moat-pki has checked, and replaced or removed while the broker runs.
//!
//! - [`TlsSettings`] names the files of one listener (certificate, chain, key, client CA, CRLs)
//!   and its client-certificate policy.
//! - [`LiveTls`] holds the current material of one listener: [`LiveTls::acceptor`] for new
//!   handshakes, [`LiveTls::reload`] (file change, SIGHUP, admin API) validates new files and
//!   swaps them in (a bad file keeps the old material), [`LiveTls::remove`] takes the
//!   certificate away and closes the TLS clients that used it. Each connection registers
//!   itself ([`LiveTls::register`]) so that a removal or a CRL that now revokes its certificate
//!   can close it.
//! - A listener serves one default certificate and up to [`MAX_SNI_SETS`] more ([`SniSet`]),
//!   each chosen by the name the client asks for (SNI); each may staple an OCSP response read
//!   from a file, checked first (a wrong or stale one is not stapled, and the certificate is
//!   served all the same).
//! - [`PeerIdentity`] is what a verified client certificate says (CN, SANs, DN, fingerprint).
//! - [`HandshakeFailure`] names why a handshake failed, for one log line and a counter.
//!
//! The rustls `ServerConfig` is built once per material change, never per connection, so TLS
//! session resumption (tickets and the session cache) works. Crypto is *ring*, the one backend
//! of the project. This crate does no network I/O of its own.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod anchor;
mod failure;
mod identity;
mod live;
mod material;
mod ocsp;
mod pinned;
mod revocation;
mod sni;
mod verifier;

use std::path::PathBuf;

pub use anchor::ClientCa;
pub use failure::{FailureCounters, FailureRecord, HandshakeFailure, RECENT_FAILURES};
pub use identity::PeerIdentity;
pub use live::{
    Borrowed, ClientCaUse, CloseCause, ConnectionGuard, CrlStatus, LiveTls, OcspStatus,
    ReloadOutcome, TlsSnapshot,
};
pub use material::{
    CertificateExpiry, CertificateRole, CrlInfo, FileError, Material, Pem, Served, ServedSni,
    TlsError,
};
pub use ocsp::{OcspCertStatus, OcspRefusal};
pub use pinned::pinned_client_config;
pub use revocation::{noting_revocation, RevokedBy};
pub use sni::normalize_name;
pub use verifier::V1ClientCertificate;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// One-way TLS: no client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for and verified if given.
    Optional,
    /// Two-way (mutual) TLS: no certificate, no connection.
    Required,
}

/// Which name of a verified client certificate becomes the connection's username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// The certificate gives no username.
    None,
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS, email or URI subject alternative name.
    San,
    /// The whole subject distinguished name, RFC 4514 style.
    Dn,
}

/// What a listener does while one of its CRLs is past its next update (stale).
///
/// The rule: a stale CRL is still the best list of revoked certificates there is, so by
/// default it keeps being applied and the broker warns loudly (a log line on each change, the
/// `moat_tls_crl_stale` metric, `$SYS`); a listener that would rather refuse every client
/// than trust an old list sets `fail_closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrlStalePolicy {
    /// Keep applying the stale CRL and warn.
    #[default]
    Warn,
    /// Refuse every handshake (reason `crl_stale`) until a fresh CRL is loaded.
    FailClosed,
}

/// The files and policy of one TLS listener.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server certificate (the leaf), PEM.
    pub cert: PathBuf,
    /// Intermediates sent after the leaf, PEM.
    pub chain: Option<PathBuf>,
    /// The private key (PKCS#1, PKCS#8 or SEC1; encrypted with a passphrase file).
    pub key: PathBuf,
    /// A file holding the key's passphrase (first line).
    pub key_passphrase_file: Option<PathBuf>,
    /// An OCSP response for the certificate (DER or PEM), stapled when it checks out.
    pub ocsp: Option<PathBuf>,
    /// More certificates, each served to clients that ask for one of its names (SNI); the
    /// certificate above is the default (no SNI, or a name no set has).
    pub sni: Vec<SniSet>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// The CA bundle client certificates are verified against (uploads of a client CA
    /// replace this file).
    pub client_ca: Option<PathBuf>,
    /// More CA bundles trusted alongside `client_ca` (`client_ca = ["new.pem", "old.pem"]`:
    /// the first is `client_ca`, the rest are here). Rotating a client CA: add the new one,
    /// watch which clients still chain to the old one ([`LiveTls::client_cas`]), remove it;
    /// clients still chaining to a removed CA are disconnected.
    pub extra_client_ca: Vec<PathBuf>,
    /// Certificate revocation lists (PEM or DER). A client certificate whose issuer has no
    /// CRL here is not checked for revocation.
    pub crl: Vec<PathBuf>,
    /// What to do while a CRL is past its next update.
    pub crl_stale: CrlStalePolicy,
    /// Which certificate name becomes the username.
    pub identity: IdentitySource,
    /// Accept X.509 v1 client certificates signed directly by the client CA (what
    /// `openssl x509 -req` without extensions makes). Signature, validity and CRL are still
    /// checked.
    pub accept_v1_client_certs: bool,
    /// ALPN protocols offered ("mqtt" on tls listeners, "http/1.1" on wss).
    pub alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: never the contents of the key or its passphrase.
        f.debug_struct("TlsSettings")
            .field("cert", &self.cert)
            .field("chain", &self.chain)
            .field("key", &self.key)
            .field("key_passphrase_file", &self.key_passphrase_file)
            .field("ocsp", &self.ocsp)
            .field("sni", &self.sni)
            .field("client_auth", &self.client_auth)
            .field("client_ca", &self.client_ca)
            .field("extra_client_ca", &self.extra_client_ca)
            .field("crl", &self.crl)
            .field("crl_stale", &self.crl_stale)
            .field("identity", &self.identity)
            .field("accept_v1_client_certs", &self.accept_v1_client_certs)
            .finish()
    }
}

impl TlsSettings {
    /// One-way TLS with these files, ALPN "mqtt".
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            chain: None,
            key: key.into(),
            key_passphrase_file: None,
            ocsp: None,
            sni: Vec::new(),
            client_auth: ClientAuth::None,
            client_ca: None,
            extra_client_ca: Vec::new(),
            crl: Vec::new(),
            crl_stale: CrlStalePolicy::Warn,
            identity: IdentitySource::Cn,
            accept_v1_client_certs: false,
            alpn: vec![b"mqtt".to_vec()],
        }
    }
}

/// The most SNI sets one listener may have (docs/LIMITS.md): each is linted and held in
/// memory, and a listener needing more is better split.
pub const MAX_SNI_SETS: usize = 64;

/// One certificate set of a listener chosen by SNI: its files and the names it answers for.
/// `Debug` shows paths only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniSet {
    /// The certificate (the leaf, then maybe intermediates), PEM.
    pub cert: PathBuf,
    /// Intermediates sent after the leaf, PEM.
    pub chain: Option<PathBuf>,
    /// The private key.
    pub key: PathBuf,
    /// A file holding the key's passphrase (first line).
    pub key_passphrase_file: Option<PathBuf>,
    /// An OCSP response for the certificate, stapled when it checks out.
    pub ocsp: Option<PathBuf>,
    /// The names it answers for, lower case (`*.example.com` matches one label); empty: the
    /// DNS names of its certificate.
    pub names: Vec<String>,
}

impl SniSet {
    /// A set with these files answering for the DNS names of its certificate.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            chain: None,
            key: key.into(),
            key_passphrase_file: None,
            ocsp: None,
            names: Vec::new(),
        }
    }
}
