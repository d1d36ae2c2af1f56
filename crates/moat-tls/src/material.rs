//! Loading a listener's files, checking them with moat-pki's lint, and building the rustls
//! server configuration.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use moat_pki::decode::{self, DecodeError, Kind};
use moat_pki::inspect::San;
use moat_pki::lint::{self, Finding, LintFile, LintInput, LintProfile, Severity};
use moat_pki::KeyError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use zeroize::Zeroizing;

use crate::anchor::ClientCa;
use crate::ocsp::{self, ForCertificate, OcspCertStatus, OcspRefusal};
use crate::sni::{normalize_name, Entry, Names, Resolver};
use crate::verifier::Verifier;
use crate::{ClientAuth, SniSet, TlsSettings};

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
    /// An SNI set answers for no name: its certificate has no DNS name and it sets none.
    #[error(
        "{}: this SNI set answers for no name: its certificate has no DNS name; set `names`",
        path.display()
    )]
    SniNoNames {
        /// The set's certificate file.
        path: PathBuf,
    },
    /// Two SNI sets answer for the same name (from `names` or from their certificates).
    #[error(
        "the SNI sets of {} and {} both answer for {name:?}: give each name to one set          (set `names` on one of them)",
        first.display(),
        second.display()
    )]
    SniConflict {
        /// The name.
        name: String,
        /// The first set's certificate file.
        first: PathBuf,
        /// The second set's certificate file.
        second: PathBuf,
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
    /// The certificates the configuration chooses from (to tell which one a handshake got).
    pub(crate) resolver: Arc<Resolver>,
    /// The OCSP responses configured, as checked.
    pub(crate) ocsp: Vec<OcspLoaded>,
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
    /// The SNI sets served (a set whose files are gone is not here).
    pub sni: Vec<ServedSni>,
}

/// One SNI set a listener serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedSni {
    /// Its index among the listener's `sni` settings.
    pub index: usize,
    /// The names it answers for (lower case; `*.` for a wildcard).
    pub names: Vec<String>,
    /// Its certificate.
    pub leaf: Vec<u8>,
    /// The intermediates sent after it, in order.
    pub chain: Vec<Vec<u8>>,
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

/// The paths of one certificate: the default's or an SNI set's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CertPaths<'a> {
    pub(crate) cert: &'a Path,
    pub(crate) chain: Option<&'a Path>,
    pub(crate) key: &'a Path,
    pub(crate) passphrase: Option<&'a Path>,
    pub(crate) ocsp: Option<&'a Path>,
}

impl<'a> CertPaths<'a> {
    pub(crate) fn of_default(s: &'a TlsSettings) -> Self {
        Self {
            cert: &s.cert,
            chain: s.chain.as_deref(),
            key: &s.key,
            passphrase: s.key_passphrase_file.as_deref(),
            ocsp: s.ocsp.as_deref(),
        }
    }

    pub(crate) fn of_set(s: &'a SniSet) -> Self {
        Self {
            cert: &s.cert,
            chain: s.chain.as_deref(),
            key: &s.key,
            passphrase: s.key_passphrase_file.as_deref(),
            ocsp: s.ocsp.as_deref(),
        }
    }
}

/// The files of one certificate (the default or an SNI set's), read once.
pub(crate) struct KeyFiles {
    cert: Vec<u8>,
    chain: Option<Vec<u8>>,
    key: Zeroizing<Vec<u8>>,
    passphrase: Option<Zeroizing<Vec<u8>>>,
    /// The OCSP response: `None` when none is configured, `Err` (why) when the file cannot be
    /// read (then nothing is stapled: stapling never stops a listener).
    ocsp: Option<Result<Vec<u8>, String>>,
}

impl KeyFiles {
    fn read(p: CertPaths<'_>) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(p.cert)?,
            chain: p.chain.map(read).transpose()?,
            key: Zeroizing::new(read(p.key)?),
            passphrase: p.passphrase.map(read_passphrase).transpose()?,
            ocsp: read_ocsp(p.ocsp),
        })
    }

    fn digest_into(&self, part: &mut impl FnMut(&[u8], &[u8])) {
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
        match &self.ocsp {
            Some(Ok(d)) => part(b"ocsp", d),
            Some(Err(_)) => part(b"ocsp-unreadable", b""),
            None => part(b"no-ocsp", b""),
        }
    }
}

/// The first line of a passphrase file.
fn read_passphrase(p: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let data = Zeroizing::new(read(p)?);
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Zeroizing::new(line.to_vec()))
}

fn read_ocsp(p: Option<&Path>) -> Option<Result<Vec<u8>, String>> {
    p.map(|p| std::fs::read(p).map_err(|e| e.to_string()))
}

/// The files of one listener, read once.
pub(crate) struct Files {
    main: KeyFiles,
    /// By the index of the set in the settings; `None` when the set's certificate or key file
    /// is missing (the set is removed until they are back).
    sni: Vec<Option<KeyFiles>>,
    client_ca: Option<Vec<u8>>,
    /// The further client CA files, `None` for one that is gone.
    extra_ca: Vec<Option<Vec<u8>>>,
    crls: Vec<Vec<u8>>,
}

/// What reading does with an SNI set whose certificate or key file is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MissingSet {
    /// An error (at start-up: the configuration names a file that is not there).
    Refuse,
    /// The set is left out (while running: its files were removed).
    Remove,
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
    pub(crate) fn read(s: &TlsSettings, missing: MissingSet) -> Result<Self, TlsError> {
        Ok(Self {
            main: KeyFiles::read(CertPaths::of_default(s))?,
            sni: read_sets(s, missing)?,
            client_ca: s.client_ca.as_deref().map(read).transpose()?,
            extra_ca: read_extra_cas(&s.extra_client_ca)?,
            crls: s.crl.iter().map(|p| read(p)).collect::<Result<_, _>>()?,
        })
    }

    /// New material from bytes, with what the listener's other files hold (CRLs, SNI sets, an
    /// OCSP response, a chain or client CA not given).
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
            main: KeyFiles {
                cert: pem.cert.clone(),
                chain: keep(&pem.chain, &s.chain)?,
                key: pem.key.clone(),
                passphrase: None,
                ocsp: read_ocsp(s.ocsp.as_deref()),
            },
            sni: read_sets(s, MissingSet::Remove)?,
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
        self.main.digest_into(&mut part);
        part(b"ca", self.client_ca.as_deref().unwrap_or_default());
        for c in &self.extra_ca {
            part(b"ca+", c.as_deref().unwrap_or(b"(gone)"));
        }
        for c in &self.crls {
            part(b"crl", c);
        }
        for (i, set) in self.sni.iter().enumerate() {
            part(b"sni", &(i as u64).to_be_bytes());
            match set {
                Some(f) => f.digest_into(&mut part),
                None => part(b"sni-removed", b""),
            }
        }
        ctx.finish().as_ref().to_vec()
    }
}

/// Reads every SNI set's files; a set whose certificate or key file is missing is `None` when
/// `missing` says so.
fn read_sets(s: &TlsSettings, missing: MissingSet) -> Result<Vec<Option<KeyFiles>>, TlsError> {
    s.sni
        .iter()
        .map(|set| match KeyFiles::read(CertPaths::of_set(set)) {
            Err(TlsError::Read { path, source })
                if missing == MissingSet::Remove
                    && source.kind() == std::io::ErrorKind::NotFound
                    && (path == set.cert || path == set.key) =>
            {
                Ok(None)
            }
            other => other.map(Some),
        })
        .collect()
}

/// One certificate built: what the resolver serves and what is reported about it.
struct Built {
    entry: Entry,
    leaf: Vec<u8>,
    /// The intermediates sent after the leaf.
    chain: Vec<Vec<u8>>,
    ocsp: Option<OcspLoaded>,
}

/// The OCSP response of one certificate as checked when the material was built.
#[derive(Debug, Clone)]
pub(crate) struct OcspLoaded {
    /// The response file.
    pub(crate) path: PathBuf,
    /// The certificate's subject.
    pub(crate) subject: String,
    /// Which certificate: "default" or "SNI set N (names)".
    pub(crate) set: String,
    /// What it says and its nextUpdate when stapled; why not, else.
    pub(crate) result: Result<(OcspCertStatus, Option<i64>), OcspRefusal>,
}

/// The lint input of one certificate's files.
fn lint_input(p: CertPaths<'_>, f: &KeyFiles, now: SystemTime) -> LintInput {
    let display = |p: &Path| p.display().to_string();
    let mut input = LintInput::new(now);
    input.profile = LintProfile::BrokerStartup;
    input.cert = Some(LintFile::new(display(p.cert), f.cert.clone()));
    input.chain = f
        .chain
        .as_ref()
        .zip(p.chain)
        .map(|(d, p)| LintFile::new(display(p), d.clone()));
    input.key = Some(LintFile::new(display(p.key), f.key.to_vec()));
    input.key_passphrase = f.passphrase.clone();
    input
}

/// Builds one certificate (leaf, chain, key and OCSP staple) from files lint accepted.
fn build_certificate(
    p: CertPaths<'_>,
    f: &KeyFiles,
    set: &str,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<Built, TlsError> {
    // The leaf is the first certificate of the cert file; anything after it, then the
    // chain file (without a repeated leaf), is sent as the chain.
    let certs = decode::decode(&f.cert)
        .map(|d| d.certificates())
        .map_err(|e| file_error(p.cert, e))?;
    let Some(leaf) = certs.first().cloned() else {
        return Err(file_error(p.cert, FileError::NoCertificate));
    };
    let mut chain: Vec<CertificateDer<'static>> = vec![CertificateDer::from(leaf.clone())];
    for c in certs.iter().skip(1) {
        chain.push(CertificateDer::from(c.clone()));
    }
    if let (Some(data), Some(path)) = (&f.chain, p.chain) {
        let extra = decode::decode(data)
            .map(|d| d.certificates())
            .map_err(|e| file_error(path, e))?;
        for c in extra {
            if c != leaf && !chain.iter().any(|x| x.as_ref() == c.as_slice()) {
                chain.push(CertificateDer::from(c));
            }
        }
    }
    let key = moat_pki::key::load(&f.key, f.passphrase.as_deref().map(|p| p.as_slice()))
        .map_err(|e| file_error(p.key, e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| file_error(p.key, FileError::SigningKey(e)))?;
    let chain_ders: Vec<Vec<u8>> = chain.iter().skip(1).map(|c| c.to_vec()).collect();
    let certified = Arc::new(CertifiedKey::new(chain, signing_key));
    let ocsp = p
        .ocsp
        .zip(f.ocsp.as_ref())
        .map(|(path, data)| check_ocsp(path, data, &leaf, set, now));
    let staple = match &ocsp {
        Some(OcspLoaded {
            result: Ok((_, next)),
            ..
        }) => f
            .ocsp
            .as_ref()
            .and_then(|d| d.as_ref().ok())
            .map(|d| (ocsp_der(d), *next)),
        _ => None,
    };
    Ok(Built {
        entry: Entry::new(certified, staple),
        leaf,
        chain: chain_ders,
        ocsp,
    })
}

/// The DER of a response file that checked out (PEM unwrapped).
fn ocsp_der(data: &[u8]) -> Vec<u8> {
    ocsp::der_of(data).unwrap_or_else(|_| data.to_vec())
}

/// Checks the OCSP response `data` read from `path` against the certificate `leaf`.
fn check_ocsp(
    path: &Path,
    data: &Result<Vec<u8>, String>,
    leaf: &[u8],
    set: &str,
    now: SystemTime,
) -> OcspLoaded {
    let parsed = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .map(|(_, c)| c);
    let subject = parsed
        .as_ref()
        .map_or_else(|| "certificate".into(), |c| c.subject().to_string());
    let result = match (data, &parsed) {
        (Err(e), _) => Err(OcspRefusal::Read(e.clone())),
        (Ok(_), None) => Err(OcspRefusal::Malformed("the certificate cannot be parsed")),
        (Ok(d), Some(c)) => {
            let cert = ForCertificate {
                serial: c.raw_serial(),
                issuer_name: c.issuer().as_raw(),
            };
            ocsp::check(d, cert, crate::live::unix(now)).map(|s| (s.status, s.next_update))
        }
    };
    OcspLoaded {
        path: path.to_owned(),
        subject,
        set: set.to_owned(),
        result,
    }
}

/// The names an SNI set answers for: those configured, else the DNS names of its certificate.
fn set_names(set: &SniSet, leaf: &[u8]) -> Vec<String> {
    if !set.names.is_empty() {
        return set.names.iter().filter_map(|n| normalize_name(n)).collect();
    }
    moat_pki::inspect::CertInfo::from_der(leaf)
        .map(|i| {
            i.sans
                .iter()
                .filter_map(|s| match s {
                    San::Dns(d) => normalize_name(d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A label for one SNI set in logs: its index and names.
fn set_label(i: usize, names: &[String]) -> String {
    format!("SNI set {i} ({})", names.join(", "))
}

impl Material {
    /// Reads, lints and builds. Lint errors refuse the material; warnings are returned.
    ///
    /// # Errors
    /// [`TlsError`] naming the file and the problem.
    pub fn load(s: &TlsSettings, now: SystemTime) -> Result<Self, TlsError> {
        let files = Files::read(s, MissingSet::Refuse)?;
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

    /// Lints every certificate's files (the default with the client CA, then each SNI set
    /// present): lint errors in any refuse them all; the findings are returned.
    fn lint(s: &TlsSettings, files: &Files, now: SystemTime) -> Result<Vec<Finding>, TlsError> {
        let mut input = lint_input(CertPaths::of_default(s), &files.main, now);
        input.client_ca = files
            .client_ca
            .as_ref()
            .zip(s.client_ca.as_deref())
            .map(|(d, p)| LintFile::new(p.display().to_string(), d.clone()));
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
                input.client_ca = Some(LintFile::new(path.display().to_string(), data.clone()));
                for f in lint::lint(&input) {
                    if !findings.contains(&f) {
                        findings.push(f);
                    }
                }
            }
        }
        for (set, f) in s.sni.iter().zip(&files.sni) {
            if let Some(f) = f {
                findings.extend(lint::lint(&lint_input(CertPaths::of_set(set), f, now)));
            }
        }
        if lint::has_errors(&findings) {
            return Err(TlsError::Lint { findings });
        }
        Ok(findings)
    }

    pub(crate) fn build(s: &TlsSettings, files: &Files, now: SystemTime) -> Result<Self, TlsError> {
        if s.client_auth != ClientAuth::None && s.client_ca.is_none() {
            return Err(TlsError::NoClientCa);
        }
        let warnings = Self::lint(s, files, now)?;
        let provider = provider();
        let main = build_certificate(
            CertPaths::of_default(s),
            &files.main,
            "default",
            &provider,
            now,
        )?;
        let mut certificates = Vec::new();
        let mut ocsp = Vec::new();
        let mut served_sni = Vec::new();
        // Each certificate once: SNI sets often share an intermediate (one metric series each).
        let mut listed: HashSet<Vec<u8>> = HashSet::new();
        let mut expiry = |leaf: &[u8], chain: &[Vec<u8>]| {
            let roles = std::iter::once((CertificateRole::Server, leaf))
                .chain(chain.iter().map(|c| (CertificateRole::Chain, c.as_slice())));
            for (role, der) in roles {
                if listed.insert(der.to_vec()) {
                    certificates.extend(CertificateExpiry::of(role, der));
                }
            }
        };
        expiry(&main.leaf, &main.chain);
        ocsp.extend(main.ocsp.clone());

        // SNI sets: each present one built and its names claimed; a name two sets claim is
        // refused, naming both files.
        let mut names = Names::default();
        let mut owners: Vec<&Path> = Vec::new();
        let mut sets = Vec::new();
        for (i, (set, f)) in s.sni.iter().zip(&files.sni).enumerate() {
            owners.push(&set.cert);
            let Some(f) = f else {
                sets.push(None);
                continue;
            };
            let certs = decode::decode(&f.cert)
                .map(|d| d.certificates())
                .map_err(|e| file_error(&set.cert, e))?;
            let leaf = certs.first().map(Vec::as_slice).unwrap_or_default();
            let set_names = set_names(set, leaf);
            if set_names.is_empty() {
                return Err(TlsError::SniNoNames {
                    path: set.cert.clone(),
                });
            }
            for n in &set_names {
                if let Err(other) = names.insert(n, i) {
                    return Err(TlsError::SniConflict {
                        name: n.clone(),
                        first: owners
                            .get(other)
                            .map(|p| p.to_path_buf())
                            .unwrap_or_default(),
                        second: set.cert.clone(),
                    });
                }
            }
            let label = set_label(i, &set_names);
            let built = build_certificate(CertPaths::of_set(set), f, &label, &provider, now)?;
            expiry(&built.leaf, &built.chain);
            ocsp.extend(built.ocsp.clone());
            served_sni.push(ServedSni {
                index: i,
                names: set_names,
                leaf: built.leaf,
                chain: built.chain,
            });
            sets.push(Some(built.entry));
        }
        let resolver = Arc::new(Resolver {
            default: main.entry,
            sets,
            names,
        });

        let (crls, crl_ders) = read_crls(s, files)?;
        let builder = server_builder(Arc::clone(&provider))?;
        let mut client_ca_ders = Vec::new();
        let mut client_cas = Vec::new();
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
                .with_crls(crl_ders)
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
                    crls.revoked.clone(),
                    s.accept_v1_client_certs,
                    *auth == ClientAuth::Required,
                    provider.signature_verification_algorithms,
                );
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols.clone_from(&s.alpn);
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        config.ticketer = ticketer()?;

        let mut summary = moat_pki::inspect::CertInfo::from_der(&main.leaf)
            .map(|i| format!("{} (expires {})", i.short_name(), i.not_after))
            .unwrap_or_else(|_| "certificate".into());
        if !served_sni.is_empty() {
            summary.push_str(&format!(" and {} SNI set(s)", served_sni.len()));
        }
        Ok(Self {
            config: Arc::new(config),
            revoked: Arc::new(crls.revoked),
            client_cas: Arc::new(client_cas),
            resolver,
            ocsp,
            served: Served {
                leaf: main.leaf,
                chain: main.chain,
                client_ca: client_ca_ders,
                crls: crls.infos,
                warnings: warnings.clone(),
                sni: served_sni,
            },
            warnings,
            digest: files.digest(),
            summary,
            certificates,
        })
    }

    /// A configuration with the same certificates (and SNI sets) that asks for no client
    /// certificate and offers `alpn`, with session tickets of its own: another service on
    /// another port serving the listener's certificates (the admin API's HTTPS).
    pub(crate) fn one_way_config(&self, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let mut config = server_builder(Arc::clone(self.config.crypto_provider()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.to_vec();
        config.ticketer = ticketer()?;
        Ok(config)
    }
}

/// A server configuration's start: `provider`, TLS 1.3 and 1.2.
fn server_builder(
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| config_error("TLS versions", e))
}

/// Session tickets with a key of their own.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    rustls::crypto::ring::Ticketer::new().map_err(|e| config_error("session ticketer", e))
}

/// A listener's CRLs, read.
struct Crls {
    revoked: Vec<Revoked>,
    infos: Vec<CrlInfo>,
}

/// Reads the CRL files: for webpki during handshakes, and as serial sets to check live
/// connections.
fn read_crls(
    s: &TlsSettings,
    files: &Files,
) -> Result<(Crls, Vec<CertificateRevocationListDer<'static>>), TlsError> {
    let mut crl_ders = Vec::new();
    let mut revoked = Vec::new();
    let mut infos = Vec::new();
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
            infos.push(CrlInfo {
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
    Ok((Crls { revoked, infos }, crl_ders))
}
