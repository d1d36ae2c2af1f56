//! Error types.

use std::path::PathBuf;

/// Errors from making, reading and writing certificates and keys.
///
/// `Display` describes this level only (the file); the cause of [`Error::Io`] and
/// [`Error::Key`] is reached through [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file already exists and `force` was not given.
    #[error("{0} already exists (use --force to replace it)")]
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
    #[error("{path}: {message}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A parameter is not valid (a host name, a common name, a number of days).
    #[error("{0}")]
    Invalid(String),
    /// Building or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn content(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Content {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Self::Generate(e.to_string())
    }
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
