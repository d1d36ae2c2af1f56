//! Making certificates: a root CA, an intermediate CA, server and client certificates.
//!
//! Every certificate is X.509 v3 with a random 128-bit serial, subject and authority key
//! identifiers, and the extensions its role needs:
//! - CA: basicConstraints CA:TRUE (critical), keyUsage keyCertSign + cRLSign (+ digitalSignature).
//! - server: CN = first host, every host in the subjectAltName (DNS name or IP address),
//!   extendedKeyUsage serverAuth, basicConstraints CA:FALSE.
//! - client: CN = the device identity, extendedKeyUsage clientAuth, CA:FALSE.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;

use crate::error::{CaError, Error, InvalidParameter};
use crate::inspect::CertInfo;
use crate::key::{KeyAlgorithm, PrivateKey};

/// The key types `moat cert` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on P-256 (the default).
    #[default]
    P256,
    /// ECDSA on P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

impl KeyType {
    /// All of them, in flag order.
    pub const ALL: [Self; 6] = [
        Self::P256,
        Self::P384,
        Self::Ed25519,
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
    ];

    /// The flag value, e.g. "p256".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Ed25519 => "ed25519",
            Self::Rsa2048 => "rsa2048",
            Self::Rsa3072 => "rsa3072",
            Self::Rsa4096 => "rsa4096",
        }
    }

    /// The key type of an existing key, when it is one of these.
    pub fn of(alg: &KeyAlgorithm) -> Option<Self> {
        match alg {
            KeyAlgorithm::Ec { curve } if curve == "P-256" => Some(Self::P256),
            KeyAlgorithm::Ec { curve } if curve == "P-384" => Some(Self::P384),
            KeyAlgorithm::Ed25519 => Some(Self::Ed25519),
            KeyAlgorithm::Rsa { bits: 2048 } => Some(Self::Rsa2048),
            KeyAlgorithm::Rsa { bits: 3072 } => Some(Self::Rsa3072),
            KeyAlgorithm::Rsa { bits: 4096 } => Some(Self::Rsa4096),
            _ => None,
        }
    }

    /// Generates a new key.
    ///
    /// # Errors
    /// [`Error::Generate`] if the system's random source fails.
    pub fn generate(self) -> Result<PrivateKey, Error> {
        let der = match self {
            Self::P256 => {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_der()
            }
            Self::P384 => {
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?.serialize_der()
            }
            Self::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?.serialize_der(),
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => {
                use rsa::pkcs8::EncodePrivateKey;
                let bits = match self {
                    Self::Rsa2048 => 2048,
                    Self::Rsa3072 => 3072,
                    _ => 4096,
                };
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                    .map_err(|e| Error::generate("RSA key generation", e))?;
                key.to_pkcs8_der()
                    .map_err(|e| Error::generate("RSA key encoding", e))?
                    .as_bytes()
                    .to_vec()
            }
        };
        PrivateKey::from_pkcs8_der(&der).map_err(|e| Error::generate("key generation", e))
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownKeyType(s.to_owned()))
    }
}

/// A key type name that is none of [`KeyType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type {0:?} (one of p256, p384, ed25519, rsa2048, rsa3072, rsa4096)")]
pub struct UnknownKeyType(pub String);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: SystemTime,
    /// End.
    pub not_after: SystemTime,
}

impl Validity {
    /// From five minutes before `now` (for clock skew) to `days` days after `now`.
    pub fn days_from(now: SystemTime, days: u32) -> Self {
        Self {
            not_before: now - Duration::from_secs(300),
            not_after: now + Duration::from_secs(u64::from(days) * 86_400),
        }
    }
}

/// A certificate with its new private key.
#[derive(Debug, Clone)]
pub struct Certified {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Its private key.
    pub key: PrivateKey,
}

impl Certified {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        crate::decode::cert_pem(&self.cert_der)
    }
}

/// A CA that can sign: its certificate, key, and the certificates above it.
#[derive(Debug, Clone)]
pub struct Ca {
    /// The CA's certificate, DER.
    pub cert_der: Vec<u8>,
    /// The CA's key.
    pub key: PrivateKey,
    /// For an intermediate: the intermediates above it (not the root), nearest first.
    pub chain: Vec<Vec<u8>>,
    /// For an intermediate: the root, when known.
    pub root: Option<Vec<u8>>,
}

impl Ca {
    /// Checks that the key belongs to the certificate and that the certificate is a CA.
    ///
    /// # Errors
    /// [`CaError`] naming the problem.
    pub fn check(&self) -> Result<CertInfo, CaError> {
        let info = CertInfo::from_der(&self.cert_der)?;
        if self.key.matches_certificate(&self.cert_der) != Some(true) {
            return Err(CaError::KeyMismatch(info.short_name()));
        }
        if !info.is_ca() {
            return Err(CaError::NotCa(info.short_name()));
        }
        Ok(info)
    }

    /// Whether this CA is an intermediate (not self-signed).
    pub fn is_intermediate(&self) -> bool {
        CertInfo::from_der(&self.cert_der)
            .map(|i| !i.self_signed)
            .unwrap_or(false)
    }

    /// What a server or client signed by this CA sends after its own certificate:
    /// this CA (when it is an intermediate) and the intermediates above it.
    pub fn presented_chain(&self) -> Vec<Vec<u8>> {
        if !self.is_intermediate() {
            return Vec::new();
        }
        let mut v = vec![self.cert_der.clone()];
        v.extend(self.chain.iter().cloned());
        v
    }

    /// The trust anchor clients and servers need: the root when known, else this CA.
    pub fn anchor(&self) -> &[u8] {
        self.root.as_deref().unwrap_or(&self.cert_der)
    }

    fn sign(&self, params: &CertificateParams, key: &PrivateKey) -> Result<Vec<u8>, Error> {
        self.check()
            .map_err(|source| Error::Ca { dir: None, source })?;
        let issuer_key = self.key.to_rcgen().map_err(|source| Error::Key {
            path: "CA key".into(),
            source,
        })?;
        let issuer = rcgen::Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            issuer_key,
        )?;
        let subject_key = key.to_rcgen().map_err(|source| Error::Key {
            path: "new key".into(),
            source,
        })?;
        Ok(params.signed_by(&subject_key, &issuer)?.der().to_vec())
    }
}

/// Options for a CA.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Common name.
    pub common_name: String,
    /// Key type.
    pub key_type: KeyType,
    /// Validity.
    pub validity: Validity,
}

/// Options for a server certificate.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Host names and IP addresses; the first is the CN.
    pub hosts: Vec<String>,
    /// Key type.
    pub key_type: KeyType,
    /// Validity.
    pub validity: Validity,
}

/// Options for a client certificate.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The device identity: the CN.
    pub common_name: String,
    /// Key type.
    pub key_type: KeyType,
    /// Validity.
    pub validity: Validity,
}

/// Makes a self-signed root CA.
///
/// # Errors
/// [`Error::Invalid`] for a bad name, [`Error::Generate`] if signing fails.
pub fn root_ca(opts: &CaOptions) -> Result<Certified, Error> {
    let params = ca_params(opts, BasicConstraints::Unconstrained)?;
    let key = opts.key_type.generate()?;
    let kp = key.to_rcgen().map_err(|source| Error::Key {
        path: "new key".into(),
        source,
    })?;
    let cert = params.self_signed(&kp)?;
    Ok(Certified {
        cert_der: cert.der().to_vec(),
        key,
    })
}

/// Makes an intermediate CA signed by `issuer` (which may itself be an intermediate).
///
/// # Errors
/// As [`root_ca`], or when `issuer` is not a usable CA.
pub fn intermediate_ca(opts: &CaOptions, issuer: &Ca) -> Result<Certified, Error> {
    let mut params = ca_params(opts, BasicConstraints::Unconstrained)?;
    params.use_authority_key_identifier_extension = true;
    let key = opts.key_type.generate()?;
    let cert_der = issuer.sign(&params, &key)?;
    Ok(Certified { cert_der, key })
}

/// Makes a server certificate.
///
/// # Errors
/// [`Error::Invalid`] when there is no host or a host is neither a DNS name nor an IP address.
pub fn server(opts: &ServerOptions, issuer: &Ca) -> Result<Certified, Error> {
    let first = opts.hosts.first().ok_or(InvalidParameter::NoHost)?;
    let mut params = leaf_params(&opts.validity)?;
    let mut sans = Vec::new();
    for host in &opts.hosts {
        let san = parse_host(host)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    params.subject_alt_names = sans;
    params
        .distinguished_name
        .push(DnType::CommonName, clean_host(first));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = opts.key_type.generate()?;
    set_leaf_key_usage(&mut params, &key);
    let cert_der = issuer.sign(&params, &key)?;
    Ok(Certified { cert_der, key })
}

/// Makes a client certificate.
///
/// # Errors
/// [`Error::Invalid`] for an empty identity.
pub fn client(opts: &ClientOptions, issuer: &Ca) -> Result<Certified, Error> {
    check_cn(&opts.common_name)?;
    let mut params = leaf_params(&opts.validity)?;
    params
        .distinguished_name
        .push(DnType::CommonName, opts.common_name.as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = opts.key_type.generate()?;
    set_leaf_key_usage(&mut params, &key);
    let cert_der = issuer.sign(&params, &key)?;
    Ok(Certified { cert_der, key })
}

fn ca_params(opts: &CaOptions, constraint: BasicConstraints) -> Result<CertificateParams, Error> {
    check_cn(&opts.common_name)?;
    let mut params = base_params(&opts.validity)?;
    params
        .distinguished_name
        .push(DnType::CommonName, opts.common_name.as_str());
    params.is_ca = IsCa::Ca(constraint);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn leaf_params(validity: &Validity) -> Result<CertificateParams, Error> {
    let mut params = base_params(validity)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn set_leaf_key_usage(params: &mut CertificateParams, key: &PrivateKey) {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if matches!(key.algorithm(), KeyAlgorithm::Rsa { .. }) {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
}

fn base_params(validity: &Validity) -> Result<CertificateParams, Error> {
    if validity.not_after <= validity.not_before {
        return Err(InvalidParameter::Validity.into());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        Error::generate(
            "drawing a serial number",
            "the system's random source failed",
        )
    })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn check_cn(cn: &str) -> Result<(), Error> {
    if cn.trim().is_empty() {
        return Err(InvalidParameter::EmptyCommonName.into());
    }
    if cn.len() > 64 {
        return Err(InvalidParameter::LongCommonName(cn.to_owned()).into());
    }
    Ok(())
}

fn clean_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// A `--host` value as a subjectAltName: an IP address, or a DNS name (a leading `*.` wildcard
/// is allowed).
///
/// # Errors
/// [`Error::Invalid`] when it is neither.
pub fn parse_host(host: &str) -> Result<SanType, Error> {
    let h = clean_host(host);
    if let Ok(ip) = IpAddr::from_str(&h) {
        return Ok(SanType::IpAddress(ip));
    }
    let base = h.strip_prefix("*.").unwrap_or(&h);
    let valid = !base.is_empty()
        && base.len() <= 253
        && base.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(InvalidParameter::Host(host.to_owned()).into());
    }
    let name = h
        .clone()
        .try_into()
        .map_err(|_| InvalidParameter::Host(host.to_owned()))?;
    Ok(SanType::DnsName(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse() {
        assert!(matches!(
            parse_host("127.0.0.1").unwrap(),
            SanType::IpAddress(_)
        ));
        assert!(matches!(
            parse_host("[::1]").unwrap(),
            SanType::IpAddress(_)
        ));
        assert!(matches!(
            parse_host("Broker.Local").unwrap(),
            SanType::DnsName(_)
        ));
        assert!(matches!(
            parse_host("*.example.com").unwrap(),
            SanType::DnsName(_)
        ));
        assert!(parse_host("bad host").is_err());
        assert!(parse_host("").is_err());
    }

    #[test]
    fn key_type_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>().unwrap(), k);
        }
    }
}
