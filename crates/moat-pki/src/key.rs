//! Private keys: every format `openssl` writes, decryption, and matching a certificate.
//!
//! Formats read: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`,
//! with or without the `EC PARAMETERS` block before it), encrypted PKCS#8 (`ENCRYPTED PRIVATE
//! KEY`, PBES2 with PBKDF2 and AES or 3DES, as OpenSSL 3 writes for `genrsa -aes256`/`-des3`),
//! and the legacy PEM encryption (`Proc-Type: 4,ENCRYPTED`, as OpenSSL 1.x or `-traditional`
//! writes) with AES-128/192/256-CBC, DES-EDE3-CBC or DES-CBC. Every key is held as PKCS#8.

use std::fmt;

use pkcs8::der::{asn1::AnyRef, Decode, Encode};
use pkcs8::ObjectIdentifier;
use zeroize::Zeroizing;

use crate::decode::{Item, Kind};
use crate::error::KeyError;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");
const OID_DSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10040.4.1");

/// PBKDF2 iterations for keys this toolkit encrypts.
const PBKDF2_ITERATIONS: u32 = 100_000;

/// A key's algorithm, as far as the rules care.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size.
        bits: usize,
    },
    /// ECDSA on a named curve.
    Ec {
        /// The curve: "P-256", "P-384", "P-521", or the curve's OID.
        curve: String,
    },
    /// Ed25519.
    Ed25519,
    /// Ed448.
    Ed448,
    /// DSA.
    Dsa,
    /// Anything else, by OID.
    Other {
        /// The algorithm's OID.
        oid: String,
    },
}

impl KeyAlgorithm {
    /// "RSA", "ECDSA", "Ed25519"...: the family, for comparing a key with its CA's.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "RSA",
            Self::Ec { .. } => "ECDSA",
            Self::Ed25519 => "Ed25519",
            Self::Ed448 => "Ed448",
            Self::Dsa => "DSA",
            Self::Other { .. } => "unknown",
        }
    }

    /// Whether rustls (with ring) can use a key of this kind.
    pub fn supported_by_rustls(&self) -> bool {
        match self {
            Self::Rsa { bits } => (2048..=8192).contains(bits),
            Self::Ec { curve } => curve == "P-256" || curve == "P-384",
            Self::Ed25519 => true,
            _ => false,
        }
    }

    pub(crate) fn from_spki_parts(oid: &str, curve_oid: Option<&str>, rsa_bits: usize) -> Self {
        match oid {
            "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => Self::Rsa { bits: rsa_bits },
            "1.2.840.10045.2.1" => Self::Ec {
                curve: curve_name(curve_oid.unwrap_or("?")),
            },
            "1.3.101.112" => Self::Ed25519,
            "1.3.101.113" => Self::Ed448,
            "1.2.840.10040.4.1" => Self::Dsa,
            other => Self::Other {
                oid: other.to_owned(),
            },
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
            Self::Ec { curve } => write!(f, "ECDSA {curve}"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Ed448 => f.write_str("Ed448"),
            Self::Dsa => f.write_str("DSA"),
            Self::Other { oid } => write!(f, "unknown ({oid})"),
        }
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.3.1.7" => "P-256".into(),
        "1.3.132.0.34" => "P-384".into(),
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        other => other.into(),
    }
}

/// How a key was stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyFormat {
    /// Unencrypted PKCS#8.
    Pkcs8,
    /// PKCS#1 (`RSA PRIVATE KEY`).
    Pkcs1,
    /// SEC1 (`EC PRIVATE KEY`).
    Sec1,
    /// Encrypted PKCS#8.
    EncryptedPkcs8,
    /// Legacy OpenSSL PEM encryption, with the cipher named in `DEK-Info`.
    LegacyEncrypted(String),
}

/// A private key, held as PKCS#8. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
    algorithm: KeyAlgorithm,
    /// The subjectPublicKey bits a certificate for this key carries, when known.
    public_key: Option<Vec<u8>>,
    format: KeyFormat,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("format", &self.format)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl PrivateKey {
    /// Parses an unencrypted PKCS#8 document.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] when it is not PKCS#8.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        Self::from_pkcs8(der.to_vec(), KeyFormat::Pkcs8)
    }

    fn from_pkcs8(der: Vec<u8>, format: KeyFormat) -> Result<Self, KeyError> {
        let der = Zeroizing::new(der);
        let info = pkcs8::PrivateKeyInfo::from_der(&der).map_err(|e| malformed("PKCS#8", e))?;
        let oid = info.algorithm.oid;
        let (algorithm, public_key) = if oid == OID_RSA {
            let rsa = pkcs1::RsaPrivateKey::from_der(info.private_key)
                .map_err(|e| malformed("RSA", e))?;
            let public = pkcs1::RsaPublicKey {
                modulus: rsa.modulus,
                public_exponent: rsa.public_exponent,
            }
            .to_der()
            .map_err(|e| malformed("RSA", e))?;
            (
                KeyAlgorithm::Rsa {
                    bits: bit_len(rsa.modulus.as_bytes()),
                },
                Some(public),
            )
        } else if oid == OID_EC {
            let curve = info.algorithm.parameters_oid().map_err(|_| {
                KeyError::UnsupportedAlgorithm("EC key without a named curve".into())
            })?;
            let ec =
                sec1::EcPrivateKey::from_der(info.private_key).map_err(|e| malformed("EC", e))?;
            let algorithm = KeyAlgorithm::Ec {
                curve: curve_name(&curve.to_string()),
            };
            (algorithm, ec.public_key.map(<[u8]>::to_vec))
        } else if oid == OID_ED25519 {
            let public = match info.public_key {
                Some(p) => p.to_vec(),
                None => {
                    let seed = pkcs8::der::asn1::OctetStringRef::from_der(info.private_key)
                        .map_err(|e| malformed("Ed25519", e))?;
                    ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.as_bytes())
                        .map_err(|e| KeyError::Malformed(format!("Ed25519: {e}")))
                        .map(|kp| ring::signature::KeyPair::public_key(&kp).as_ref().to_vec())?
                }
            };
            (KeyAlgorithm::Ed25519, Some(public))
        } else if oid == OID_ED448 {
            (KeyAlgorithm::Ed448, info.public_key.map(<[u8]>::to_vec))
        } else if oid == OID_DSA {
            (KeyAlgorithm::Dsa, None)
        } else {
            (
                KeyAlgorithm::Other {
                    oid: oid.to_string(),
                },
                None,
            )
        };
        Ok(Self {
            pkcs8: der,
            algorithm,
            public_key,
            format,
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> &KeyAlgorithm {
        &self.algorithm
    }

    /// How the key was stored when it was read.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// The subjectPublicKey bits of the matching certificate, when they can be computed.
    pub fn public_key_bits(&self) -> Option<&[u8]> {
        self.public_key.as_deref()
    }

    /// Whether this key belongs to the certificate (same algorithm and public key).
    /// `None` when that cannot be told (an unsupported key type).
    pub fn matches_certificate(&self, cert_der: &[u8]) -> Option<bool> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
        let public = self.public_key.as_deref()?;
        Some(cert.public_key().subject_public_key.data.as_ref() == public)
    }

    /// The PKCS#8 DER. Secret: handle with care.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key as unencrypted PKCS#8 PEM (`PRIVATE KEY`).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem_text("PRIVATE KEY", &self.pkcs8))
    }

    /// The key as encrypted PKCS#8 PEM (`ENCRYPTED PRIVATE KEY`): PBES2 with
    /// PBKDF2-HMAC-SHA256 and AES-256-CBC, which OpenSSL and every TLS stack read.
    ///
    /// # Errors
    /// [`KeyError::Malformed`] if the encryption fails (it does not for a valid key).
    pub fn to_encrypted_pkcs8_pem(&self, passphrase: &[u8]) -> Result<String, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let mut salt = [0u8; 16];
        let mut iv = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut salt)
            .and_then(|()| ring::rand::SecureRandom::fill(&rng, &mut iv))
            .map_err(|_| KeyError::Malformed("no randomness".into()))?;
        let params =
            pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
                .map_err(|e| KeyError::Malformed(e.to_string()))?;
        let info =
            pkcs8::PrivateKeyInfo::from_der(&self.pkcs8).map_err(|e| malformed("PKCS#8", e))?;
        let doc = info
            .encrypt_with_params(params, passphrase)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        Ok(pem_text("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
    }

    /// An rcgen key pair for signing with this key.
    pub(crate) fn to_rcgen(&self) -> Result<rcgen::KeyPair, KeyError> {
        let alg = match &self.algorithm {
            KeyAlgorithm::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::Ec { curve } if curve == "P-256" => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ec { curve } if curve == "P-384" => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            other => return Err(KeyError::UnsupportedAlgorithm(other.to_string())),
        };
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.to_vec());
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, alg)
            .map_err(|e| KeyError::UnsupportedAlgorithm(format!("{}: {e}", self.algorithm)))
    }
}

fn pem_text(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn malformed(what: &str, e: impl fmt::Display) -> KeyError {
    KeyError::Malformed(format!("{what}: {e}"))
}

fn bit_len(be: &[u8]) -> usize {
    let be = match be.iter().position(|&b| b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    be.len() * 8 - be[0].leading_zeros() as usize
}

/// Loads the private key from a file's bytes (PEM or DER, any format above).
///
/// # Errors
/// [`KeyError::NotAKey`] when there is no key, [`KeyError::Encrypted`] when the key is
/// encrypted and `passphrase` is `None`, [`KeyError::WrongPassphrase`], or a format error.
pub fn load(data: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey, KeyError> {
    let decoded = crate::decode::decode(data).map_err(|_| KeyError::NotAKey)?;
    let item = decoded
        .items
        .iter()
        .find(|i| i.kind.is_private_key())
        .ok_or(KeyError::NotAKey)?;
    from_item(item, passphrase)
}

/// Loads a private key from one decoded object.
///
/// # Errors
/// As [`load`].
pub fn from_item(item: &Item, passphrase: Option<&[u8]>) -> Result<PrivateKey, KeyError> {
    if item.is_legacy_encrypted() {
        let dek = item
            .header("DEK-Info")
            .ok_or_else(|| malformed("legacy PEM", "no DEK-Info"))?;
        let cipher = dek.split(',').next().unwrap_or_default().trim().to_owned();
        let Some(pass) = passphrase else {
            return Err(KeyError::Encrypted(format!(
                "legacy PEM encryption, {cipher}"
            )));
        };
        let plain = legacy::decrypt(dek, pass, &item.der)?;
        let format = KeyFormat::LegacyEncrypted(cipher);
        // A wrong passphrase can still give valid padding; the structure then does not parse.
        return match item.kind {
            Kind::Pkcs1Key => pkcs1_to_pkcs8(&plain)
                .map_err(|_| KeyError::WrongPassphrase)
                .and_then(|p| PrivateKey::from_pkcs8(p, format)),
            Kind::Sec1Key => sec1_to_pkcs8(&plain)
                .map_err(|_| KeyError::WrongPassphrase)
                .and_then(|p| PrivateKey::from_pkcs8(p, format)),
            Kind::Pkcs8Key => PrivateKey::from_pkcs8(plain.to_vec(), format)
                .map_err(|_| KeyError::WrongPassphrase),
            _ => Err(KeyError::NotAKey),
        };
    }
    match item.kind {
        Kind::Pkcs8Key => PrivateKey::from_pkcs8(item.der.clone(), KeyFormat::Pkcs8),
        Kind::Pkcs1Key => PrivateKey::from_pkcs8(pkcs1_to_pkcs8(&item.der)?, KeyFormat::Pkcs1),
        Kind::Sec1Key => PrivateKey::from_pkcs8(sec1_to_pkcs8(&item.der)?, KeyFormat::Sec1),
        Kind::EncryptedPkcs8Key => {
            let enc = pkcs8::EncryptedPrivateKeyInfo::from_der(&item.der)
                .map_err(|e| malformed("encrypted PKCS#8", e))?;
            let Some(pass) = passphrase else {
                return Err(KeyError::Encrypted(format!(
                    "PKCS#8, {}",
                    describe_pkcs8_encryption(&enc)
                )));
            };
            let doc = enc.decrypt(pass).map_err(|e| match e {
                // pkcs5 0.7 reports a bad padding on decryption as EncryptFailed.
                pkcs8::Error::EncryptedPrivateKey(
                    pkcs8::pkcs5::Error::DecryptFailed | pkcs8::pkcs5::Error::EncryptFailed,
                ) => KeyError::WrongPassphrase,
                // A wrong key passes the padding check about once in 256 tries; the garbage it
                // decrypts to is then not DER. (The scheme's parameters were parsed above.)
                pkcs8::Error::Asn1(_) => KeyError::WrongPassphrase,
                other => KeyError::UnsupportedEncryption(other.to_string()),
            })?;
            PrivateKey::from_pkcs8(doc.as_bytes().to_vec(), KeyFormat::EncryptedPkcs8)
                .map_err(|_| KeyError::WrongPassphrase)
        }
        _ => Err(KeyError::NotAKey),
    }
}

fn describe_pkcs8_encryption(enc: &pkcs8::EncryptedPrivateKeyInfo<'_>) -> String {
    match enc.encryption_algorithm.pbes2() {
        Some(p) => {
            let cipher = match p.encryption {
                pkcs8::pkcs5::pbes2::EncryptionScheme::Aes128Cbc { .. } => "AES-128-CBC",
                pkcs8::pkcs5::pbes2::EncryptionScheme::Aes192Cbc { .. } => "AES-192-CBC",
                pkcs8::pkcs5::pbes2::EncryptionScheme::Aes256Cbc { .. } => "AES-256-CBC",
                pkcs8::pkcs5::pbes2::EncryptionScheme::DesEde3Cbc { .. } => "DES-EDE3-CBC",
                _ => "PBES2",
            };
            cipher.to_owned()
        }
        None => "PBES1".to_owned(),
    }
}

fn pkcs1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, KeyError> {
    pkcs1::RsaPrivateKey::from_der(der).map_err(|e| malformed("RSA PRIVATE KEY", e))?;
    let info = pkcs8::PrivateKeyInfo::new(
        pkcs8::AlgorithmIdentifierRef {
            oid: OID_RSA,
            parameters: Some(AnyRef::NULL),
        },
        der,
    );
    info.to_der().map_err(|e| malformed("RSA PRIVATE KEY", e))
}

fn sec1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, KeyError> {
    let ec = sec1::EcPrivateKey::from_der(der).map_err(|e| malformed("EC PRIVATE KEY", e))?;
    let Some(sec1::EcParameters::NamedCurve(curve)) = ec.parameters else {
        return Err(KeyError::UnsupportedAlgorithm(
            "EC key without a named curve".into(),
        ));
    };
    if ec.public_key.is_none() {
        return Err(KeyError::UnsupportedAlgorithm(
            "EC key without its public key".into(),
        ));
    }
    let info = pkcs8::PrivateKeyInfo::new(
        pkcs8::AlgorithmIdentifierRef {
            oid: OID_EC,
            parameters: Some(AnyRef::from(&curve)),
        },
        der,
    );
    info.to_der().map_err(|e| malformed("EC PRIVATE KEY", e))
}

/// Legacy OpenSSL PEM encryption: `DEK-Info: CIPHER,IVHEX`, key from EVP_BytesToKey(MD5).
mod legacy {
    use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
    use md5::{Digest, Md5};
    use zeroize::Zeroizing;

    use crate::error::KeyError;

    pub(super) fn decrypt(
        dek_info: &str,
        pass: &[u8],
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (cipher, iv_hex) = dek_info
            .split_once(',')
            .ok_or_else(|| KeyError::Malformed(format!("bad DEK-Info {dek_info:?}")))?;
        let iv = hex(iv_hex.trim())
            .ok_or_else(|| KeyError::Malformed(format!("bad IV in DEK-Info {dek_info:?}")))?;
        let cipher = cipher.trim().to_ascii_uppercase();
        let key_len = match cipher.as_str() {
            "AES-128-CBC" => 16,
            "AES-192-CBC" => 24,
            "AES-256-CBC" => 32,
            "DES-EDE3-CBC" => 24,
            "DES-CBC" => 8,
            other => return Err(KeyError::UnsupportedEncryption(other.to_owned())),
        };
        if iv.len() < 8 {
            return Err(KeyError::Malformed("IV too short".into()));
        }
        let key = bytes_to_key(pass, &iv[..8], key_len);
        let bad = |_| KeyError::WrongPassphrase;
        let plain = match cipher.as_str() {
            "AES-128-CBC" => cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
                .map_err(|_| KeyError::Malformed("bad IV".into()))?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(bad)?,
            "AES-192-CBC" => cbc::Decryptor::<aes::Aes192>::new_from_slices(&key, &iv)
                .map_err(|_| KeyError::Malformed("bad IV".into()))?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(bad)?,
            "AES-256-CBC" => cbc::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
                .map_err(|_| KeyError::Malformed("bad IV".into()))?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(bad)?,
            "DES-EDE3-CBC" => cbc::Decryptor::<des::TdesEde3>::new_from_slices(&key, &iv)
                .map_err(|_| KeyError::Malformed("bad IV".into()))?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(bad)?,
            _ => cbc::Decryptor::<des::Des>::new_from_slices(&key, &iv)
                .map_err(|_| KeyError::Malformed("bad IV".into()))?
                .decrypt_padded_vec_mut::<Pkcs7>(data)
                .map_err(bad)?,
        };
        Ok(Zeroizing::new(plain))
    }

    /// OpenSSL's EVP_BytesToKey with MD5 and one iteration.
    fn bytes_to_key(pass: &[u8], salt: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(len + 16));
        let mut prev: Option<[u8; 16]> = None;
        while out.len() < len {
            let mut h = Md5::new();
            if let Some(p) = prev {
                h.update(p);
            }
            h.update(pass);
            h.update(salt);
            let d: [u8; 16] = h.finalize().into();
            out.extend_from_slice(&d);
            prev = Some(d);
        }
        out.truncate(len);
        out
    }

    fn hex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_len_counts_leading_zero_bits() {
        assert_eq!(bit_len(&[0x00, 0x80, 0]), 16);
        assert_eq!(bit_len(&[0x01, 0]), 9);
    }

    #[test]
    fn debug_is_redacted() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = PrivateKey::from_pkcs8_der(kp.serialized_der()).unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("<redacted>"));
        assert_eq!(
            key.algorithm(),
            &KeyAlgorithm::Ec {
                curve: "P-256".into()
            }
        );
    }
}
