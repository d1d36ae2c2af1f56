//! What is in a file: PEM blocks or one DER object, and which kind of object each is.
//!
//! This is the first step of every command and every lint: it never fails on bad input, it
//! says what it found ([`Decoded`]) or why nothing usable is there ([`DecodeError`]).

use std::fmt;

/// How a file was encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Text, `-----BEGIN ...-----` blocks.
    Pem,
    /// One binary DER object.
    Der,
}

/// The kind of one object in a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An X.509 certificate (`CERTIFICATE`).
    Certificate,
    /// An unencrypted PKCS#8 private key (`PRIVATE KEY`).
    Pkcs8Key,
    /// A PKCS#1 RSA private key (`RSA PRIVATE KEY`), possibly legacy-encrypted.
    Pkcs1Key,
    /// A SEC1 EC private key (`EC PRIVATE KEY`), possibly legacy-encrypted.
    Sec1Key,
    /// An encrypted PKCS#8 private key (`ENCRYPTED PRIVATE KEY`).
    EncryptedPkcs8Key,
    /// EC parameters (`EC PARAMETERS`), which `openssl ecparam -genkey` writes before the key.
    EcParameters,
    /// A certificate signing request.
    CertificateRequest,
    /// A public key.
    PublicKey,
    /// A certificate revocation list.
    Crl,
    /// Any other PEM label.
    Other(String),
}

impl Kind {
    fn from_label(label: &str) -> Self {
        match label {
            "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => Self::Certificate,
            "PRIVATE KEY" => Self::Pkcs8Key,
            "RSA PRIVATE KEY" => Self::Pkcs1Key,
            "EC PRIVATE KEY" => Self::Sec1Key,
            "ENCRYPTED PRIVATE KEY" => Self::EncryptedPkcs8Key,
            "EC PARAMETERS" => Self::EcParameters,
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Self::CertificateRequest,
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Self::PublicKey,
            "X509 CRL" => Self::Crl,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Whether this is a private key of any format.
    pub fn is_private_key(&self) -> bool {
        matches!(
            self,
            Self::Pkcs8Key | Self::Pkcs1Key | Self::Sec1Key | Self::EncryptedPkcs8Key
        )
    }

    /// A short human name.
    pub fn describe(&self) -> String {
        match self {
            Self::Certificate => "a certificate".into(),
            Self::Pkcs8Key => "a private key (PKCS#8)".into(),
            Self::Pkcs1Key => "an RSA private key (PKCS#1)".into(),
            Self::Sec1Key => "an EC private key (SEC1)".into(),
            Self::EncryptedPkcs8Key => "an encrypted private key (PKCS#8)".into(),
            Self::EcParameters => "EC parameters".into(),
            Self::CertificateRequest => "a certificate signing request (CSR)".into(),
            Self::PublicKey => "a public key".into(),
            Self::Crl => "a certificate revocation list".into(),
            Self::Other(label) => format!("a PEM block labelled {label:?}"),
        }
    }
}

/// One object found in a file.
#[derive(Clone)]
pub struct Item {
    /// What it is.
    pub kind: Kind,
    /// Its DER bytes (for a legacy-encrypted key, the ciphertext).
    pub der: Vec<u8>,
    /// PEM headers, e.g. `Proc-Type: 4,ENCRYPTED` and `DEK-Info` of legacy-encrypted keys.
    pub headers: Vec<(String, String)>,
}

impl Item {
    /// The value of a PEM header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a key in the legacy OpenSSL PEM encryption (`Proc-Type: 4,ENCRYPTED`).
    pub fn is_legacy_encrypted(&self) -> bool {
        self.header("Proc-Type")
            .is_some_and(|v| v.contains("ENCRYPTED"))
    }
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the bytes: they may be a private key.
        f.debug_struct("Item")
            .field("kind", &self.kind)
            .field("len", &self.der.len())
            .field("headers", &self.headers)
            .finish()
    }
}

/// What a file holds.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// PEM or DER.
    pub encoding: Encoding,
    /// The objects, in file order.
    pub items: Vec<Item>,
}

impl Decoded {
    /// The certificates' DER, in file order.
    pub fn certificates(&self) -> Vec<Vec<u8>> {
        self.items
            .iter()
            .filter(|i| i.kind == Kind::Certificate)
            .map(|i| i.der.clone())
            .collect()
    }
}

/// Why a file holds nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The file is empty.
    #[error("the file is empty")]
    Empty,
    /// PEM markers are there but the blocks are broken.
    #[error("broken PEM: {0}")]
    BadPem(String),
    /// Neither PEM nor a DER certificate or key.
    #[error("neither PEM nor a DER certificate or key")]
    NotPemOrDer,
}

/// Decodes a file's bytes.
///
/// # Errors
/// [`DecodeError`] when the file is empty, has broken PEM, or is neither PEM nor a DER
/// certificate or private key.
pub fn decode(data: &[u8]) -> Result<Decoded, DecodeError> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    if contains(data, b"-----BEGIN ") {
        let blocks = pem::parse_many(data).map_err(|e| DecodeError::BadPem(e.to_string()))?;
        if blocks.is_empty() {
            return Err(DecodeError::BadPem("no complete BEGIN/END block".into()));
        }
        let items = blocks
            .into_iter()
            .map(|b| Item {
                kind: Kind::from_label(b.tag()),
                headers: b
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                der: b.into_contents(),
            })
            .collect();
        return Ok(Decoded {
            encoding: Encoding::Pem,
            items,
        });
    }
    let kind = sniff_der(data).ok_or(DecodeError::NotPemOrDer)?;
    Ok(Decoded {
        encoding: Encoding::Der,
        items: vec![Item {
            kind,
            der: data.to_vec(),
            headers: Vec::new(),
        }],
    })
}

/// Which kind of DER object this is, if it is one we know.
fn sniff_der(data: &[u8]) -> Option<Kind> {
    if data.first() != Some(&0x30) {
        return None;
    }
    if let Ok((rest, _)) = x509_parser::parse_x509_certificate(data) {
        if rest.is_empty() {
            return Some(Kind::Certificate);
        }
    }
    use pkcs8::der::Decode;
    if pkcs8::PrivateKeyInfo::from_der(data).is_ok() {
        return Some(Kind::Pkcs8Key);
    }
    if pkcs8::EncryptedPrivateKeyInfo::from_der(data).is_ok() {
        return Some(Kind::EncryptedPkcs8Key);
    }
    if pkcs1::RsaPrivateKey::from_der(data).is_ok() {
        return Some(Kind::Pkcs1Key);
    }
    if sec1::EcPrivateKey::from_der(data).is_ok() {
        return Some(Kind::Sec1Key);
    }
    if <x509_parser::certification_request::X509CertificationRequest<'_> as x509_parser::prelude::FromDer<'_, x509_parser::error::X509Error>>::from_der(data).is_ok() {
        return Some(Kind::CertificateRequest);
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// PEM text of one certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty() {
        assert_eq!(decode(b"").unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode(b"hello world").unwrap_err(),
            DecodeError::NotPemOrDer
        );
        assert!(matches!(
            decode(b"-----BEGIN CERTIFICATE-----\nAAAA").unwrap_err(),
            DecodeError::BadPem(_)
        ));
    }
}
