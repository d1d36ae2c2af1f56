//! The certificate rules: each finding has a stable code, a severity, a one-line message that
//! names the file and the fact, and a fix (the exact `moat cert` command where one exists).
//!
//! `moat cert lint`, the broker's start-up, its reload and its upload API all call [`lint`].
//! Severity can depend on the use ([`LintProfile`]): a v1, CN-only server certificate made by
//! the classic openssl recipe still works for OpenSSL-based clients, so the broker serves it with
//! a warning, while the strict profile says that rustls-based clients refuse it.
//!
//! The codes are [`LintCode`]s: documented in this crate's README.md (a table generated from
//! the enum) and never changing meaning.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

pub use crate::code::LintCode;
use crate::decode::{self, DecodeError, Encoding, Kind};
use crate::error::KeyError;
use crate::inspect::{CertInfo, San};
use crate::key::KeyAlgorithm;
use crate::verify::{self, Purpose};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The files will not work (for some or all peers): fix before use.
    Error,
    /// They work, but something is wrong or will soon be.
    Warning,
    /// Worth knowing.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        })
    }
}

/// Which use the files are checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LintProfile {
    /// What every client accepts, rustls-based ones included (`moat cert lint`).
    #[default]
    Strict,
    /// What the broker can serve: habits that OpenSSL-based peers tolerate (a v1 or CN-only
    /// server certificate, a bundle in the certificate file, chain order) are warnings.
    BrokerStartup,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Stable code, e.g. `cert-v1` (serialized as that string).
    pub code: LintCode,
    /// Severity under the profile used.
    pub severity: Severity,
    /// The file the finding is about.
    pub file: String,
    /// One line naming the file and the fact.
    pub message: String,
    /// How to fix it: the exact `moat cert` command where one exists.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.severity, self.code, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

/// A file to check: its name (for messages) and content.
#[derive(Clone)]
pub struct LintFile {
    /// The name used in messages, usually the path.
    pub path: String,
    /// The bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for LintFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LintFile")
            .field("path", &self.path)
            .field("len", &self.data.len())
            .finish()
    }
}

impl LintFile {
    /// A file from its name and content.
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            data: data.into(),
        }
    }
}

/// What to check.
#[derive(Clone)]
pub struct LintInput {
    /// The certificate (the leaf; a bundle gets `cert-multiple`).
    pub cert: Option<LintFile>,
    /// Intermediates.
    pub chain: Option<LintFile>,
    /// The private key.
    pub key: Option<LintFile>,
    /// The key's passphrase.
    pub key_passphrase: Option<Zeroizing<Vec<u8>>>,
    /// The CA the certificate must chain to.
    pub ca: Option<LintFile>,
    /// The CA a broker verifies client certificates with. For a client certificate it is also
    /// the anchor when `ca` is not given.
    pub client_ca: Option<LintFile>,
    /// Hosts or IPs clients dial (server purpose).
    pub hosts: Vec<String>,
    /// Server or client certificate.
    pub purpose: Purpose,
    /// The time to check validity at.
    pub now: SystemTime,
    /// Strict or broker start-up.
    pub profile: LintProfile,
    /// Expiring within this is a warning.
    pub expiry_warning: Duration,
}

impl fmt::Debug for LintInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LintInput")
            .field("cert", &self.cert)
            .field("chain", &self.chain)
            .field("key", &self.key)
            .field(
                "key_passphrase",
                &self.key_passphrase.as_ref().map(|_| "<redacted>"),
            )
            .field("ca", &self.ca)
            .field("client_ca", &self.client_ca)
            .field("hosts", &self.hosts)
            .field("purpose", &self.purpose)
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl LintInput {
    /// Nothing to check yet, at `now`, strict, server purpose, 30-day expiry warning.
    pub fn new(now: SystemTime) -> Self {
        Self {
            cert: None,
            chain: None,
            key: None,
            key_passphrase: None,
            ca: None,
            client_ca: None,
            hosts: Vec::new(),
            purpose: Purpose::Server,
            now,
            profile: LintProfile::Strict,
            expiry_warning: Duration::from_secs(30 * 86_400),
        }
    }
}

/// Whether any finding is an error.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// The role a certificate plays, for messages and severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Leaf,
    Chain,
    Anchor,
    ClientCa,
}

struct Linter<'a> {
    input: &'a LintInput,
    findings: Vec<Finding>,
}

/// Checks the files against every rule. Never fails: problems are findings.
pub fn lint(input: &LintInput) -> Vec<Finding> {
    let mut l = Linter {
        input,
        findings: Vec::new(),
    };
    l.run();
    l.findings.sort_by_key(|f| f.severity);
    l.findings
}

impl Linter<'_> {
    fn push(&mut self, code: LintCode, file: &str, message: String, fix: Option<String>) {
        self.push_sev(code, code.severity(), file, message, fix);
    }

    /// An error under the strict profile, a warning when the broker serves it anyway.
    fn push_soft(&mut self, code: LintCode, file: &str, message: String, fix: Option<String>) {
        let severity = match self.input.profile {
            LintProfile::Strict => Severity::Error,
            LintProfile::BrokerStartup => Severity::Warning,
        };
        self.push_sev(code, severity, file, message, fix);
    }

    fn push_sev(
        &mut self,
        code: LintCode,
        severity: Severity,
        file: &str,
        message: String,
        fix: Option<String>,
    ) {
        self.findings.push(Finding {
            code,
            severity,
            file: file.to_owned(),
            message,
            fix,
        });
    }

    fn has_error(&self) -> bool {
        has_errors(&self.findings)
    }

    fn run(&mut self) {
        let input = self.input;
        // The certificate file.
        let mut leaf: Option<CertInfo> = None;
        let mut candidates: Vec<(CertInfo, String)> = Vec::new();
        if let Some(f) = &input.cert {
            let certs = self.read_certs(f, true);
            if certs.len() > 1 {
                self.push_soft(
                    LintCode::CertMultiple,
                    &f.path,
                    format!(
                        "{} holds {} certificates; a certificate file must hold only the leaf (the first is used as the leaf, the others as its chain)",
                        f.path,
                        certs.len()
                    ),
                    Some(format!("moat cert split {} --out <dir>  (writes leaf.pem and an ordered chain.pem)", f.path)),
                );
            }
            let mut it = certs.into_iter();
            leaf = it.next();
            candidates.extend(it.map(|c| (c, f.path.clone())));
        }
        if let Some(f) = &input.chain {
            let certs = self.read_certs(f, false);
            for c in certs {
                if leaf.as_ref().is_some_and(|l| l.der == c.der) {
                    self.push_soft(
                        LintCode::ChainLeafRepeated,
                        &f.path,
                        format!("{} repeats the leaf certificate {}; the chain file must hold only the intermediates", f.path, c.short_name()),
                        Some(format!("remove {} from {} (or: cat the files into one bundle and run moat cert split BUNDLE --out <dir>)", c.short_name(), f.path)),
                    );
                } else {
                    candidates.push((c, f.path.clone()));
                }
            }
        }
        // Anchors.
        let mut anchor_file: Option<&LintFile> = input.ca.as_ref();
        let mut anchors: Vec<CertInfo> = Vec::new();
        if let Some(f) = &input.ca {
            anchors = self.read_certs(f, false);
        }
        let mut client_cas: Vec<CertInfo> = Vec::new();
        if let Some(f) = &input.client_ca {
            client_cas = self.read_certs(f, false);
            if input.ca.is_none() && input.purpose == Purpose::Client {
                anchors = client_cas.clone();
                anchor_file = Some(f);
            }
        }
        // The key.
        let key = input.key.as_ref().and_then(|f| self.read_key(f));

        let Some(leaf) = leaf else { return };
        let cert_path = input
            .cert
            .as_ref()
            .map(|f| f.path.clone())
            .unwrap_or_default();

        self.check_cert(&leaf, &cert_path, Role::Leaf);
        self.check_leaf(&leaf, &cert_path);
        for (c, path) in &candidates {
            self.check_cert(c, path, Role::Chain);
        }
        for c in &anchors {
            let path = anchor_file.map(|f| f.path.clone()).unwrap_or_default();
            self.check_cert(c, &path, Role::Anchor);
        }
        if input.ca.is_some() || input.purpose == Purpose::Server {
            for c in &client_cas {
                let path = input
                    .client_ca
                    .as_ref()
                    .map(|f| f.path.clone())
                    .unwrap_or_default();
                self.check_cert(c, &path, Role::ClientCa);
            }
        }

        if let (Some(key), Some(kf)) = (&key, &input.key) {
            if key.matches_certificate(&leaf.der) == Some(false) {
                self.push(
                    LintCode::KeyMismatch,
                    &kf.path,
                    format!("{} does not belong to the certificate {} in {} ({} key, certificate has a {} key)", kf.path, leaf.short_name(), cert_path, key.algorithm(), leaf.key),
                    Some("use the key that was made with this certificate, or make both again with moat cert server/client".into()),
                );
            }
        }

        // The path from the leaf up.
        let path = self.check_path(&leaf, &cert_path, &candidates, &anchors, anchor_file);

        // The issuer's key algorithm.
        let issuer = path
            .get(1)
            .map(|&i| &candidates[i].0)
            .or_else(|| anchors.iter().find(|a| leaf.issued_by(a)));
        if let Some(issuer) = issuer {
            if issuer.key.family() != leaf.key.family() {
                self.push(
                    LintCode::KeyAlgUnlikeCa,
                    &cert_path,
                    format!("{} has a {} key but its issuer {} has a {} key; some clients offer only the CA's algorithm", cert_path, leaf.key, issuer.short_name(), issuer.key),
                    Some(format!("moat cert {} --ca <ca-dir> {} --key-type {}", self.leaf_cmd(), self.leaf_name_flags(&leaf), key_type_flag(&issuer.key))),
                );
            }
        }

        // Finally what rustls will say, when nothing above explains a failure.
        if !anchors.is_empty()
            && !self.has_error()
            && !self.findings.iter().any(|f| {
                f.code == LintCode::CertV1
                    || f.code == LintCode::NameCnOnly
                    || f.code == LintCode::LeafIsCa
            })
        {
            let chain: Vec<Vec<u8>> = candidates.iter().map(|(c, _)| c.der.clone()).collect();
            let anchor_ders: Vec<Vec<u8>> = anchors.iter().map(|a| a.der.clone()).collect();
            let hosts: Vec<Option<&str>> =
                if input.purpose == Purpose::Server && !input.hosts.is_empty() {
                    input.hosts.iter().map(|h| Some(h.as_str())).collect()
                } else {
                    vec![None]
                };
            for host in hosts {
                if let Err(e) = verify::verify(
                    &leaf.der,
                    &chain,
                    &anchor_ders,
                    host,
                    input.purpose,
                    input.now,
                ) {
                    self.push(
                        LintCode::ChainVerifyFailed,
                        &cert_path,
                        format!(
                            "{}: rustls-webpki rejects the chain: {} ({})",
                            cert_path, e.explanation, e.webpki
                        ),
                        None,
                    );
                    break;
                }
            }
        }
    }

    fn leaf_cmd(&self) -> &'static str {
        match self.input.purpose {
            Purpose::Server => "server",
            Purpose::Client => "client",
        }
    }

    fn leaf_name_flags(&self, leaf: &CertInfo) -> String {
        match self.input.purpose {
            Purpose::Server => {
                let mut hosts: Vec<String> = self.input.hosts.clone();
                for san in &leaf.sans {
                    let h = match san {
                        San::Dns(d) => d.clone(),
                        San::Ip(ip) => ip.to_string(),
                        _ => continue,
                    };
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                }
                if hosts.is_empty() {
                    hosts.extend(leaf.common_names.iter().cloned());
                }
                if hosts.is_empty() {
                    hosts.push("<host>".into());
                }
                hosts
                    .iter()
                    .map(|h| format!("--host {h}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            Purpose::Client => {
                format!(
                    "--cn {}",
                    leaf.common_names.first().map_or("<id>", String::as_str)
                )
            }
        }
    }

    /// Reads the certificates of a file, reporting what is wrong with it.
    fn read_certs(&mut self, f: &LintFile, is_cert_file: bool) -> Vec<CertInfo> {
        let decoded = match decode::decode(&f.data) {
            Ok(d) => d,
            Err(e) => {
                let what = match e {
                    DecodeError::Empty => format!("{} is empty", f.path),
                    DecodeError::BadPem(m) => format!("{} has broken PEM ({m})", f.path),
                    DecodeError::NotPemOrDer => {
                        format!("{} is neither PEM nor DER: not a certificate file", f.path)
                    }
                };
                self.push(LintCode::FileNotPem, &f.path, what, Some("give the PEM file that holds the certificate (-----BEGIN CERTIFICATE-----); moat cert inspect FILE shows what a file holds".into()));
                return Vec::new();
            }
        };
        if decoded.encoding == Encoding::Der {
            self.push_soft(
                LintCode::FileDer,
                &f.path,
                format!(
                    "{} is DER (binary), not PEM; it holds {}",
                    f.path,
                    decoded
                        .items
                        .first()
                        .map_or_else(|| "nothing".into(), |i| i.kind.describe())
                ),
                Some(format!(
                    "moat cert split {} --out <dir>  (writes it as PEM: leaf.pem)",
                    f.path
                )),
            );
        }
        let mut certs = Vec::new();
        for item in &decoded.items {
            match &item.kind {
                Kind::Certificate => match CertInfo::from_der(&item.der) {
                    Ok(c) => certs.push(c),
                    Err(e) => self.push(
                        LintCode::CertUnparseable,
                        &f.path,
                        format!("{}: a CERTIFICATE block cannot be read: {e}", f.path),
                        None,
                    ),
                },
                k => {
                    let secret = if k.is_private_key() {
                        " (a private key in a certificate file may be shared by mistake)"
                    } else {
                        ""
                    };
                    let msg = format!(
                        "{} holds {} where certificates were expected{secret}",
                        f.path,
                        k.describe()
                    );
                    if is_cert_file && k.is_private_key() {
                        self.push_soft(
                            LintCode::PemWrongType,
                            &f.path,
                            msg,
                            Some("keep the key in its own file, given as the key".into()),
                        );
                    } else {
                        self.push(LintCode::PemWrongType, &f.path, msg, Some("give the file that holds the certificate(s); moat cert inspect FILE shows what a file holds".into()));
                    }
                }
            }
        }
        certs
    }

    fn read_key(&mut self, f: &LintFile) -> Option<crate::key::PrivateKey> {
        let decoded = match decode::decode(&f.data) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    LintCode::FileNotPem,
                    &f.path,
                    format!("{} is not a key file: {e}", f.path),
                    Some("give the PEM file that holds the private key".into()),
                );
                return None;
            }
        };
        if decoded.encoding == Encoding::Der {
            self.push_soft(
                LintCode::FileDer,
                &f.path,
                format!("{} is DER (binary), not PEM", f.path),
                Some(format!(
                    "moat cert decrypt-key {} --out <key.pem>  (writes it as PEM)",
                    f.path
                )),
            );
        }
        let mut key_item = None;
        for item in &decoded.items {
            if item.kind.is_private_key() {
                if key_item.is_none() {
                    key_item = Some(item);
                }
            } else if item.kind != Kind::EcParameters {
                self.push(
                    LintCode::PemWrongType,
                    &f.path,
                    format!(
                        "{} holds {} where a private key was expected",
                        f.path,
                        item.kind.describe()
                    ),
                    Some("give the file that holds only the private key".into()),
                );
            }
        }
        let item = key_item?;
        let pass = self.input.key_passphrase.as_ref().map(|p| p.as_slice());
        match crate::key::from_item(item, pass) {
            Ok(k) => Some(k),
            Err(KeyError::Encrypted(how)) => {
                self.push(LintCode::KeyEncrypted, &f.path, format!("{} is encrypted ({how}) and no passphrase was given", f.path), Some(format!("give the passphrase (--key-passphrase-file FILE), or decrypt it once: moat cert decrypt-key {} --out <plain.key>", f.path)));
                None
            }
            Err(KeyError::WrongPassphrase) => {
                self.push(
                    LintCode::KeyWrongPassphrase,
                    &f.path,
                    format!("the passphrase does not decrypt {}", f.path),
                    Some("check the passphrase file (only its first line is used)".into()),
                );
                None
            }
            Err(KeyError::UnsupportedAlgorithm(a)) => {
                self.push(
                    LintCode::KeyUnsupported,
                    &f.path,
                    format!("{}: unsupported key: {a}", f.path),
                    Some("make a new key: moat cert server|client ... --key-type p256".into()),
                );
                None
            }
            Err(e) => {
                self.push(
                    LintCode::KeyUnparseable,
                    &f.path,
                    format!("{}: {e}", f.path),
                    None,
                );
                None
            }
        }
    }

    fn reissue_fix(&self, c: &CertInfo, role: Role) -> String {
        match role {
            Role::Leaf => format!(
                "moat cert {} --ca <ca-dir> {}",
                self.leaf_cmd(),
                self.leaf_name_flags(c)
            ),
            Role::Chain => format!(
                "moat cert ca --intermediate --ca <root-dir> --out <dir> --cn {:?}",
                c.common_names
                    .first()
                    .map_or("Intermediate CA", String::as_str)
            ),
            Role::Anchor | Role::ClientCa => format!(
                "moat cert ca --out <dir> --cn {:?}  (and reissue what it signed)",
                c.common_names.first().map_or("Moat CA", String::as_str)
            ),
        }
    }

    /// Checks every certificate has to pass, whatever its role.
    fn check_cert(&mut self, c: &CertInfo, path: &str, role: Role) {
        let now = unix(self.input.now);
        let name = c.short_name();
        let what = match role {
            Role::Leaf => "certificate",
            Role::Chain => "chain certificate",
            Role::Anchor => "CA certificate",
            Role::ClientCa => "client CA certificate",
        };
        let fix = self.reissue_fix(c, role);
        if c.version != 3 {
            let msg = format!("{path}: {what} {name} is X.509 version {} (not v3): rustls-based clients and brokers refuse it, and it cannot carry subjectAltName or extendedKeyUsage", c.version);
            let fix = Some(format!(
                "{fix}  (openssl x509 -req without -extfile makes v1 certificates)"
            ));
            match role {
                Role::Leaf => self.push_soft(LintCode::CertV1, path, msg, fix),
                Role::Chain => self.push(LintCode::CertV1, path, msg, fix),
                Role::Anchor | Role::ClientCa => {
                    self.push_sev(LintCode::CertV1, Severity::Warning, path, msg, fix)
                }
            }
        }
        if c.not_after_unix < now {
            self.push(
                LintCode::CertExpired,
                path,
                format!("{path}: {what} {name} expired on {}", c.not_after),
                Some(fix.clone()),
            );
        } else if c.not_before_unix > now {
            self.push(LintCode::CertNotYetValid, path, format!("{path}: {what} {name} is not valid until {} (check the clock of the machine that made it, and of this one)", c.not_before), Some(fix.clone()));
        } else if c.not_after_unix - now
            < i64::try_from(self.input.expiry_warning.as_secs()).unwrap_or(i64::MAX)
        {
            let days = (c.not_after_unix - now) / 86_400;
            self.push(
                LintCode::CertExpiresSoon,
                path,
                format!(
                    "{path}: {what} {name} expires on {} (in {days} days)",
                    c.not_after
                ),
                Some(fix.clone()),
            );
        }
        match &c.key {
            KeyAlgorithm::Rsa { bits } if *bits < 2048 => {
                self.push(LintCode::KeyRsaWeak, path, format!("{path}: {what} {name} has an RSA {bits} key; under 2048 bits is no longer safe and rustls refuses it"), Some(format!("{fix} --key-type rsa2048  (or p256)")));
            }
            k if !k.supported_by_rustls() => {
                let sev = if matches!(k, KeyAlgorithm::Ec { curve } if curve == "P-521") {
                    Severity::Warning
                } else {
                    Severity::Error
                };
                self.push_sev(LintCode::KeyUnsupported, sev, path, format!("{path}: {what} {name} has a {k} key, which rustls (ring) and many TLS peers do not support"), Some(format!("{fix} --key-type p256")));
            }
            _ => {}
        }
        if let Some(hash) = c.weak_signature_hash() {
            let code = if hash == "MD5" {
                LintCode::SigMd5
            } else {
                LintCode::SigSha1
            };
            let msg = format!(
                "{path}: {what} {name} is signed with {hash} ({}), which clients reject",
                c.signature_algorithm
            );
            // A root's own signature is never checked by peers.
            if matches!(role, Role::Anchor | Role::ClientCa) && c.self_signed {
                self.push_sev(
                    code,
                    Severity::Warning,
                    path,
                    format!("{msg} (harmless for a trust anchor, but reissue it)"),
                    Some(fix),
                );
            } else {
                self.push(code, path, msg, Some(fix));
            }
        }
        if role != Role::Leaf {
            if c.basic_constraints_ca != Some(true) && c.version == 3 {
                self.push(LintCode::CaNotCa, path, format!("{path}: {what} {name} has no basicConstraints CA:TRUE, so it cannot sign certificates for TLS peers"), Some(self.reissue_fix(c, role)));
            }
            if let Some(ku) = &c.key_usage {
                if !ku.iter().any(|u| u == "keyCertSign") {
                    self.push(
                        LintCode::CaNoKeycertsign,
                        path,
                        format!(
                            "{path}: {what} {name} has keyUsage {} without keyCertSign",
                            ku.join(", ")
                        ),
                        Some(self.reissue_fix(c, role)),
                    );
                }
            }
        }
    }

    /// Checks of the leaf's names and usages.
    fn check_leaf(&mut self, c: &CertInfo, path: &str) {
        let name = c.short_name();
        let fix = self.reissue_fix(c, Role::Leaf);
        if c.is_ca() {
            self.push_soft(LintCode::LeafIsCa, path, format!("{path}: the certificate {name} is a CA certificate (CA:TRUE); rustls refuses a CA as a server or client certificate"), Some(fix.clone()));
        }
        let (needed, code) = match self.input.purpose {
            Purpose::Server => ("serverAuth", LintCode::EkuNoServerAuth),
            Purpose::Client => ("clientAuth", LintCode::EkuNoClientAuth),
        };
        match &c.extended_key_usage {
            Some(eku) => {
                let ok = eku.any
                    || if needed == "serverAuth" {
                        eku.server_auth
                    } else {
                        eku.client_auth
                    };
                if !ok {
                    self.push(code, path, format!("{path}: {name} has extendedKeyUsage without {needed}, so peers refuse it as a {} certificate", self.leaf_cmd()), Some(fix.clone()));
                }
            }
            None if c.version == 3 => {
                self.push_sev(code, Severity::Warning, path, format!("{path}: {name} has no extendedKeyUsage; add {needed} (most peers accept its absence, some do not)"), Some(fix.clone()));
            }
            None => {}
        }
        if self.input.purpose != Purpose::Server {
            return;
        }
        if !c.has_san
            || c.sans
                .iter()
                .all(|s| !matches!(s, San::Dns(_) | San::Ip(_)))
        {
            let cn = c
                .common_names
                .first()
                .map_or("(none)".to_owned(), Clone::clone);
            self.push_soft(LintCode::NameCnOnly, path, format!("{path}: {name} has no subjectAltName, only the CN {cn:?}; modern clients (rustls, Go, browsers, recent OpenSSL with hostname checks) ignore the CN"), Some(fix.clone()));
        }
        for host in &self.input.hosts {
            if !covers(c, host) {
                let names: Vec<String> = if c.has_san {
                    c.sans.iter().map(ToString::to_string).collect()
                } else {
                    c.common_names.iter().map(|n| format!("CN:{n}")).collect()
                };
                let covered_by_cn_only =
                    !c.has_san && c.common_names.iter().any(|cn| name_matches(cn, host));
                if covered_by_cn_only {
                    continue; // name-cn-only already says it.
                }
                self.push(LintCode::NameMismatch, path, format!("{path}: {name} does not cover the host {host:?} clients dial (it names {})", if names.is_empty() { "nothing".into() } else { names.join(", ") }), Some(fix.clone()));
            }
        }
    }

    /// Follows the leaf's issuers through the chain candidates; reports order, gaps, anchoring.
    /// Returns the path as indexes: 0 for the leaf, i+1 for `candidates[i]`... shifted so that
    /// `path[k]` for k >= 1 indexes `candidates`.
    fn check_path(
        &mut self,
        leaf: &CertInfo,
        cert_path: &str,
        candidates: &[(CertInfo, String)],
        anchors: &[CertInfo],
        anchor_file: Option<&LintFile>,
    ) -> Vec<usize> {
        let mut path: Vec<usize> = vec![usize::MAX];
        let mut cur = leaf;
        let mut used = vec![false; candidates.len()];
        while !cur.self_signed {
            // Stop at the anchor: the chain may end with an intermediate the CA file holds.
            if anchors.iter().any(|a| a.der == cur.der) {
                break;
            }
            let Some(j) =
                (0..candidates.len()).find(|&j| !used[j] && cur.issued_by(&candidates[j].0))
            else {
                break;
            };
            used[j] = true;
            path.push(j);
            cur = &candidates[j].0;
        }
        let on_path: Vec<usize> = path[1..].to_vec();
        let chain_file = self
            .input
            .chain
            .as_ref()
            .map_or_else(|| cert_path.to_owned(), |f| f.path.clone());
        if on_path.windows(2).any(|w| w[0] > w[1]) {
            let names: Vec<String> = on_path
                .iter()
                .map(|&j| candidates[j].0.short_name())
                .collect();
            self.push_soft(
                LintCode::ChainOrder,
                &chain_file,
                format!("{chain_file}: the chain is out of order; it must be {} (each certificate followed by its issuer)", names.join(" then ")),
                Some(format!("cat {cert_path} {chain_file} > bundle.pem && moat cert split bundle.pem --out <dir>  (writes an ordered chain.pem)")),
            );
        }
        for (j, (c, p)) in candidates.iter().enumerate() {
            if !used[j] && !anchors.iter().any(|a| a.der == c.der) {
                self.push(
                    LintCode::ChainUnrelated,
                    p,
                    format!(
                        "{p}: {} is not on the path of {} (it issued none of the chain)",
                        c.short_name(),
                        leaf.short_name()
                    ),
                    Some(format!("remove it from {p}")),
                );
            }
        }
        if let Some(&last) = on_path.last() {
            let (c, p) = &candidates[last];
            if c.self_signed {
                self.push(LintCode::ChainHasRoot, p, format!("{p}: the chain includes the root {} (harmless; clients must already have it)", c.short_name()), None);
            }
        }
        let top = on_path.last().map_or(leaf, |&j| &candidates[j].0);
        let Some(af) = anchor_file else { return path };
        if anchors.is_empty() {
            return path;
        }
        let anchored = anchors.iter().any(|a| {
            a.der == top.der
                || (a.subject_raw == top.subject_raw && a.public_key_bits == top.public_key_bits)
                || top.issued_by(a)
        });
        if anchored {
            return path;
        }
        let ca_names: Vec<String> = anchors.iter().map(CertInfo::short_name).collect();
        let same_name = anchors.iter().any(|a| a.subject_raw == top.issuer_raw);
        let not_anchored_fix = Some(format!(
            "give the CA that issued it (issuer {}), or reissue: moat cert {} --ca <dir of {}> {}",
            top.issuer,
            self.leaf_cmd(),
            af.path,
            self.leaf_name_flags(leaf)
        ));
        if top.self_signed {
            self.push(
                LintCode::ChainNotAnchored,
                cert_path,
                format!(
                    "{cert_path}: the chain ends at the root {} which is not the CA in {} ({})",
                    top.short_name(),
                    af.path,
                    ca_names.join(", ")
                ),
                not_anchored_fix,
            );
        } else if same_name {
            self.push(LintCode::ChainNotAnchored, cert_path, format!("{cert_path}: {} names {} as issuer but is not signed by the CA in {} (another CA with the same name, e.g. one made again)", top.short_name(), top.issuer, af.path), not_anchored_fix);
        } else {
            self.push(
                LintCode::ChainIncomplete,
                &chain_file,
                format!("{chain_file}: the issuer of {} ({}) is missing: neither the chain nor {} holds it", top.short_name(), top.issuer, af.path),
                Some(format!("add the intermediate CA certificate {} to the chain file (moat cert split BUNDLE --out <dir> orders a full bundle)", top.issuer)),
            );
            self.push(
                LintCode::ChainNotAnchored,
                cert_path,
                format!(
                    "{cert_path}: {} does not chain to the CA in {} ({}); its issuer is {}",
                    leaf.short_name(),
                    af.path,
                    ca_names.join(", "),
                    top.issuer
                ),
                not_anchored_fix,
            );
        }
        path
    }
}

fn key_type_flag(k: &KeyAlgorithm) -> &'static str {
    match k {
        KeyAlgorithm::Rsa { bits } if *bits >= 4096 => "rsa4096",
        KeyAlgorithm::Rsa { bits } if *bits >= 3072 => "rsa3072",
        KeyAlgorithm::Rsa { .. } => "rsa2048",
        KeyAlgorithm::Ec { curve } if curve == "P-384" => "p384",
        KeyAlgorithm::Ed25519 => "ed25519",
        _ => "p256",
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Whether the certificate's subjectAltName (or, without one, its CN) covers `host`.
pub fn covers(c: &CertInfo, host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return c.sans.iter().any(|s| matches!(s, San::Ip(a) if *a == ip));
    }
    if c.has_san {
        c.sans
            .iter()
            .any(|s| matches!(s, San::Dns(d) if name_matches(d, h)))
    } else {
        false
    }
}

/// DNS name matching with a left-most `*` label (RFC 6125), case-insensitive.
fn name_matches(pattern: &str, host: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = p.strip_prefix("*.") {
        return match h.split_once('.') {
            Some((first, tail)) => !first.is_empty() && tail == rest,
            None => false,
        };
    }
    p == h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("Broker.Local", "broker.local"));
    }
}
