//! What a certificate says: subject, SANs, issuer, validity, key, signature, extensions,
//! fingerprint; and, for a bundle, which certificate signed which.

use std::net::IpAddr;
use std::path::Path;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::objects::{oid2sn, oid_registry};

use crate::decode::{self, DecodeError, Encoding, Kind};
use crate::key::KeyAlgorithm;

/// Why bytes are not a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertParseError {
    /// The parser refused the bytes (its message).
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
    /// A certificate followed by this many other bytes.
    #[error("{0} bytes of junk after the certificate")]
    TrailingData(usize),
}

/// A name in the subjectAltName extension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum San {
    /// A DNS name (maybe a wildcard).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
    /// An e-mail address.
    Email(String),
    /// A URI.
    Uri(String),
    /// Another kind of name, described.
    Other(String),
}

impl San {
    /// The bare name or address (`broker.local`, `127.0.0.1`); other kinds as displayed.
    pub fn value(&self) -> String {
        match self {
            Self::Dns(d) => d.clone(),
            Self::Ip(ip) => ip.to_string(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(d) => write!(f, "DNS:{d}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Email(e) => write!(f, "email:{e}"),
            Self::Uri(u) => write!(f, "URI:{u}"),
            Self::Other(o) => f.write_str(o),
        }
    }
}

/// One extension, described.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Extension {
    /// Its short name (e.g. "basicConstraints") or OID.
    pub name: String,
    /// The OID.
    pub oid: String,
    /// Whether it is critical.
    pub critical: bool,
    /// Its value in words.
    pub value: String,
}

/// The extended key usages.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Eku {
    /// id-kp-serverAuth.
    pub server_auth: bool,
    /// id-kp-clientAuth.
    pub client_auth: bool,
    /// anyExtendedKeyUsage.
    pub any: bool,
}

/// Everything about one certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// Subject DN, e.g. "CN=broker.local".
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// The subject's common names.
    pub common_names: Vec<String>,
    /// X.509 version: 1, 2 or 3.
    pub version: u32,
    /// Serial number, hex with colons.
    pub serial: String,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Start of validity, Unix seconds.
    pub not_before_unix: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix: i64,
    /// The subject's key.
    pub key: KeyAlgorithm,
    /// Signature algorithm name, e.g. "sha256WithRSAEncryption".
    pub signature_algorithm: String,
    /// Signature algorithm OID.
    pub signature_algorithm_oid: String,
    /// subjectAltName entries (empty when there is no such extension).
    pub sans: Vec<San>,
    /// Whether the subjectAltName extension is present.
    pub has_san: bool,
    /// basicConstraints: `Some(ca)` when present.
    pub basic_constraints_ca: Option<bool>,
    /// keyUsage names when the extension is present.
    pub key_usage: Option<Vec<String>>,
    /// extendedKeyUsage when the extension is present.
    pub extended_key_usage: Option<Eku>,
    /// subjectKeyIdentifier, hex.
    pub subject_key_id: Option<String>,
    /// authorityKeyIdentifier's key identifier, hex.
    pub authority_key_id: Option<String>,
    /// All extensions.
    pub extensions: Vec<Extension>,
    /// SHA-256 of the DER, hex with colons.
    pub sha256_fingerprint: String,
    /// Subject equals issuer.
    pub self_issued: bool,
    /// Subject equals issuer and the certificate's own key verifies its signature.
    pub self_signed: bool,
    #[serde(skip)]
    pub(crate) subject_raw: Vec<u8>,
    #[serde(skip)]
    pub(crate) issuer_raw: Vec<u8>,
    #[serde(skip)]
    pub(crate) public_key_bits: Vec<u8>,
    #[serde(skip)]
    pub(crate) der: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate.
    ///
    /// # Errors
    /// [`CertParseError`] when the bytes are not exactly one X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertParseError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertParseError::NotX509(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertParseError::TrailingData(rest.len()));
        }
        Ok(Self::from_parsed(&cert, der))
    }

    fn from_parsed(cert: &X509Certificate<'_>, der: &[u8]) -> Self {
        let reg = oid_registry();
        let spki = cert.public_key();
        let rsa_bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        let key = KeyAlgorithm::from_spki_parts(
            &spki.algorithm.algorithm.to_id_string(),
            curve.as_deref(),
            rsa_bits,
        );
        let sig_oid = cert.signature_algorithm.algorithm.to_id_string();
        let signature_algorithm = oid2sn(&cert.signature_algorithm.algorithm, reg)
            .map(str::to_owned)
            .unwrap_or_else(|_| sig_oid.clone());

        let mut sans = Vec::new();
        let mut has_san = false;
        let mut basic_constraints_ca = None;
        let mut key_usage = None;
        let mut extended_key_usage = None;
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        let mut extensions = Vec::new();
        for ext in cert.extensions() {
            let oid = ext.oid.to_id_string();
            let name = oid2sn(&ext.oid, reg)
                .map(str::to_owned)
                .unwrap_or_else(|_| oid.clone());
            let value = match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    has_san = true;
                    sans = san.general_names.iter().map(general_name).collect();
                    sans.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                ParsedExtension::BasicConstraints(bc) => {
                    basic_constraints_ca = Some(bc.ca);
                    match bc.path_len_constraint {
                        Some(n) => format!("CA:{}, pathlen:{n}", upper(bc.ca)),
                        None => format!("CA:{}", upper(bc.ca)),
                    }
                }
                ParsedExtension::KeyUsage(ku) => {
                    let names = key_usage_names(ku.flags);
                    let text = names.join(", ");
                    key_usage = Some(names);
                    text
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    extended_key_usage = Some(Eku {
                        server_auth: eku.server_auth,
                        client_auth: eku.client_auth,
                        any: eku.any,
                    });
                    let mut v = Vec::new();
                    for (on, n) in [
                        (eku.server_auth, "serverAuth"),
                        (eku.client_auth, "clientAuth"),
                        (eku.any, "anyExtendedKeyUsage"),
                        (eku.code_signing, "codeSigning"),
                        (eku.email_protection, "emailProtection"),
                        (eku.time_stamping, "timeStamping"),
                        (eku.ocsp_signing, "OCSPSigning"),
                    ] {
                        if on {
                            v.push(n.to_owned());
                        }
                    }
                    v.extend(eku.other.iter().map(|o| o.to_id_string()));
                    v.join(", ")
                }
                ParsedExtension::SubjectKeyIdentifier(kid) => {
                    let h = hex_colon(kid.0);
                    subject_key_id = Some(h.clone());
                    h
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => match &aki.key_identifier {
                    Some(kid) => {
                        let h = hex_colon(kid.0);
                        authority_key_id = Some(h.clone());
                        format!("keyid:{h}")
                    }
                    None => "(no key identifier)".into(),
                },
                ParsedExtension::UnsupportedExtension { .. } => {
                    format!("{} bytes", ext.value.len())
                }
                ParsedExtension::ParseError { error } => format!("unparseable: {error}"),
                other => format!("{other:?}").chars().take(200).collect(),
            };
            extensions.push(Extension {
                name,
                oid,
                critical: ext.critical,
                value,
            });
        }

        let nb = cert.validity().not_before;
        let na = cert.validity().not_after;
        let subject_raw = cert.subject().as_raw().to_vec();
        let issuer_raw = cert.issuer().as_raw().to_vec();
        let self_issued = subject_raw == issuer_raw;
        let self_signed = self_issued && cert.verify_signature(None).is_ok();
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_names: cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
                .collect(),
            version: cert.version().0 + 1,
            serial: cert.raw_serial_as_string(),
            not_before: rfc3339(nb.timestamp()),
            not_after: rfc3339(na.timestamp()),
            not_before_unix: nb.timestamp(),
            not_after_unix: na.timestamp(),
            key,
            signature_algorithm,
            signature_algorithm_oid: sig_oid,
            sans,
            has_san,
            basic_constraints_ca,
            key_usage,
            extended_key_usage,
            subject_key_id,
            authority_key_id,
            extensions,
            sha256_fingerprint: hex_colon(
                ring::digest::digest(&ring::digest::SHA256, der).as_ref(),
            ),
            self_issued,
            self_signed,
            subject_raw,
            issuer_raw,
            public_key_bits: spki.subject_public_key.data.to_vec(),
            der: der.to_vec(),
        }
    }

    /// The certificate's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether this is a CA certificate (basicConstraints CA:TRUE).
    pub fn is_ca(&self) -> bool {
        self.basic_constraints_ca == Some(true)
    }

    /// A short name for messages: the first CN, or the subject.
    pub fn short_name(&self) -> String {
        match self.common_names.first() {
            Some(cn) => format!("CN={cn}"),
            None if self.subject.is_empty() => "(empty subject)".into(),
            None => self.subject.clone(),
        }
    }

    /// A short name of the issuer for messages: its CN, or the whole issuer name.
    pub fn issuer_short_name(&self) -> String {
        let cn = self
            .issuer
            .split(',')
            .map(str::trim)
            .find_map(|part| part.strip_prefix("CN="));
        match cn {
            Some(cn) => format!("CN={cn}"),
            None => self.issuer.clone(),
        }
    }

    /// Whether `issuer` issued this certificate: the names chain and, when the algorithm is
    /// one ring checks, the signature verifies.
    pub fn issued_by(&self, issuer: &Self) -> bool {
        if self.issuer_raw != issuer.subject_raw {
            return false;
        }
        match signature_check(&self.der, &issuer.der) {
            Some(ok) => ok,
            None => match (&self.authority_key_id, &issuer.subject_key_id) {
                (Some(a), Some(s)) => a == s,
                _ => true,
            },
        }
    }

    /// Whether the signature uses SHA-1 or MD5.
    pub fn weak_signature_hash(&self) -> Option<&'static str> {
        match self.signature_algorithm_oid.as_str() {
            "1.2.840.113549.1.1.4" | "1.2.840.113549.1.1.3" | "1.2.840.113549.1.1.2" => Some("MD5"),
            "1.2.840.113549.1.1.5"
            | "1.2.840.10045.4.1"
            | "1.2.840.10040.4.3"
            | "1.3.14.3.2.29" => Some("SHA-1"),
            _ => None,
        }
    }
}

/// `Some(true)` when `issuer_der`'s key verifies `child_der`'s signature, `Some(false)` when
/// it does not, `None` when the algorithm is one ring cannot check.
fn signature_check(child_der: &[u8], issuer_der: &[u8]) -> Option<bool> {
    let (_, child) = x509_parser::parse_x509_certificate(child_der).ok()?;
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der).ok()?;
    match child.verify_signature(Some(issuer.public_key())) {
        Ok(()) => Some(true),
        Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => None,
        Err(_) => Some(false),
    }
}

fn upper(b: bool) -> &'static str {
    if b {
        "TRUE"
    } else {
        "FALSE"
    }
}

fn key_usage_names(flags: u16) -> Vec<String> {
    const NAMES: [&str; 9] = [
        "digitalSignature",
        "nonRepudiation",
        "keyEncipherment",
        "dataEncipherment",
        "keyAgreement",
        "keyCertSign",
        "cRLSign",
        "encipherOnly",
        "decipherOnly",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .map(|(_, n)| (*n).to_owned())
        .collect()
}

fn general_name(gn: &GeneralName<'_>) -> San {
    match gn {
        GeneralName::DNSName(d) => San::Dns((*d).to_owned()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
            16 => San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
            _ => San::Other(format!("IP:{}", hex_colon(b))),
        },
        GeneralName::RFC822Name(e) => San::Email((*e).to_owned()),
        GeneralName::URI(u) => San::Uri((*u).to_owned()),
        other => San::Other(format!("{other:?}")),
    }
}

/// Hex with colons, upper case (as `openssl x509 -fingerprint` prints).
pub fn hex_colon(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A DER distinguished name (as in a TLS CertificateRequest's list of accepted CAs) in words:
/// `CN=...` when it has a common name, else the whole name. `None` when it cannot be parsed.
pub fn describe_name(dn: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, name) = x509_parser::x509::X509Name::from_der(dn).ok()?;
    let cn = name
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok().map(str::to_owned));
    Some(match cn {
        Some(cn) => format!("CN={cn}"),
        None => name.to_string(),
    })
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// One object of an inspected file.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Entry {
    /// A certificate, with its position and the position of the one in the file that signed it.
    Certificate {
        /// Position among the file's objects.
        index: usize,
        /// The certificate.
        #[serde(flatten)]
        info: Box<CertInfo>,
        /// Index of the certificate in this file that issued it.
        signed_by: Option<usize>,
    },
    /// A private key (never its value).
    PrivateKey {
        /// Position among the file's objects.
        index: usize,
        /// The format.
        format: Kind,
        /// The algorithm, when the key is not encrypted.
        algorithm: Option<KeyAlgorithm>,
        /// Whether it is encrypted.
        encrypted: bool,
    },
    /// Anything else.
    Other {
        /// Position among the file's objects.
        index: usize,
        /// What it is.
        what: String,
        /// Why it could not be read, if it could not.
        error: Option<String>,
    },
}

/// What one file holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// PEM or DER.
    pub encoding: Encoding,
    /// The objects.
    pub entries: Vec<Entry>,
    /// For a bundle: the chain in order, leaf first, as indexes (empty for one certificate).
    pub chain_order: Vec<usize>,
}

/// Inspects a file's bytes.
///
/// # Errors
/// [`DecodeError`] when nothing in the file can be read.
pub fn inspect_bytes(path: &Path, data: &[u8]) -> Result<FileReport, DecodeError> {
    let decoded = decode::decode(data)?;
    let mut entries = Vec::new();
    let mut certs: Vec<(usize, CertInfo)> = Vec::new();
    for (index, item) in decoded.items.iter().enumerate() {
        match &item.kind {
            Kind::Certificate => match CertInfo::from_der(&item.der) {
                Ok(info) => certs.push((index, info)),
                Err(e) => entries.push(Entry::Other {
                    index,
                    what: "certificate".into(),
                    error: Some(e.to_string()),
                }),
            },
            k if k.is_private_key() => {
                let encrypted = item.is_legacy_encrypted() || *k == Kind::EncryptedPkcs8Key;
                let algorithm = if encrypted {
                    None
                } else {
                    crate::key::from_item(item, None)
                        .ok()
                        .map(|key| key.algorithm().clone())
                };
                entries.push(Entry::PrivateKey {
                    index,
                    format: k.clone(),
                    algorithm,
                    encrypted,
                });
            }
            other => entries.push(Entry::Other {
                index,
                what: other.describe(),
                error: None,
            }),
        }
    }
    let infos: Vec<CertInfo> = certs.iter().map(|(_, c)| c.clone()).collect();
    let order = if infos.len() > 1 {
        crate::split::order(&infos)
            .into_iter()
            .map(|i| certs[i].0)
            .collect()
    } else {
        Vec::new()
    };
    for (i, (index, info)) in certs.iter().enumerate() {
        let signed_by = infos
            .iter()
            .enumerate()
            .find(|(j, other)| *j != i && info.issued_by(other))
            .map(|(j, _)| certs[j].0)
            .or_else(|| info.self_signed.then_some(*index));
        entries.push(Entry::Certificate {
            index: *index,
            info: Box::new(info.clone()),
            signed_by,
        });
    }
    entries.sort_by_key(|e| match e {
        Entry::Certificate { index, .. }
        | Entry::PrivateKey { index, .. }
        | Entry::Other { index, .. } => *index,
    });
    Ok(FileReport {
        path: path.display().to_string(),
        encoding: decoded.encoding,
        entries,
        chain_order: order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_in_words() {
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "Test CA" } } }
        let dn = [
            0x30, 0x12, 0x31, 0x10, 0x30, 0x0e, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x07, b'T',
            b'e', b's', b't', b' ', b'C', b'A',
        ];
        assert_eq!(describe_name(&dn).as_deref(), Some("CN=Test CA"));
        assert_eq!(describe_name(&dn[..5]), None);
    }
}
