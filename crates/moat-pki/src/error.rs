//! Error types.
//!
//! Each message describes one level; the cause is reached through `source()` (the CLI prints
//! the chain with `{:#}`: `ca/ca.key: the passphrase does not decrypt the private key`).

use std::path::PathBuf;

use crate::decode::DecodeError;
use crate::inspect::CertParseError;

/// Errors from making, reading and writing certificates and keys.
///
/// `Display` describes this level only (the file); the cause of [`Error::Io`] and
/// [`Error::Key`] is reached through [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file already exists and `force` was not given.
    #[error("{} already exists (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    /// A private key could not be used.
    #[error("{path}")]
    Key {
        /// The file (or a description of where the key came from).
        path: String,
        /// The cause.
        #[source]
        source: KeyError,
    },
    /// A file's content is not what was expected.
    #[error("{}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ContentError,
    },
    /// A parameter is not valid (a host name, a common name, a validity).
    #[error(transparent)]
    Invalid(#[from] InvalidParameter),
    /// A CA cannot sign: its certificate and key do not fit, or it is no CA.
    #[error("{}", match dir {
        Some(d) => format!("the CA in {}", d.display()),
        None => "the CA".to_owned(),
    })]
    Ca {
        /// The CA directory, when it came from one.
        dir: Option<PathBuf>,
        /// What is wrong.
        #[source]
        source: CaError,
    },
    /// A certificate was not issued by the CA it is to be revoked by.
    #[error("{cert} was not issued by this CA: its issuer is {issuer}, the CA is {ca}")]
    NotIssuedBy {
        /// The certificate (file and subject).
        cert: String,
        /// Its issuer.
        issuer: String,
        /// The CA's subject.
        ca: String,
    },
    /// Building or signing a certificate failed.
    #[error("{step} failed")]
    Generate {
        /// What was being done ("signing", "RSA key generation", ...).
        step: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn content(path: impl Into<PathBuf>, source: ContentError) -> Self {
        Self::Content {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn generate(
        step: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Generate {
            step,
            source: source.into(),
        }
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::generate("certificate generation", e)
    }
}

/// What is wrong with a file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ContentError {
    /// Nothing usable could be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The file holds no certificate.
    #[error("no certificate in the file")]
    NoCertificate,
    /// The passphrase file is empty.
    #[error("the passphrase file is empty")]
    EmptyPassphrase,
    /// The certificate cannot be parsed.
    #[error("not an X.509 certificate: {0}")]
    NotCertificate(String),
    /// The revocation record (`revoked.toml`) is malformed.
    #[error("malformed revocation record: {0}")]
    Revocations(String),
}

/// A parameter that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidParameter {
    /// A server certificate needs at least one host.
    #[error("at least one --host is needed")]
    NoHost,
    /// A host is neither a DNS name nor an IP address.
    #[error("{0:?} is neither a DNS name nor an IP address")]
    Host(String),
    /// The common name is empty.
    #[error("the common name is empty")]
    EmptyCommonName,
    /// The common name is longer than X.509 allows (64 characters).
    #[error("the common name {0:?} is longer than 64 characters")]
    LongCommonName(String),
    /// The validity ends before it starts.
    #[error("the validity ends before it starts")]
    Validity,
    /// A serial number that is not hex.
    #[error("{0:?} is not a serial number (hex, e.g. 3a:0f:91 or 3a0f91)")]
    Serial(String),
    /// A revocation reason that is none of RFC 5280's.
    #[error(
        "unknown revocation reason {0:?} (one of unspecified, keyCompromise, cACompromise, \
         affiliationChanged, superseded, cessationOfOperation, certificateHold, \
         privilegeWithdrawn, aACompromise)"
    )]
    RevocationReason(String),
}

/// Why a CA cannot sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The CA certificate cannot be parsed.
    #[error(transparent)]
    Certificate(#[from] CertParseError),
    /// The key does not belong to the certificate.
    #[error("the CA key does not belong to the CA certificate {0}")]
    KeyMismatch(String),
    /// The certificate is not a CA certificate.
    #[error(
        "{0} is not a CA certificate (no basicConstraints CA:TRUE); it cannot sign certificates"
    )]
    NotCa(String),
}

/// Why a private key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No private key was found.
    #[error("no private key found")]
    NotAKey,
    /// The key is encrypted and no passphrase was given.
    #[error("the private key is encrypted ({0}) and no passphrase was given")]
    Encrypted(String),
    /// The passphrase does not decrypt the key.
    #[error("the passphrase does not decrypt the private key")]
    WrongPassphrase,
    /// The key is encrypted with a scheme this toolkit does not support.
    #[error("unsupported key encryption: {0}")]
    UnsupportedEncryption(String),
    /// The key's algorithm is not supported.
    #[error("unsupported key algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// The key is not well formed.
    #[error("malformed private key: {0}")]
    Malformed(String),
}
