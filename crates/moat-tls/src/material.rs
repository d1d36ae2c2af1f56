//! Loading a listener's files, checking them with moat-pki's lint, and building the rustls
//! server configuration.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use moat_pki::decode::{self, DecodeError, Kind};
use moat_pki::lint::{self, Finding, LintFile, LintInput, LintProfile, Severity};
use moat_pki::KeyError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use zeroize::Zeroizing;

use crate::anchor::ClientCa;
use crate::verifier::Verifier;
use crate::{ClientAuth, TlsSettings};

/// Why a listener's TLS material cannot be used. Each message describes one level; the cause
/// is reached through `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read (a missing certificate file means "removed").
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Lint found errors: each finding names the file, the fact and the fix.
    #[error("{}", findings.iter().filter(|f| f.severity == Severity::Error).map(|f| f.to_string()).collect::<Vec<_>>().join("\n"))]
    Lint {
        /// Every finding (errors and warnings).
        findings: Vec<Finding>,
    },
    /// Client authentication is on and no client CA is set.
    #[error(
        "client_auth needs client_ca: set client_ca to the CA bundle that signed the client \
         certificates (e.g. moat-data/pki/ca.pem)"
    )]
    NoClientCa,
    /// A file passed lint but cannot be used.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: FileError,
    },
    /// New material passed every check but could not be written where the listener's
    /// settings point (nothing was changed).
    #[error("cannot write the new TLS files")]
    Write {
        /// The error, naming the file.
        source: moat_pki::error::Error,
    },
    /// Material given as bytes has a part the listener's settings have no file for.
    #[error("this listener has no {part} file configured: set `{part}` in its tls settings")]
    NoPath {
        /// "chain" or "client_ca".
        part: &'static str,
    },
    /// rustls refused to build part of the configuration.
    #[error("cannot build the {part}")]
    Config {
        /// The part: "TLS versions", "client certificate verifier", "session ticketer".
        part: &'static str,
        /// rustls's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What is wrong with a file that lint accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Nothing usable could be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The certificate file holds no certificate.
    #[error("no certificate")]
    NoCertificate,
    /// The private key cannot be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// rustls refuses the private key.
    #[error("rustls refuses the private key")]
    SigningKey(#[source] rustls::Error),
    /// A CRL file holds something else (the parser's message).
    #[error("not a certificate revocation list: {0}")]
    NotCrl(String),
    /// rustls refuses a CA certificate of the client CA file.
    #[error("CA certificate not usable")]
    ClientCa(#[source] rustls::Error),
}

fn file_error(path: &Path, source: impl Into<FileError>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        source: source.into(),
    }
}

fn config_error(
    part: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> TlsError {
    TlsError::Config {
        part,
        source: Box::new(source),
    }
}

/// Revoked serial numbers of one issuer, from a CRL.
#[derive(Debug, Clone)]
pub(crate) struct Revoked {
    pub(crate) issuer: Vec<u8>,
    pub(crate) serials: HashSet<Vec<u8>>,
    /// The issuer, RFC 4514 style, for log lines.
    pub(crate) issuer_name: String,
    /// The file the CRL came from.
    pub(crate) path: PathBuf,
}

/// Validated material and the server configuration built from it.
pub struct Material {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) revoked: Arc<Vec<Revoked>>,
    /// The CAs client certificates are verified against, each with its file.
    pub(crate) client_cas: Arc<Vec<ClientCa>>,
    /// Lint warnings, to log.
    pub warnings: Vec<Finding>,
    /// A digest of every file's content, to tell whether anything changed.
    pub(crate) digest: Vec<u8>,
    /// One line about the server certificate, for logs.
    pub summary: String,
    /// The certificates served (leaf and chain) and trusted for clients, with their expiry.
    pub certificates: Vec<CertificateExpiry>,
    /// The certificates and CRLs themselves, to describe them.
    pub(crate) served: Served,
}

/// What a listener's material holds, as DER: the leaf and chain it sends, the client CAs it
/// trusts and its CRLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// The server certificate.
    pub leaf: Vec<u8>,
    /// The intermediates sent after it, in order.
    pub chain: Vec<Vec<u8>>,
    /// The CA certificates client certificates are verified against (none on a one-way
    /// listener).
    pub client_ca: Vec<Vec<u8>>,
    /// The CRLs in force.
    pub crls: Vec<CrlInfo>,
    /// Lint warnings of the material.
    pub warnings: Vec<Finding>,
}

/// One certificate revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    /// The file it came from.
    pub path: PathBuf,
    /// Its issuer, RFC 4514 style.
    pub issuer: String,
    /// When its issuer promises the next one (Unix seconds), if it says.
    pub next_update: Option<i64>,
    /// How many certificates it revokes.
    pub revoked: usize,
}

/// What a listener's certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CertificateRole {
    /// The server certificate (the leaf).
    Server,
    /// An intermediate sent after the leaf.
    Chain,
    /// A CA client certificates are verified against.
    ClientCa,
}

impl CertificateRole {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Chain => "chain",
            Self::ClientCa => "client_ca",
        }
    }
}

/// A certificate a listener serves or trusts, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// What it is for.
    pub role: CertificateRole,
    /// Its subject, RFC 4514 style.
    pub subject: String,
    /// Its notAfter, in Unix seconds.
    pub not_after: i64,
}

impl CertificateExpiry {
    fn of(role: CertificateRole, der: &[u8]) -> Option<Self> {
        let info = moat_pki::inspect::CertInfo::from_der(der).ok()?;
        Some(Self {
            role,
            subject: info.subject,
            not_after: info.not_after_unix,
        })
    }
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The further client CA files: one that is gone is a CA no longer trusted (how a CA being
/// rotated out is removed while running), not an error.
fn read_extra_cas(paths: &[PathBuf]) -> Result<Vec<Option<Vec<u8>>>, TlsError> {
    paths
        .iter()
        .map(|p| match std::fs::read(p) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TlsError::Read {
                path: p.clone(),
                source,
            }),
        })
        .collect()
}

/// The crypto provider for the whole project.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files of one listener, read once.
pub(crate) struct Files {
    cert: Vec<u8>,
    chain: Option<Vec<u8>>,
    key: Zeroizing<Vec<u8>>,
    passphrase: Option<Zeroizing<Vec<u8>>>,
    client_ca: Option<Vec<u8>>,
    /// The further client CA files, `None` for one that is gone.
    extra_ca: Vec<Option<Vec<u8>>>,
    crls: Vec<Vec<u8>>,
}

/// TLS material given as bytes (an upload, a paste) rather than read from files.
#[derive(Clone, Default)]
pub struct Pem {
    /// The certificate (the leaf; several certificates are refused by lint: split them).
    pub cert: Vec<u8>,
    /// Intermediates, if any.
    pub chain: Option<Vec<u8>>,
    /// The private key (not encrypted).
    pub key: Zeroizing<Vec<u8>>,
    /// The CA bundle that client certificates must chain to, if the listener verifies them.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert.len())
            .field("chain", &self.chain.as_ref().map(Vec::len))
            .field("key", &"<redacted>")
            .field("client_ca", &self.client_ca.as_ref().map(Vec::len))
            .finish()
    }
}

impl Files {
    pub(crate) fn read(s: &TlsSettings) -> Result<Self, TlsError> {
        let passphrase = match &s.key_passphrase_file {
            Some(p) => {
                let data = Zeroizing::new(read(p)?);
                let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                Some(Zeroizing::new(line.to_vec()))
            }
            None => None,
        };
        Ok(Self {
            cert: read(&s.cert)?,
            chain: s.chain.as_deref().map(read).transpose()?,
            key: Zeroizing::new(read(&s.key)?),
            passphrase,
            client_ca: s.client_ca.as_deref().map(read).transpose()?,
            extra_ca: read_extra_cas(&s.extra_client_ca)?,
            crls: s.crl.iter().map(|p| read(p)).collect::<Result<_, _>>()?,
        })
    }

    /// New material from bytes, with what the listener's other files hold (CRLs, a chain or
    /// client CA not given).
    pub(crate) fn with_pem(s: &TlsSettings, pem: &Pem) -> Result<Self, TlsError> {
        if pem.chain.is_some() && s.chain.is_none() {
            return Err(TlsError::NoPath { part: "chain" });
        }
        if pem.client_ca.is_some() && s.client_ca.is_none() {
            return Err(TlsError::NoPath { part: "client_ca" });
        }
        let keep = |given: &Option<Vec<u8>>, path: &Option<PathBuf>| match given {
            Some(b) => Ok(Some(b.clone())),
            None => path.as_deref().map(read).transpose(),
        };
        Ok(Self {
            cert: pem.cert.clone(),
            chain: keep(&pem.chain, &s.chain)?,
            key: pem.key.clone(),
            passphrase: None,
            client_ca: keep(&pem.client_ca, &s.client_ca)?,
            extra_ca: read_extra_cas(&s.extra_client_ca)?,
            crls: s.crl.iter().map(|p| read(p)).collect::<Result<_, _>>()?,
        })
    }

    /// Writes the parts given as bytes to the listener's files, each atomically (the key
    /// 0600), so that a restart and the file watcher serve what was installed.
    pub(crate) fn write(s: &TlsSettings, pem: &Pem) -> Result<(), TlsError> {
        use moat_pki::store::replace_file;
        let w =
            |r: Result<(), moat_pki::error::Error>| r.map_err(|source| TlsError::Write { source });
        if let (Some(b), Some(p)) = (&pem.chain, &s.chain) {
            w(replace_file(p, b, false))?;
        }
        if let (Some(b), Some(p)) = (&pem.client_ca, &s.client_ca) {
            w(replace_file(p, b, false))?;
        }
        w(replace_file(&s.key, &pem.key, true))?;
        w(replace_file(&s.cert, &pem.cert, false))
    }

    /// The further client CA files that exist, with their paths.
    fn extra_cas<'a>(
        &'a self,
        s: &'a TlsSettings,
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a PathBuf)> + 'a {
        self.extra_ca
            .iter()
            .zip(&s.extra_client_ca)
            .filter_map(|(data, path)| data.as_ref().map(|d| (d, path)))
    }

    pub(crate) fn digest(&self) -> Vec<u8> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut part = |tag: &[u8], data: &[u8]| {
            ctx.update(tag);
            ctx.update(&(data.len() as u64).to_be_bytes());
            ctx.update(data);
        };
        part(b"cert", &self.cert);
        part(b"chain", self.chain.as_deref().unwrap_or_default());
        part(b"key", &self.key);
        part(
            b"pass",
            self.passphrase
                .as_deref()
                .map(|p| p.as_slice())
                .unwrap_or_default(),
        );
        part(b"ca", self.client_ca.as_deref().unwrap_or_default());
        for c in &self.extra_ca {
            part(b"ca+", c.as_deref().unwrap_or(b"(gone)"));
        }
        for c in &self.crls {
            part(b"crl", c);
        }
        ctx.finish().as_ref().to_vec()
    }
}

impl Material {
    /// Reads, lints and builds. Lint errors refuse the material; warnings are returned.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and the problem.
    pub fn load(s: &TlsSettings, now: SystemTime) -> Result<Self, TlsError> {
        let files = Files::read(s)?;
        Self::build(s, &files, now)
    }

    /// Lints and builds material given as bytes for a listener with settings `s`, exactly as
    /// [`LiveTls::install`](crate::LiveTls::install) would (parts not given are read from the
    /// files `s` names), without writing or serving anything.
    ///
    /// # Errors
    /// [`TlsError`]: [`TlsError::Lint`] with the findings, [`TlsError::NoPath`] for a part `s`
    /// has no file for.
    pub fn check(s: &TlsSettings, pem: &Pem, now: SystemTime) -> Result<Self, TlsError> {
        let files = Files::with_pem(s, pem)?;
        Self::build(s, &files, now)
    }

    /// The certificates and CRLs this material holds.
    pub fn served(&self) -> &Served {
        &self.served
    }

    pub(crate) fn build(s: &TlsSettings, files: &Files, now: SystemTime) -> Result<Self, TlsError> {
        if s.client_auth != ClientAuth::None && s.client_ca.is_none() {
            return Err(TlsError::NoClientCa);
        }
        let display = |p: &Path| p.display().to_string();
        let mut input = LintInput::new(now);
        input.profile = LintProfile::BrokerStartup;
        input.cert = Some(LintFile::new(display(&s.cert), files.cert.clone()));
        input.chain = files
            .chain
            .as_ref()
            .zip(s.chain.as_deref())
            .map(|(d, p)| LintFile::new(display(p), d.clone()));
        input.key = Some(LintFile::new(display(&s.key), files.key.to_vec()));
        input.key_passphrase = files.passphrase.clone();
        input.client_ca = files
            .client_ca
            .as_ref()
            .zip(s.client_ca.as_deref())
            .map(|(d, p)| LintFile::new(display(p), d.clone()));
        for (data, path) in files.extra_ca.iter().zip(&s.extra_client_ca) {
            if data.is_none() {
                tracing::warn!(
                    file = %path.display(),
                    "client CA file is gone: that CA is no longer trusted (clients chaining to \
                     it are disconnected)"
                );
            }
        }
        let mut findings = lint::lint(&input);
        // Each further client CA file is linted as the client CA (the findings of the rest
        // repeat and are dropped), so a finding names its own file.
        if s.client_auth != ClientAuth::None {
            for (data, path) in files.extra_cas(s) {
                input.client_ca = Some(LintFile::new(display(path), data.clone()));
                for f in lint::lint(&input) {
                    if !findings.contains(&f) {
                        findings.push(f);
                    }
                }
            }
        }
        if lint::has_errors(&findings) {
            return Err(TlsError::Lint { findings });
        }
        let warnings = findings;

        // The leaf is the first certificate of the cert file; anything after it, then the
        // chain file (without a repeated leaf), is sent as the chain.
        let certs = decode::decode(&files.cert)
            .map(|d| d.certificates())
            .map_err(|e| file_error(&s.cert, e))?;
        let Some(leaf) = certs.first().cloned() else {
            return Err(file_error(&s.cert, FileError::NoCertificate));
        };
        let mut chain: Vec<CertificateDer<'static>> = vec![CertificateDer::from(leaf.clone())];
        let mut certificates = Vec::new();
        for c in certs.iter().skip(1) {
            chain.push(CertificateDer::from(c.clone()));
        }
        if let (Some(data), Some(path)) = (&files.chain, &s.chain) {
            let extra = decode::decode(data)
                .map(|d| d.certificates())
                .map_err(|e| file_error(path, e))?;
            for c in extra {
                if c != leaf && !chain.iter().any(|x| x.as_ref() == c.as_slice()) {
                    chain.push(CertificateDer::from(c));
                }
            }
        }
        for (i, c) in chain.iter().enumerate() {
            let role = if i == 0 {
                CertificateRole::Server
            } else {
                CertificateRole::Chain
            };
            certificates.extend(CertificateExpiry::of(role, c));
        }
        let key = moat_pki::key::load(
            &files.key,
            files.passphrase.as_deref().map(|p| p.as_slice()),
        )
        .map_err(|e| file_error(&s.key, e))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));

        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| file_error(&s.key, FileError::SigningKey(e)))?;
        let chain_ders: Vec<Vec<u8>> = chain.iter().skip(1).map(|c| c.to_vec()).collect();
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));

        // CRLs: for webpki during handshakes, and as serial sets to check live connections.
        let mut crl_ders = Vec::new();
        let mut revoked = Vec::new();
        let mut crl_infos = Vec::new();
        let mut client_ca_ders = Vec::new();
        let mut client_cas = Vec::new();
        for (data, path) in files.crls.iter().zip(&s.crl) {
            let ders: Vec<Vec<u8>> = match decode::decode(data) {
                Ok(d) if d.items.iter().any(|i| i.kind == Kind::Crl) => d
                    .items
                    .into_iter()
                    .filter(|i| i.kind == Kind::Crl)
                    .map(|i| i.der)
                    .collect(),
                _ => vec![data.clone()],
            };
            for der in ders {
                let (_, crl) = x509_parser::parse_x509_crl(&der)
                    .map_err(|e| file_error(path, FileError::NotCrl(e.to_string())))?;
                crl_infos.push(CrlInfo {
                    path: path.clone(),
                    issuer: crl.issuer().to_string(),
                    next_update: crl.next_update().map(|t| t.timestamp()),
                    revoked: crl.iter_revoked_certificates().count(),
                });
                revoked.push(Revoked {
                    issuer_name: crl.issuer().to_string(),
                    path: path.clone(),
                    issuer: crl.issuer().as_raw().to_vec(),
                    serials: crl
                        .iter_revoked_certificates()
                        .map(|r| r.raw_serial().to_vec())
                        .collect(),
                });
                crl_ders.push(CertificateRevocationListDer::from(der));
            }
        }

        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| config_error("TLS versions", e))?;
        let builder = match (&s.client_auth, &files.client_ca, &s.client_ca) {
            (ClientAuth::None, _, _) | (_, None, _) | (_, _, None) => builder.with_no_client_auth(),
            (auth, Some(ca_data), Some(ca_path)) => {
                let mut roots = RootCertStore::empty();
                let ca_files = std::iter::once((ca_data, ca_path)).chain(files.extra_cas(s));
                for (data, path) in ca_files {
                    let certs = decode::decode(data)
                        .map(|d| d.certificates())
                        .map_err(|e| file_error(path, e))?;
                    for c in certs {
                        if client_ca_ders.contains(&c) {
                            continue;
                        }
                        certificates.extend(CertificateExpiry::of(CertificateRole::ClientCa, &c));
                        roots
                            .add(CertificateDer::from(c.clone()))
                            .map_err(|e| file_error(path, FileError::ClientCa(e)))?;
                        client_cas.extend(ClientCa::from_der(&c, path.clone()));
                        client_ca_ders.push(c);
                    }
                }
                let ca_certs = client_ca_ders.clone();
                let mut vb = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .with_crls(crl_ders.clone())
                // An issuer without a CRL in the list is not checked (else one intermediate's
                // CRL would lock out every certificate of the others). A CRL past its next
                // update keeps being applied: `crl_stale` decides what else happens.
                .allow_unknown_revocation_status();
                if *auth == ClientAuth::Optional {
                    vb = vb.allow_unauthenticated();
                }
                let inner = vb
                    .build()
                    .map_err(|e| config_error("client certificate verifier", e))?;
                let verifier = Verifier::new(
                    inner,
                    ca_certs,
                    revoked.clone(),
                    s.accept_v1_client_certs,
                    *auth == ClientAuth::Required,
                    provider.signature_verification_algorithms,
                );
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::clone(&certified))));
        config.alpn_protocols.clone_from(&s.alpn);
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| config_error("session ticketer", e))?;

        let summary = moat_pki::inspect::CertInfo::from_der(&leaf)
            .map(|i| format!("{} (expires {})", i.short_name(), i.not_after))
            .unwrap_or_else(|_| "certificate".into());
        Ok(Self {
            config: Arc::new(config),
            revoked: Arc::new(revoked),
            client_cas: Arc::new(client_cas),
            served: Served {
                leaf,
                chain: chain_ders,
                client_ca: client_ca_ders,
                crls: crl_infos,
                warnings: warnings.clone(),
            },
            warnings,
            digest: files.digest(),
            summary,
            certificates,
        })
    }
}

/// The one certificate of a configuration (a new configuration is built when it changes).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
